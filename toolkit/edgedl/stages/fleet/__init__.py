"""``edgedl fleet``: roll bundles out to many devices with Ansible, and read the fleet's state.

edgedl prepares what the playbook needs - verified bundles, one tarball and one set of reference outputs per
device profile, the host -> bundle assignment from the inventory - runs ``deploy/ansible/rollout.yml`` (rolling
batches of ``--serial`` devices, each: the same steps as ``edgedl deploy``, then ``/v2/health/ready`` and a smoke
inference compared with the reference; rollback of a device that fails after its switch; the rollout stops before
the next batch once more than ``--max-fail`` devices failed) and turns the per-device JSON reports into one table.
"""

from __future__ import annotations

import datetime as _dt
import json
import secrets
import re
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgedl.errors import EdgeDLError
from edgedl.stages.fleet.ansible import playbook_dir, recap, run_playbook, unreachable_messages
from edgedl.stages.fleet.inventory import assign, read_inventory

FAILED_OUTCOMES = ("failed", "rolled-back", "unreachable")
_SERIAL = re.compile(r"^[1-9][0-9]*%?$")


@dataclass
class FleetConfig:
    bundles: list[Path]
    inventory: Path
    serial: str = "1"  # devices per batch: N or N%
    max_fail: int = 0  # failed devices tolerated; one more stops the rollout before the next batch
    check: bool = False  # ansible --check: report what would change, change nothing
    limit: list[str] = field(default_factory=list)  # hosts or groups
    playbook_dir: Path | None = None  # a user's adapted copy of deploy/ansible
    ready_timeout: float = 120.0
    # None: the role's default or the inventory's per-host value (extra-vars would override the inventory)
    keep: int | None = None  # installed releases kept per device
    service: str | None = None  # auto | systemd | process
    no_auth: bool = False  # servers without an API key even beyond loopback (default: keep or generate one)
    forks: int = 10
    run_dir: Path | None = None  # logs, vars and reports of this run; default under the edgedl cache
    progress: bool = True

    def __post_init__(self) -> None:
        self.serial = str(self.serial).strip()
        if not _SERIAL.match(self.serial) or (self.serial.endswith("%") and int(self.serial[:-1]) > 100):
            raise EdgeDLError(f"--serial {self.serial!r} must be a positive count (e.g. 2) or a percentage (e.g. 25%)")
        if self.max_fail < 0:
            raise EdgeDLError(f"--max-fail must be >= 0, got {self.max_fail}")
        if self.keep is not None and self.keep < 1:
            raise EdgeDLError(f"--keep must be >= 1 (the current release is always kept), got {self.keep}")
        if self.service not in (None, "auto", "systemd", "process"):
            raise EdgeDLError(f"--service {self.service!r}: choose auto, systemd or process")
        if not self.bundles:
            raise EdgeDLError("give at least one BUNDLE directory (made by `edgedl package`)")


def _run_dir(explicit: Path | None, kind: str) -> Path:
    if explicit:
        Path(explicit).mkdir(parents=True, exist_ok=True)
        return Path(explicit)
    from edgedl.stages.resources import cache_root

    base = cache_root() / "fleet-runs"
    base.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(tempfile.mkdtemp(prefix=f"{stamp}-{kind}-", dir=base))


@dataclass(frozen=True)
class PreparedBundle:
    """One verified bundle as the playbook gets it (``edgedl_bundles[PROFILE]``): its tarball, reference outputs,
    release id and what it needs of a device (``requirements``: device.sh check's arguments)."""

    name: str
    path: str
    profile: str
    arch: str
    python: str
    release: str
    tarball: str
    reference: str
    reference_source: str
    reference_skipped: tuple[str, ...]
    host: str
    port: int
    need_disk_mb: int
    requirements: tuple[str, ...]
    models: dict[str, str]  # name -> sha256

    def to_json(self) -> dict:
        return {**asdict(self), "reference_skipped": list(self.reference_skipped),
                "requirements": list(self.requirements)}


