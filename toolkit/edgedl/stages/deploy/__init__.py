"""``edgedl deploy``: put a bundle on a device over SSH, start it, prove it ready, roll back when it is not.

Order of a deploy (nothing before step 4 touches the running release):
1. verify the bundle's hashes here (and its signature, with a verify key); 2. probe the device (architecture,
Python, venv, free disk and memory vs the profile); 3. copy into ``staging/ID`` (rsync, hard-linking files
unchanged since the current release); 4. verify the hashes (and the signature) again on the device, move to
``releases/ID`` and install the wheelhouse into its venv offline; 5. stop the old service, switch ``current``
atomically, start the new one (a systemd unit when the device runs systemd and the login is root or has
passwordless sudo, else a supervised background process with a pid file; a log per release either way); 6. wait for ``/v2/health/ready``; if it does not come, stop it, switch back,
restart the previous release and fail with the new release's log tail.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import (MANIFEST, sha256_file, unpack_bundle, verify_key_lines, verify_manifest,
                                     verify_signature)
from edgedl.stages.deploy import remote, values
from edgedl.stages.deploy.ssh import RemoteCommandError, SSHTarget

# rough cost of installing a wheelhouse into a venv, as a multiple of the wheels' size (onnxruntime/numpy unpack ~3x)
INSTALL_EXPANSION = 3.0
MIN_MEMORY_MB = 150  # python + numpy + onnxruntime + a small model peak at ~55 MiB; leave room


@dataclass
class DeployConfig:
    target: SSHTarget
    remote_dir: str = "edgedl"
    remote_python: str = "python3"
    serve_host: str | None = None  # default: the bundle's
    serve_port: int | None = None
    ready_timeout: float = 120.0
    keep: int = 5  # installed releases kept on the device (current always kept)
    api_key: str | None = None  # bearer token the server requires (stored in service.env, mode 600)
    # no key at all, said explicitly; without it a server beyond loopback keeps its key or gets one generated
    no_auth: bool = False
    # an OpenSSH ed25519 public key: the bundle must be signed by it, here and on the device (which then keeps it
    # and takes only bundles it signed, at install and at every server start)
    verify_key: Path | None = None
    service: str = "auto"  # how the server is kept running: auto (systemd when usable) | systemd | process
    break_lock: bool = False  # take over the device directory's deploy lock even if another deploy holds it
    progress: bool = True

    def __post_init__(self) -> None:
        values.remote_dir(self.remote_dir)
        if self.serve_host is not None:
            self.serve_host = values.serve_host(self.serve_host)
        if self.serve_port is not None:
            self.serve_port = values.tcp_port(self.serve_port, "--serve-port")
        if self.api_key is not None:
            self.api_key = values.api_key(self.api_key)
            if self.no_auth:
                raise EdgeDLError("--no-auth and --api-key-file contradict each other; pass one of them")

    @property
    def auth_mode(self) -> str:
        """device.sh activate's AUTH: set (this key) | none | auto (keep the device's, generate one if needed)."""
        return "set" if self.api_key is not None else "none" if self.no_auth else "auto"


@dataclass
class DeviceFacts:
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

    @classmethod
    def parse(cls, text: str) -> "DeviceFacts":
        """The JSON object ``device.sh facts`` prints."""
        import json

        try:
            kv = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise EdgeDLError(f"the device answered the probe with something that is not JSON: {text.strip()[-200:]!r}; "
                              "is its login shell printing a banner? (check ~/.bashrc)") from None
        num = lambda k: float(kv[k]) / 1024 if isinstance(kv.get(k), (int, float)) else None  # noqa: E731
        return cls(arch=kv.get("arch", "?"), python=kv.get("python") or None, venv=kv.get("venv") == "yes",
                   disk_free_mb=num("disk_free_kb") or 0.0, mem_available_mb=num("mem_available_kb"),
                   mem_total_mb=num("mem_total_kb"), systemd=kv.get("systemd") == "yes",
                   systemd_usable=kv.get("systemd_usable") == "yes", systemd_why=kv.get("systemd_why", ""),
                   service=kv.get("service", "process"), unit=kv.get("unit", ""), rsync=kv.get("rsync") == "yes",
                   current=kv.get("current") or None, running=bool(kv.get("running")), directory=kv.get("dir", ""))


@dataclass
class DeployResult:
    host: str
    release: str
    previous: str | None
    ready: bool
    url: str  # where a client reaches the server (the device's loopback only when bind is a loopback address)
    device: dict
    bind: str = ""  # HOST:PORT the server listens on, on the device
    reach: str = "address"  # who can connect: loopback (the device itself) | all (every interface) | address
    auth: str = "none"  # key (the server requires an API key) | none
    api_key: str | None = None  # the key the device generated for this deploy: shown once, then `status --show-key`
    service: str = "process"  # systemd | process
    unit: str | None = None
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)


def _device(config: DeployConfig, command: str, *args: str, check: bool = True, timeout: float = 60,
            input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run one device.sh COMMAND in the deploy directory (see device.sh); exit 20, a directory that cannot be
    created, is a user error here, any other failure with ``check`` a RemoteCommandError."""
    proc = config.target.run(remote.DEVICE, config.remote_dir, command, *args, check=False, timeout=timeout, input=input)
    if proc.returncode == 20:
        raise EdgeDLError(f"cannot create --remote-dir {config.remote_dir} on {config.target.label}: {proc.stderr.strip()}")
    if proc.returncode == 33:  # a value device.sh refuses to write (checked here first: values.py)
        raise EdgeDLError(f"{_last_line(proc)} (on {config.target.label}); nothing was changed")
    if check and proc.returncode != 0:
        raise RemoteCommandError(config.target, proc)
    return proc


