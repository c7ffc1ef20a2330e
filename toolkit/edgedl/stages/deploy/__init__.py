"""``edgedl deploy``: put a bundle on a device over SSH, start it, prove it ready, roll back when it is not.

Order of a deploy (nothing before step 4 touches the running release):
1. open the bundle (a directory or its ``.tar.gz``) and verify its hashes here (and its signature, with a verify
key); 2. check the device against what the bundle needs (``device.sh check``: architecture, Python, venv, free
disk and memory); 3. copy into ``staging/ID`` (rsync, hard-linking files unchanged since the current release);
4. verify the hashes (and the signature) again on the device, move to ``releases/ID`` and install the wheelhouse
into its venv offline (a release already installed keeps its venv: ``ID`` is the manifest's hash); 5. stop the
old service, switch ``current`` atomically, start the new one (a systemd unit when the device runs systemd and
the login is root or has passwordless sudo, else a supervised background process with a pid file; a log per
release either way); 6. wait for ``/v2/health/ready`` and every model of the release; if that does not come,
stop it, switch back, restart the previous release and fail with the new release's log tail.

Every step is one :class:`edgedl.stages.device.Device` method (one ``device.sh`` command).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import verify_key_lines
from edgedl.stages.bundle import Bundle
from edgedl.stages.device import Device, DeviceError, DeviceExit, DeviceFacts, DeviceStatus, SSHTarget, values


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

    @property
    def device(self) -> Device:
        return Device(self.target, self.remote_dir, self.remote_python)


@dataclass(frozen=True)
class DeployResult:
    host: str
    release: str
    previous: str | None
    ready: bool
    url: str  # where a client reaches the server (the device's loopback only when bind is a loopback address)
    device: DeviceFacts
    bind: str = ""  # HOST:PORT the server listens on, on the device
    reach: str = "address"  # who can connect: loopback (the device itself) | all (every interface) | address
    auth: str = "none"  # key (the server requires an API key) | none
    api_key: str | None = None  # the key the device generated for this deploy: shown once, then `status --show-key`
    service: str = "process"  # systemd | process
    unit: str | None = None
    warnings: tuple[str, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    pruned: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {**asdict(self), "device": self.device.to_json(), "warnings": list(self.warnings),
                "pruned": list(self.pruned)}


@dataclass(frozen=True)
class StatusResult:
    """``edgedl deploy status``: the device's releases and service, and whether its server answers ready."""

    host: str
    remote_dir: str
    device: DeviceStatus
    ready: bool

    def to_json(self) -> dict:
        return {"host": self.host, "remote_dir": self.remote_dir, **self.device.to_json(), "ready": self.ready}


@dataclass(frozen=True)
class RollbackResult:
    host: str
    previous: str | None  # the release switched away from
    release: str  # the release now serving
    ready: bool

    def to_json(self) -> dict:
        return {"host": self.host, "from": self.previous, "to": self.release, "ready": self.ready}


@dataclass(frozen=True)
class StopResult:
    host: str
    current: str | None
    running: bool

    def to_json(self) -> dict:
        return asdict(self)


def deploy(bundle: Path, config: DeployConfig) -> DeployResult:
    """Deploy a bundle directory or the ``DIR.tar.gz`` that `edgedl package` wrote."""
    t0 = time.perf_counter()
    with Bundle.open(bundle, config.verify_key) as opened:
        return _deploy(opened, config, t0)


def _deploy(bundle: Bundle, config: DeployConfig, t0: float) -> DeployResult:
    from edgedl.console import progress

    device = config.device
    timings: dict[str, float] = {}
    trust_key = trust_name = None  # the verify key goes on install's stdin; the device keeps it as trust/NAME.pub
    if config.verify_key is not None:
        trust_key = "".join(f"{line}\n" for line in verify_key_lines(config.verify_key)).encode()
        trust_name = f"trust/{hashlib.sha256(trust_key).hexdigest()[:16]}.pub"
    host = config.serve_host or bundle.manifest.server.host
    port = config.serve_port or bundle.manifest.server.port
    release = bundle.release
    timings["verify_local"] = time.perf_counter() - t0
    with progress(f"deploying to {device.label}", total=6, enabled=config.progress) as advance, \
            device.locked(config.break_lock, lock_notes := []) as refresh_lock:
        t = time.perf_counter()
        checked = device.check(bundle.requirements(), config.service)
        facts = checked.facts
        warnings = [*lock_notes, *checked.warnings]
        timings["probe"] = time.perf_counter() - t
        advance(info="device checked")

        previous = facts.current
        t = time.perf_counter()
        device.stage(bundle.path, release, link_dest=release if release in facts.installed else previous,
                     rsync=facts.rsync)
        timings["copy"] = time.perf_counter() - t
        advance(info="copied")

        t = time.perf_counter()
        refresh_lock()
        device.install(release, trust_key, trust_name)
        timings["install"] = time.perf_counter() - t
        advance(info="installed")

        t = time.perf_counter()
        refresh_lock()
        try:
            started = device.activate(release, host, port, config.auth_mode, config.service, trust_name, config.api_key)
        except DeviceError as exc:
            if isinstance(exc.code, DeviceExit) and exc.code.refused_before_change:
                raise EdgeDLError(f"{exc.message} (on {device.label}); the running release was not touched") from None
            device.restore(release, previous)
            raise EdgeDLError(f"starting release {release} on {device.label} failed ({exc.message}); "
                              + (f"restored release {previous}" if previous else "nothing runs there now")) from None
        advance(info="started")
        try:
            health = device.wait_ready(release, config.ready_timeout)
        except KeyboardInterrupt:  # interrupted before the new release proved ready: put the previous one back
            device.restore(release, previous)
            raise
        timings["start_to_ready"] = time.perf_counter() - t
        if not health.ready:
            _roll_back(device, release, previous, health, config.ready_timeout)
        advance(info="ready")
        pruned = device.prune(config.keep)
        advance(info="done")
    timings["total"] = time.perf_counter() - t0
    if started.auth == "none" and not values.is_loopback(host):
        warnings.append(f"the server on {device.label} listens on {host}:{port} WITHOUT an API key (--no-auth): "
                        "anyone who can reach that port can run its models; deploy without --no-auth to get a key")
    return DeployResult(host=device.label, release=release, previous=previous, ready=True,
                        url=_client_url(config.target.host, host, port), bind=_hostport(host, port), auth=started.auth,
                        reach=("loopback" if values.is_loopback(host) else
                               "all" if host in values.WILDCARD_HOSTS else "address"),
                        api_key=started.api_key_generated, device=facts, service=started.service, unit=started.unit,
                        warnings=tuple(warnings), timings_s={k: round(v, 2) for k, v in timings.items()},
                        pruned=tuple(pruned))