def prepare_bundle(bundle: Path, work: Path) -> PreparedBundle:
    """Verify a bundle (a directory or its .tar.gz) and produce what the playbook needs for its profile."""
    from edgedl.stages import reference
    from edgedl.stages.bundle import Bundle

    with Bundle.open(bundle) as opened:
        manifest, release = opened.manifest, opened.release  # the same bundle is the same release: re-runs change nothing
        profile = manifest.profile
        tarball = work / f"{profile.name}-{release}.tar.gz"
        if not tarball.is_file():
            tmp = tarball.with_suffix(".partial")
            with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
                for child in sorted(opened.path.iterdir()):
                    tar.add(child, arcname=child.name)
            tmp.rename(tarball)
        ref = reference.for_bundle(opened)
        ref_path = work / f"reference-{profile.name}-{release}.json"
        ref_path.write_text(json.dumps(ref.to_json()))
        needs = opened.requirements()
        return PreparedBundle(name=opened.name, path=str(opened.path.resolve()), profile=profile.name, arch=profile.arch,
                              python=manifest.python, release=release, tarball=str(tarball), reference=str(ref_path),
                              reference_source=ref.source, reference_skipped=ref.skipped, host=manifest.server.host,
                              port=manifest.server.port, need_disk_mb=needs.need_disk_mb,
                              requirements=tuple(needs.args()), models={m.name: m.sha256 for m in manifest.models})