def _last_line(proc: subprocess.CompletedProcess) -> str:
    return ((proc.stderr.strip() or proc.stdout.strip()).splitlines() or ["no output"])[-1]


@contextlib.contextmanager
def device_lock(config: DeployConfig, notes: list[str] | None = None):
    """Hold the deploy directory's lock on the device for the block: a second deploy, rollout or rollback to the
    same directory is refused instead of interleaving with this one. Yields ``refresh()``: call it between long
    steps; a lock not refreshed for 15 minutes counts as left by a deploy that died, and is taken over.
    ``config.break_lock`` takes over any lock. A take-over is appended to ``notes``."""
    import getpass
    import secrets
    import socket

    token = secrets.token_hex(8)
    who = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"

    def take(*extra: str) -> None:
        proc = _device(config, "lock", token, who, *extra, check=False)
        if proc.returncode == 32:
            raise EdgeDLError(f"{proc.stderr.strip().splitlines()[-1]} on {config.target.label}; wait for it to finish, "
                              "or pass --break-lock if it died; nothing was changed")
        if proc.returncode != 0:
            raise RemoteCommandError(config.target, proc)
        if "took over" in proc.stderr and notes is not None:
            notes.append(proc.stderr.strip().splitlines()[-1])

    take(*(["break"] if config.break_lock else []))
    try:
        yield take
    finally:
        try:
            _device(config, "unlock", token, check=False)
        except EdgeDLError:
            pass  # unreachable now: the lock goes stale after 15 minutes


def probe(config: DeployConfig) -> DeviceFacts:
    return DeviceFacts.parse(_device(config, "facts", config.remote_python).stdout)


def check_device(facts: DeviceFacts, manifest: dict, bundle_bytes: int, config: DeployConfig) -> list[str]:
    """Refuse a device the bundle cannot run on (one clear error each); return warnings."""
    prof = manifest["profile"]
    where = config.target.label
    if facts.arch != prof["arch"]:
        raise EdgeDLError(f"{where} is {facts.arch} but the bundle is for {prof['name']} ({prof['arch']}); "
                          f"package it for a matching target (e.g. --target {'x86-server' if facts.arch == 'x86_64' else 'rpi5'})")
    if not facts.python:
        raise EdgeDLError(f"{config.remote_python} was not found on {where}; install Python {manifest['python']} there "
                          "(e.g. apt install python3 python3-venv) or pass --remote-python PATH")
    if facts.python != manifest["python"]:
        raise EdgeDLError(f"{where} has Python {facts.python} but the bundle's wheelhouse is for Python {manifest['python']}; "
                          f"re-package with --python {facts.python} (profile {prof['name']} supports {', '.join(prof['python'])})")
    if not facts.venv:
        raise EdgeDLError(f"{config.remote_python} on {where} cannot create virtual environments; install python3-venv there")
    need_mb = bundle_bytes / 2**20 * (1 + INSTALL_EXPANSION) + prof["min_free_disk_mb"]
    if facts.disk_free_mb < need_mb:
        raise EdgeDLError(f"{where} has {facts.disk_free_mb:.0f} MB free in {facts.directory} but this release needs "
                          f"~{need_mb:.0f} MB (bundle + installed runtime + the profile's {prof['min_free_disk_mb']} MB "
                          "reserve); free space or prune old releases, or pass another --remote-dir")
    warnings = []
    if facts.mem_available_mb is not None and facts.mem_available_mb < MIN_MEMORY_MB:
        raise EdgeDLError(f"{where} has only {facts.mem_available_mb:.0f} MB of memory available; the server needs "
                          f"~{MIN_MEMORY_MB} MB - stop other services first")
    if facts.mem_total_mb is not None and facts.mem_total_mb < prof["memory_mb"]:
        warnings.append(f"{where} has {facts.mem_total_mb:.0f} MB of memory, less than profile {prof['name']}'s "
                        f"budget of {prof['memory_mb']} MB")
    if config.service == "systemd" and not facts.systemd_usable:
        raise EdgeDLError(f"--service systemd: on {where} {facts.systemd_why}; pass --service auto (a supervised "
                          "process) or deploy as root / give the login passwordless sudo")
    if config.service == "auto" and facts.systemd and not facts.systemd_usable:
        warnings.append(f"{where} runs systemd but {facts.systemd_why}, so the server runs as a supervised process "
                        "(pid file + log) that does not come back after a reboot; give the login passwordless sudo "
                        "(or deploy as root) to get a systemd unit, or pass --service process to say you mean it")
    return warnings


