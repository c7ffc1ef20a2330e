"""What passes between the host and ``device.sh``, typed and in one place: the exit codes (one table, mirrored in
``device.sh``'s header and ``device_health.py``; ``tests/test_device_protocol.py`` checks that they agree), the
requirements a bundle brings to ``device.sh check``, and the parsers of what the device prints back.

Pure: no SSH here (see :mod:`edgedl.stages.device.device` for the commands themselves).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import IntEnum

from edgedl.errors import EdgeDLError


class DeviceExit(IntEnum):
    """Exit codes of ``device.sh`` (and of ``device_health.py``, which ``device.sh wait-ready`` runs)."""

    OK = 0
    USAGE = 2  # an unknown command or argument
    NOT_READY = 10  # wait-ready: /v2/health/ready did not answer within the timeout (or nothing was started)
    CRASHING = 11  # wait-ready: the server keeps crashing on start
    SMOKE_FAILED = 12  # wait-ready: the smoke inference failed or differs from the reference outputs
    MODEL_MISSING = 13  # wait-ready: the server runs without a model of the release
    DIR = 20  # the deploy directory cannot be created or entered
    MISSING_COPY = 21  # install / ensure-env: the copy to install is not there
    VERIFY = 22  # install: the copy does not match its manifest
    WRITE = 23  # install: a file could not be written or moved
    VENV = 24  # install / ensure-env: creating the venv failed
    PIP = 25  # install / ensure-env: installing the wheelhouse failed
    NOT_INSTALLED = 26  # activate: the release (or its trusted key) is not installed
    NOTHING_DEPLOYED = 27  # logs: no release is current
    NO_LOG = 28  # logs: the release has no log
    UNIT_TAKEN = 29  # activate: the systemd unit already runs another directory
    NO_SYSTEMD = 30  # activate / check: systemd was asked for and cannot be used
    START = 31  # activate: starting the service failed
    LOCKED = 32  # lock: another deploy holds the directory
    VALUE = 33  # a value that is not what it must be (host, port, key, release id)
    UNSIGNED = 34  # install: the signature does not verify with the key the directory trusts
    ARCH = 35  # check: the device's architecture is not the bundle's
    NO_PYTHON = 36  # check: the device's Python was not found
    PYTHON = 37  # check: the device's Python is not the bundle's
    NO_VENV = 38  # check: the device's Python cannot create venvs
    DISK = 39  # check: not enough free disk for the release
    MEMORY = 40  # check: not enough memory available for the server

    @property
    def refused_before_change(self) -> bool:
        """activate refused before it stopped or switched anything: nothing to restore."""
        return self in (DeviceExit.UNIT_TAKEN, DeviceExit.NO_SYSTEMD, DeviceExit.VALUE)

    @classmethod
    def of(cls, code: int) -> "DeviceExit | int":
        try:
            return cls(code)
        except ValueError:
            return code


def key_values(text: str) -> list[tuple[str, str]]:
    """The ``KEY=VALUE`` lines a device command prints (in order; a key may repeat), other lines skipped."""
    out = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and " " not in key:
            out.append((key, value))
    return out


def last_json_line(text: str) -> dict | None:
    """The last line of ``text`` that is a JSON object (a program's report after any other output), else None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


@dataclass(frozen=True)
class Requirements:
    """What a bundle needs of a device; ``device.sh check`` compares them with the device (one place, for
    ``edgedl deploy`` and the Ansible role alike)."""

    profile: str
    arch: str
    python: str
    pythons: tuple[str, ...]  # the profile's Python versions (for the advice when the device's differs)
    need_disk_mb: int
    min_memory_mb: int
    memory_mb: int  # the profile's memory budget: a device with less total memory gets a warning
    release: str  # an installed release needs no disk

    def args(self) -> list[str]:
        """``device.sh check``'s KEY=VALUE arguments."""
        return [f"{k}={v}" for k, v in (("profile", self.profile), ("arch", self.arch), ("python", self.python),
                                        ("need_disk_mb", self.need_disk_mb), ("min_memory_mb", self.min_memory_mb),
                                        ("memory_mb", self.memory_mb), ("release", self.release))]

    def to_json(self) -> dict:
        return {**asdict(self), "pythons": list(self.pythons)}


def _kb_to_mb(value) -> float | None:
    return float(value) / 1024 if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class DeviceFacts:
    """The device, as ``device.sh facts`` (and ``check``) prints it."""

    arch: str
    python: str | None
    venv: bool
    disk_free_mb: float
    mem_available_mb: float | None
    mem_total_mb: float | None
    systemd: bool
    systemd_usable: bool
    systemd_why: str  # how (root / sudo) or why not
    service: str  # how the directory's server runs now: systemd | process
    unit: str
    rsync: bool
    current: str | None
    running: bool
    directory: str
    installed: tuple[str, ...] = ()
    service_host: str | None = None
    service_port: str | None = None

    @classmethod
    def parse(cls, text: str) -> "DeviceFacts":
        kv = last_json_line(text)
        if kv is None:
            raise EdgeDLError(f"the device answered the probe with something that is not JSON: {text.strip()[-200:]!r}; "
                              "is its login shell printing a banner? (check ~/.bashrc)")
        return cls(arch=kv.get("arch", "?"), python=kv.get("python") or None, venv=kv.get("venv") == "yes",
                   disk_free_mb=_kb_to_mb(kv.get("disk_free_kb")) or 0.0,
                   mem_available_mb=_kb_to_mb(kv.get("mem_available_kb")), mem_total_mb=_kb_to_mb(kv.get("mem_total_kb")),
                   systemd=kv.get("systemd") == "yes", systemd_usable=kv.get("systemd_usable") == "yes",
                   systemd_why=kv.get("systemd_why", ""), service=kv.get("service", "process"), unit=kv.get("unit", ""),
                   rsync=kv.get("rsync") == "yes", current=kv.get("current") or None, running=bool(kv.get("running")),
                   directory=kv.get("dir", ""), installed=tuple(kv.get("installed") or ()),
                   service_host=kv.get("service_host") or None, service_port=kv.get("service_port") or None)

    def to_json(self) -> dict:
        return {**asdict(self), "installed": list(self.installed)}


@dataclass(frozen=True)
class Activation:
    """What ``device.sh activate`` reports: how the new release runs."""

    service: str = "process"  # systemd | process
    unit: str | None = None
    bind: str = ""
    auth: str = "none"  # key | none
    api_key_generated: str | None = None  # a key the device generated: shown once

    @classmethod
    def parse(cls, text: str) -> "Activation":
        kv = dict(key_values(text))
        return cls(service=kv.get("service", "process"), unit=kv.get("unit") or None, bind=kv.get("bind", ""),
                   auth=kv.get("auth", "none"), api_key_generated=kv.get("api_key_generated") or None)


@dataclass(frozen=True)
class Health:
    """``device.sh wait-ready``'s verdict (device_health.py's JSON line and exit code)."""

    code: DeviceExit | int
    error: str | None = None
    max_abs_diff: float | None = None
    models: tuple[str, ...] = ()
    release_models: dict[str, str | None] = field(default_factory=dict)  # the release's models -> sha256

    @property
    def ready(self) -> bool:
        return self.code == DeviceExit.OK

    @classmethod
    def parse(cls, code: int, stdout: str, stderr: str = "") -> "Health":
        report = last_json_line(stdout) or {}
        error = report.get("error")
        if error is None and code != 0:
            error = ((stderr.strip() or stdout.strip()).splitlines() or ["no output"])[-1]
        return cls(code=DeviceExit.of(code), error=error, max_abs_diff=report.get("max_abs_diff"),
                   models=tuple(report.get("models") or ()),
                   release_models=dict(report.get("release_models") or {}))

    @property
    def reason(self) -> str:
        """The error up to the log tail device_health.py appends."""
        return (self.error or "").split("; its log ends:")[0]


def _seconds(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Release:
    id: str
    state: str  # installed | failed | incomplete
    size_mb: float | None
    current: bool = False


@dataclass(frozen=True)
class HistoryEvent:
    time: str
    release: str
    event: str  # installed | activated | failed | rolled-back-to | stopped

    def __str__(self) -> str:
        return f"{self.time} {self.release} {self.event}"


@dataclass(frozen=True)
class DeviceStatus:
    """A deploy directory's releases and service, as ``device.sh status`` prints them."""

    current: str | None = None
    running: bool = False
    pid: int | None = None
    manager: str = "process"  # systemd | process
    unit: str | None = None
    enabled: str | None = None
    service: dict[str, str] = field(default_factory=dict)  # service.env (the API key as "(set)" unless shown)
    releases: tuple[Release, ...] = ()
    staging: tuple[str, ...] = ()
    history: tuple[HistoryEvent, ...] = ()
    directory: str | None = None  # the deploy directory's full path there
    arch: str | None = None
    uptime_s: float | None = None  # how long the server has run
    device_uptime_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> "DeviceStatus":
        pairs = key_values(text)
        kv = dict(pairs)
        current = kv.get("current") or None
        releases, history = [], []
        for key, value in pairs:
            if key == "release":
                rid, state, kb = (value.split() + ["", "", ""])[:3]
                releases.append(Release(rid, state, round(int(kb) / 1024, 1) if kb.isdigit() else None, rid == current))
            elif key == "history":
                words = value.split()
                if len(words) >= 3:
                    history.append(HistoryEvent(words[0], words[1], words[-1]))
        return cls(current=current, running=kv.get("running") == "yes",
                   pid=int(kv["pid"]) if kv.get("pid", "").isdigit() else None, manager=kv.get("service", "process"),
                   unit=kv.get("unit") or None, enabled=kv.get("enabled") or None,
                   service={k[len("service."):]: v for k, v in pairs if k.startswith("service.")},
                   releases=tuple(releases), staging=tuple(v for k, v in pairs if k == "staging"),
                   history=tuple(history), directory=kv.get("dir") or None, arch=kv.get("arch") or None,
                   uptime_s=_seconds(kv.get("uptime_s")), device_uptime_s=_seconds(kv.get("device_uptime_s")))

    def installed(self) -> list[str]:
        return [r.id for r in self.releases if r.state == "installed"]

    def last_activated(self, exclude: str | None) -> str | None:
        """The most recently activated (or rolled-back-to) installed release other than ``exclude``."""
        installed = self.installed()
        for event in reversed(self.history):
            if event.event in ("activated", "rolled-back-to") and event.release != exclude and event.release in installed:
                return event.release
        return None

    def to_json(self) -> dict:
        return {"current": self.current, "running": self.running, "pid": self.pid, "manager": self.manager,
                "unit": self.unit, "enabled": self.enabled, "service": dict(self.service),
                "releases": [asdict(r) for r in self.releases], "staging": list(self.staging),
                "history": [str(e) for e in self.history]}