def _typed(cls, data: dict):
    """A dataclass from a report's JSON object: its known keys (Ansible and older roles may add others)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class HostOutcome:
    """One device's row of a rollout: the role's report (roles/edgedl_release), or why there is none."""

    host: str
    outcome: str  # updated | unchanged | would-update | would-restart | failed | rolled-back | unreachable |
    # not-started | no-bundle
    profile: str | None = None
    release: str | None = None
    previous: str | None = None
    failed: bool = False
    error: str | None = None
    failed_step: str | None = None
    smoke: dict = field(default_factory=dict)  # the health gate's report: max_abs_diff, models
    pruned: list[str] = field(default_factory=list)
    rollback_ready: bool | None = None
    warnings: list[str] = field(default_factory=list)
    device: dict = field(default_factory=dict)  # device.sh check's facts
    check_mode: bool = False
    changed: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FleetResult:
    check: bool
    serial: str
    max_fail: int
    stopped: bool
    run_dir: str
    log: str
    ansible_rc: int
    bundles: dict[str, PreparedBundle]  # by profile
    hosts: list[HostOutcome]

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.hosts:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        return counts

    @property
    def failed(self) -> list[str]:
        return [r.host for r in self.hosts if r.outcome in FAILED_OUTCOMES]

    def to_json(self) -> dict:
        return {"check": self.check, "serial": self.serial, "max_fail": self.max_fail, "stopped": self.stopped,
                "run_dir": self.run_dir, "log": self.log, "ansible_rc": self.ansible_rc,
                "bundles": {p: {k: v for k, v in b.to_json().items() if k != "tarball"} for p, b in self.bundles.items()},
                "hosts": [r.to_json() for r in self.hosts], "counts": self.counts, "failed": self.failed}


def _progress_runner(pdir, playbook, inventory, extra, run_dir, total, label, enabled, **kw):
    from edgedl.console import progress

    reports = Path(extra["edgedl_report_dir"])
    with progress(label, total=total, enabled=enabled) as advance:
        seen = [0]

        def on_line(line: str) -> None:
            done = len([p for p in reports.glob("*.json") if not p.name.startswith("_")])
            info = line[len("TASK ["):line.find("]")] if line.startswith("TASK [") else None
            if done > seen[0] or info:
                advance(max(done - seen[0], 0), **({"info": info[:40]} if info else {}))
                seen[0] = max(done, seen[0])

        return run_playbook(pdir, playbook, inventory, extra, run_dir, on_line=on_line, **kw)


def deploy(config: FleetConfig) -> FleetResult:
    from edgedl.stages.device import DeviceExit

    pdir = playbook_dir(config.playbook_dir)
    inventory = read_inventory(config.inventory, config.playbook_dir)
    run_dir = _run_dir(config.run_dir, "check" if config.check else "deploy")
    prepared: dict[str, PreparedBundle] = {}
    for b in config.bundles:
        info = prepare_bundle(Path(b), run_dir)
        if info.profile in prepared:
            raise EdgeDLError(f"two bundles are for profile {info.profile} ({prepared[info.profile].name} and "
                              f"{info.name}); give one bundle per device profile")
        prepared[info.profile] = info
    targets, skipped = assign(inventory, list(prepared), config.limit)
    if not targets:
        raise EdgeDLError(f"no host of {config.inventory} belongs to a bundle's profile ({', '.join(prepared)}); name "
                          "inventory groups after device profiles or set edgedl_profile per host")
    reports = run_dir / "reports"
    reports.mkdir(exist_ok=True)
    hosts = [h for h in inventory.hosts if h in targets]
    extra = {"edgedl_hosts": hosts, "edgedl_serial": config.serial, "edgedl_max_fail": config.max_fail,
             "edgedl_bundles": {p: b.to_json() for p, b in prepared.items()}, "edgedl_targets": targets,
             "edgedl_report_dir": str(reports), "edgedl_ready_timeout": config.ready_timeout,
             "edgedl_run_id": f"{run_dir.name}-{secrets.token_hex(4)}",
             # activate's refusals that changed nothing: no rollback after them (device.sh's exit-code table)
             "edgedl_refused_codes": [int(e) for e in DeviceExit if e.refused_before_change],
             **({"edgedl_keep": config.keep} if config.keep is not None else {}),
             **({"edgedl_service": config.service} if config.service is not None else {}),
             **({"edgedl_auth": "none"} if config.no_auth else {})}
    label = "fleet check" if config.check else "fleet rollout"
    proc = _progress_runner(pdir, "rollout.yml", config.inventory, extra, run_dir, len(hosts), label, config.progress,
                            forks=config.forks, check=config.check)
    counters = recap(proc.stdout)
    unreachable = unreachable_messages(proc.stdout)
    stopped = json.loads((reports / "_stopped.json").read_text()) if (reports / "_stopped.json").is_file() else None
    rows = []
    for host in hosts:
        path = reports / f"{host}.json"
        release = prepared[targets[host]].release
        if path.is_file():
            row = _typed(HostOutcome, json.loads(path.read_text()))
        elif host in unreachable or counters.get(host, {}).get("unreachable"):
            row = HostOutcome(host=host, profile=targets[host], outcome="unreachable", failed=True,
                              error=unreachable.get(host, "unreachable over SSH"), release=release)
        elif stopped is not None or host not in counters:
            row = HostOutcome(host=host, profile=targets[host], outcome="not-started",
                              error="rollout stopped before this device's batch" if stopped else "not reached",
                              release=release)
        else:
            row = HostOutcome(host=host, profile=targets[host], outcome="failed", failed=True,
                              error="no report (see the ansible log)", release=release)
        rows.append(replace(row, changed=counters.get(host, {}).get("changed")))
    rows += [HostOutcome(host=h, outcome="no-bundle", error=why) for h, why in skipped.items()]
    if not any((reports / f"{h}.json").is_file() for h in hosts) and proc.returncode not in (0, 2, 4):
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        raise EdgeDLError(f"ansible-playbook failed before any device was reached (exit {proc.returncode}): {tail}; "
                          f"full log: {run_dir / 'ansible.log'}")
    return FleetResult(check=config.check, serial=config.serial, max_fail=config.max_fail, stopped=stopped is not None,
                       run_dir=str(run_dir), log=str(run_dir / "ansible.log"), ansible_rc=proc.returncode,
                       bundles=prepared, hosts=rows)


@dataclass
class StatusConfig:
    inventory: Path
    limit: list[str] = field(default_factory=list)
    playbook_dir: Path | None = None
    forks: int = 20
    run_dir: Path | None = None
    progress: bool = True


@dataclass(frozen=True)
class DeviceState:
    """One device's row of ``fleet status``: what ``device.sh status`` and ``wait-ready`` said there (status.yml
    runs them, as ``edgedl deploy status`` does), or why the device could not be read."""

    host: str
    reachable: bool
    groups: list[str] = field(default_factory=list)
    current: str | None = None
    running: bool = False
    ready: bool = False
    models: dict[str, str | None] = field(default_factory=dict)  # name -> sha256
    uptime_s: float | None = None
    device_uptime_s: float | None = None
    arch: str | None = None
    dir: str | None = None
    service: str | None = None
    unit: str | None = None
    port: str | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FleetStatus:
    run_dir: str
    log: str
    hosts: list[DeviceState]

    def to_json(self) -> dict:
        return {"run_dir": self.run_dir, "log": self.log, "hosts": [h.to_json() for h in self.hosts]}


def _device_state(report: dict[str, Any], groups: list[str]) -> DeviceState:
    """A row from one device's report: the device's own lines parsed by the same types as ``edgedl deploy status``."""
    from edgedl.stages.device import DeviceStatus
    from edgedl.stages.device.protocol import Health

    if "status" not in report:  # unreachable, or device.sh failed there
        return DeviceState(host=str(report.get("host")), reachable=bool(report.get("reachable")), groups=groups,
                           error=str(report.get("error") or "no answer (see the ansible log)"))
    st = DeviceStatus.parse(str(report["status"]))
    rc = report.get("health_rc")
    health = Health.parse(int(rc), str(report.get("health") or "")) if isinstance(rc, int) else None
    return DeviceState(host=str(report["host"]), reachable=True, groups=groups, current=st.current,
                       running=st.running, ready=bool(st.running and health and health.ready),
                       models=dict(health.release_models) if health else {}, uptime_s=st.uptime_s,
                       device_uptime_s=st.device_uptime_s, arch=st.arch, dir=st.directory, service=st.manager,
                       unit=st.unit, port=st.service.get("EDGEDL_PORT"),
                       error=health.reason or None if st.running and health and not health.ready else None)


def status(config: StatusConfig) -> FleetStatus:
    pdir = playbook_dir(config.playbook_dir)
    inventory = read_inventory(config.inventory, config.playbook_dir)
    hosts = [h for h in inventory.hosts
             if not config.limit or h in config.limit or set(inventory.groups[h]) & set(config.limit)]
    if not hosts:
        raise EdgeDLError(f"--limit {', '.join(config.limit)} matches no host of {config.inventory}")
    run_dir = _run_dir(config.run_dir, "status")
    reports = run_dir / "reports"
    reports.mkdir(exist_ok=True)
    extra = {"edgedl_hosts": hosts, "edgedl_report_dir": str(reports)}
    proc = _progress_runner(pdir, "status.yml", config.inventory, extra, run_dir, len(hosts), "fleet status",
                            config.progress, forks=max(config.forks, 1))
    unreachable = unreachable_messages(proc.stdout)
    rows = []
    for host in hosts:
        path = reports / f"{host}.json"
        report: dict[str, Any] = (json.loads(path.read_text()) if path.is_file() else
                                  {"host": host, "reachable": False,
                                   "error": unreachable.get(host, "no answer (see the ansible log)")})
        rows.append(_device_state(report, inventory.groups[host]))
    return FleetStatus(run_dir=str(run_dir), log=str(run_dir / "ansible.log"), hosts=rows)


__all__ = ["DeviceState", "FleetConfig", "FleetResult", "FleetStatus", "HostOutcome", "PreparedBundle", "StatusConfig",
           "deploy", "prepare_bundle", "status"]