def _release_id(manifest_sha: str) -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z-{manifest_sha[:8]}"


def _log_tail(config: DeployConfig, release: str, lines: int = 15) -> str:
    return _device(config, "logs", release, str(lines), check=False).stdout.strip()


def _wait_ready(config: DeployConfig, release: str, timeout: float) -> "subprocess.CompletedProcess":
    """device_health.py on the device: 0 ready, 1 not ready in time, 2 the server kept crashing, 4 a model of
    the release is not served."""
    return _device(config, "wait-ready", config.remote_python, str(timeout), release, remote.HEALTH, check=False,
                   timeout=timeout + 60)


def _health_error(proc: subprocess.CompletedProcess) -> str:
    """The ``error`` of device_health.py's JSON line (up to the log tail it appends)."""
    import json

    try:
        error = json.loads(proc.stdout.strip().splitlines()[-1]).get("error", "")
    except (ValueError, IndexError, AttributeError):
        return _last_line(proc)
    return error.split("; its log ends:")[0]


def _restore(config: DeployConfig, release: str, previous: str | None) -> None:
    _device(config, "restore", release, previous or "", timeout=180)


def deploy(bundle: Path, config: DeployConfig) -> DeployResult:
    """Deploy a bundle directory or the ``DIR.tar.gz`` that `edgedl package` wrote."""
    import tempfile

    bundle = Path(bundle)
    if bundle.is_file() and bundle.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory(prefix="edgedl-bundle-") as tmp:
            return _deploy(unpack_bundle(bundle, Path(tmp)), config)
    return _deploy(bundle, config)