def _roll_back(device: Device, release: str, previous: str | None, health, timeout: float) -> None:
    """The new release did not prove ready: back to the previous one, and one error saying why and how it ended."""
    tail = device.log_tail(release)
    device.restore(release, previous)
    if previous:
        back = device.wait_ready(previous, timeout)
        restored = (f"; rolled back to release {previous}, which is " +
                    ("ready again" if back.ready else "NOT ready either - check `edgedl deploy logs`"))
    else:
        restored = "; there was no previous release to roll back to, the service is stopped"
    last = " | ".join(tail.splitlines()[-4:]) or "(empty log)"
    why = ("kept crashing on start" if health.code == DeviceExit.CRASHING else
           f"started without all of its models ({health.reason})" if health.code == DeviceExit.MODEL_MISSING else
           f"did not become ready within {timeout:.0f} s")
    raise EdgeDLError(f"release {release} {why} on {device.label}{restored}. Its log ends: {last}")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_url(device: str, bind: str, port: int) -> str:
    """Where a client reaches a server bound to ``bind``: a wildcard bind answers on the device's own address."""
    return f"http://{_hostport(device if bind in values.WILDCARD_HOSTS else bind, port)}"


def status(config: DeployConfig, show_key: bool = False) -> StatusResult:
    """The device's releases and service; ``show_key``: with the API key itself in ``service.EDGEDL_API_KEY``."""
    device = config.device
    st = device.status(show_key)
    ready = st.running and device.wait_ready(st.current or "", 3).ready
    return StatusResult(host=device.label, remote_dir=config.remote_dir, device=st, ready=ready)


def rollback(config: DeployConfig, to: str | None = None) -> RollbackResult:
    """Switch back to the release active before the current one (or ``to``), restart it, wait for ready."""
    device = config.device
    with device.locked(config.break_lock):
        st = device.status()
        current, installed = st.current, st.installed()
        if to is None:
            to = st.last_activated(exclude=current)
            if to is None:
                raise EdgeDLError(f"no earlier working release to roll back to on {device.label} "
                                  f"(installed: {', '.join(installed) or 'none'}); deploy a bundle instead")
        elif to not in installed:
            raise EdgeDLError(f"release {to!r} is not an installed release on {device.label}; "
                              f"choose one of: {', '.join(installed) or 'none'}")
        device.activate(to, st.service.get("EDGEDL_HOST", "0.0.0.0"), int(st.service.get("EDGEDL_PORT", "8000")))
        if not device.wait_ready(to, config.ready_timeout).ready:
            tail = device.log_tail(to)
            if current:
                device.restore(to, current)
            raise EdgeDLError(f"release {to} did not become ready after the rollback; switched back to {current}. "
                              f"Its log ends: {' | '.join(tail.splitlines()[-4:])}")
    return RollbackResult(host=device.label, previous=current, release=to, ready=True)


def stop(config: DeployConfig) -> StopResult:
    """Stop the server; a systemd unit is disabled too. `edgedl deploy rollback --to CURRENT` or a deploy starts it again."""
    device = config.device
    device.stop()
    st = device.status()
    if st.running:
        raise EdgeDLError(f"the server on {device.label} still runs after the stop; see `edgedl deploy logs`")
    return StopResult(host=device.label, current=st.current, running=False)


def logs(config: DeployConfig, release: str | None = None, lines: int = 50) -> str:
    return config.device.logs(release, lines)


def describe_profiles() -> list[dict]:
    from edgedl.stages.profiles import list_profiles

    return [p.to_dict() for p in list_profiles().values()]


__all__ = ["DeployConfig", "DeployResult", "RollbackResult", "StatusResult", "StopResult", "deploy",
           "describe_profiles", "logs", "rollback", "status", "stop"]