def _deploy(bundle: Path, config: DeployConfig) -> DeployResult:
    from edgedl.console import progress

    if not bundle.is_dir():
        raise EdgeDLError(f"bundle {bundle} is not a directory or a .tar.gz; create one with `edgedl package`")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    signed = verify_signature(bundle, config.verify_key) if config.verify_key is not None else None
    manifest = verify_manifest(bundle, manifest=signed)
    trust: list[str] = []  # install/activate's KEY argument; the key itself goes on install's stdin
    key_text = None
    if config.verify_key is not None:
        key_text = "".join(f"{line}\n" for line in verify_key_lines(config.verify_key)).encode()
        trust = [f"trust/{hashlib.sha256(key_text).hexdigest()[:16]}.pub"]
    bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    # the bundle's defaults are checked like the options: a bundle may come from elsewhere
    host = config.serve_host or values.serve_host(manifest["server"]["host"], "the bundle's server host")
    port = config.serve_port or values.tcp_port(manifest["server"]["port"], "the bundle's server port")
    timings["verify_local"] = time.perf_counter() - t0
    with progress(f"deploying to {config.target.label}", total=6, enabled=config.progress) as advance, \
            device_lock(config, lock_notes := []) as refresh_lock:
        t = time.perf_counter()
        facts = probe(config)
        warnings = lock_notes + check_device(facts, manifest, bundle_bytes, config)
        timings["probe"] = time.perf_counter() - t
        advance(info="device checked")

        release = _release_id(sha256_file(bundle / MANIFEST))
        previous = facts.current
        t = time.perf_counter()
        link_dest = f"../../releases/{previous}" if previous else None
        try:
            config.target.copy_dir(bundle, f"{config.remote_dir}/staging/{release}", link_dest=link_dest,
                                   use_rsync=facts.rsync)
            timings["copy"] = time.perf_counter() - t
            advance(info="copied")

            t = time.perf_counter()
            refresh_lock()
            proc = _device(config, "install", release, config.remote_python, *trust, input=key_text, check=False,
                           timeout=900)
        except BaseException:  # a failed or interrupted copy leaves no staging/ behind (the lock is still ours)
            with contextlib.suppress(Exception):
                _device(config, "discard", release, check=False)
            raise
        if proc.returncode != 0:
            _device(config, "discard", release, check=False)
        if proc.returncode == 34:
            raise EdgeDLError(f"{_last_line(proc)} on {config.target.label}; the running release was not touched - sign "
                              "the bundle (edgedl package --sign KEY) with the key the device trusts")
        if proc.returncode == 22:
            raise EdgeDLError(f"the copy on {config.target.label} does not match the bundle's manifest "
                              f"({_last_line(proc)}); the running release was not touched - deploy again")
        if proc.returncode != 0:
            raise EdgeDLError(f"installing release {release} on {config.target.label} failed: "
                              f"{' | '.join(proc.stderr.strip().splitlines()[-3:])}; the running release was not touched")
        timings["install"] = time.perf_counter() - t
        advance(info="installed")

        t = time.perf_counter()
        refresh_lock()
        key_input = config.api_key.encode() if config.api_key is not None else None
        activated = _device(config, "activate", release, host, str(port), config.auth_mode, config.service, *trust,
                            input=key_input, check=False, timeout=180)
        if activated.returncode != 0:
            why = " | ".join((activated.stderr.strip() or activated.stdout.strip()).splitlines()[-3:])
            if activated.returncode in (29, 30):  # refused before anything was stopped or switched
                raise EdgeDLError(f"{why} (on {config.target.label}); the running release was not touched")
            _restore(config, release, previous)
            raise EdgeDLError(f"starting release {release} on {config.target.label} failed ({why}); "
                              + (f"restored release {previous}" if previous else "nothing runs there now"))
        started = dict(line.split("=", 1) for line in activated.stdout.splitlines() if "=" in line)
        advance(info="started")
        try:
            waited = _wait_ready(config, release, config.ready_timeout)
        except KeyboardInterrupt:  # interrupted before the new release proved ready: put the previous one back
            _restore(config, release, previous)
            raise
        ready = waited.returncode == 0
        timings["start_to_ready"] = time.perf_counter() - t
        if not ready:
            tail = _log_tail(config, release)
            _restore(config, release, previous)
            restored = ""
            if previous:
                back = _wait_ready(config, previous, config.ready_timeout)
                restored = (f"; rolled back to release {previous}, which is " +
                            ("ready again" if back.returncode == 0 else "NOT ready either - check `edgedl deploy logs`"))
            else:
                restored = "; there was no previous release to roll back to, the service is stopped"
            last = " | ".join(tail.splitlines()[-4:]) or "(empty log)"
            why = ("kept crashing on start" if waited.returncode == 2 else
                   f"started without all of its models ({_health_error(waited)})" if waited.returncode == 4 else
                   f"did not become ready within {config.ready_timeout:.0f} s")
            raise EdgeDLError(f"release {release} {why} on {config.target.label}{restored}. Its log ends: {last}")
        advance(info="ready")
        pruned = [line.split("=", 1)[1] for line in _device(config, "prune", str(max(config.keep, 1)), timeout=120)
                  .stdout.splitlines() if line.startswith("pruned=")]
        advance(info="done")
    timings["total"] = time.perf_counter() - t0
    auth = started.get("auth", "none")
    if auth == "none" and not values.is_loopback(host):
        warnings.append(f"the server on {config.target.label} listens on {host}:{port} WITHOUT an API key (--no-auth): "
                        "anyone who can reach that port can run its models; deploy without --no-auth to get a key")
    return DeployResult(host=config.target.label, release=release, previous=previous, ready=True,
                        url=_client_url(config.target.host, host, port), bind=_hostport(host, port), auth=auth,
                        reach=("loopback" if values.is_loopback(host) else
                               "all" if host in values.WILDCARD_HOSTS else "address"),
                        api_key=started.get("api_key_generated"),
                        device=facts.__dict__, service=started.get("service", "process"), unit=started.get("unit"),
                        warnings=warnings, timings_s={k: round(v, 2) for k, v in timings.items()},
                        pruned=pruned)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_url(device: str, bind: str, port: int) -> str:
    """Where a client reaches a server bound to ``bind``: a wildcard bind answers on the device's own address."""
    return f"http://{_hostport(device if bind in values.WILDCARD_HOSTS else bind, port)}"


def status(config: DeployConfig, show_key: bool = False) -> dict:
    """The device's releases and service; ``show_key``: with the API key itself in ``service.EDGEDL_API_KEY``."""
    proc = _device(config, "status", *(["show-key"] if show_key else []))
    out: dict = {"host": config.target.label, "remote_dir": config.remote_dir, "current": None, "running": False,
                 "pid": None, "manager": "process", "unit": None, "enabled": None, "service": {}, "releases": [],
                 "staging": [], "history": []}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "current":
            out["current"] = value or None
        elif key == "running":
            out["running"] = value == "yes"
        elif key == "pid":
            out["pid"] = int(value) if value.isdigit() else None
        elif key == "service":
            out["manager"] = value
        elif key in ("unit", "enabled"):
            out[key] = value or None
        elif key.startswith("service."):
            out["service"][key[len("service."):]] = value
        elif key == "release":
            rid, state, kb = (value.split() + ["", "", "0"])[:3]
            out["releases"].append({"id": rid, "state": state, "size_mb": round(int(kb) / 1024, 1) if kb.isdigit() else None,
                                    "current": rid == out["current"]})
        elif key == "staging":
            out["staging"].append(value)
        elif key == "history":
            out["history"].append(value)
    out["ready"] = False
    if out["running"]:
        out["ready"] = _wait_ready(config, out["current"] or "", 3).returncode == 0
    return out


def rollback(config: DeployConfig, to: str | None = None) -> dict:
    """Switch back to the release active before the current one (or ``to``), restart it, wait for ready."""
    with device_lock(config):
        return _rollback(config, to)


def _rollback(config: DeployConfig, to: str | None) -> dict:
    st = status(config)
    current = st["current"]
    installed = [r["id"] for r in st["releases"] if r["state"] == "installed"]
    if to is None:
        activated = [h.split()[1] for h in st["history"] if h.split()[-1:] in (["activated"], ["rolled-back-to"])]
        earlier = [rid for rid in reversed(activated) if rid != current and rid in installed]
        if not earlier:
            raise EdgeDLError(f"no earlier working release to roll back to on {config.target.label} "
                              f"(installed: {', '.join(installed) or 'none'}); deploy a bundle instead")
        to = earlier[0]
    elif to not in installed:
        raise EdgeDLError(f"release {to!r} is not an installed release on {config.target.label}; "
                          f"choose one of: {', '.join(installed) or 'none'}")
    service = st["service"]
    host = service.get("EDGEDL_HOST", "0.0.0.0")
    port = service.get("EDGEDL_PORT", "8000")
    _device(config, "activate", to, host, port, "keep", "keep", timeout=180)
    ok = _wait_ready(config, to, config.ready_timeout).returncode == 0
    if not ok:
        tail = _log_tail(config, to)
        if current:
            _restore(config, to, current)
        raise EdgeDLError(f"release {to} did not become ready after the rollback; switched back to {current}. "
                          f"Its log ends: {' | '.join(tail.splitlines()[-4:])}")
    return {"host": config.target.label, "from": current, "to": to, "ready": True}


def stop(config: DeployConfig) -> dict:
    """Stop the server; a systemd unit is disabled too. `edgedl deploy rollback --to CURRENT` or a deploy starts it again."""
    _device(config, "stop", timeout=120)
    st = status(config)
    if st["running"]:
        raise EdgeDLError(f"the server on {config.target.label} still runs after the stop; see `edgedl deploy logs`")
    return {"host": config.target.label, "current": st["current"], "running": False}


def logs(config: DeployConfig, release: str | None = None, lines: int = 50) -> str:
    proc = _device(config, "logs", release or "", str(lines), check=False)
    if proc.returncode in (27, 28):
        raise EdgeDLError(f"{proc.stderr.strip()} on {config.target.label}; deploy a bundle first (or check --remote-dir)")
    if proc.returncode != 0:
        raise RemoteCommandError(config.target, proc)
    return proc.stdout


def describe_profiles() -> list[dict]:
    from edgedl.stages.profiles import list_profiles

    return [p.to_dict() for p in list_profiles().values()]


__all__ = ["DeployConfig", "DeployResult", "DeviceFacts", "check_device", "deploy", "describe_profiles", "logs",
           "probe", "rollback", "status", "stop"]
