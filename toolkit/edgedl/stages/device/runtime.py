"""The edgedl runtime on a device, for running models there without a bundle: ``edgedl bench --remote``, ``debug
compare --remote`` and ``optimize --device`` all set a device up this way.

:func:`stage_runtime` checks the device (Python, venv, an edgedl profile for its arch), installs an offline
wheelhouse for its arch and Python (:mod:`edgedl.stages.wheelhouse`, as a bundle's) into a venv keyed by the wheel
set (``device.sh ensure-env``, reused by later runs) and copies the given files there as content-addressed copies
(``DIR/models/SHA12-NAME``, so a changed file never reuses a stale copy). What runs there is up to the caller.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import sha256_file
from edgedl.stages.device.device import Device
from edgedl.stages.device.protocol import DeviceFacts
from edgedl.stages.device.ssh import SSHTarget


@dataclass(frozen=True)
class StagedRuntime:
    """A device with the edgedl runtime installed and files copied, as :func:`stage_runtime` left it."""

    device: Device
    facts: DeviceFacts
    profile: str  # the device profile whose wheels were installed
    env: str  # the venv's folder in the device directory (ENV for device.sh bench)
    remote_of: dict[str, str]  # each local file (as given) -> its copy on the device

    @property
    def python(self) -> str:
        """The venv's Python on the device (numpy, onnxruntime and edgedl, never torch)."""
        return f"{self.facts.directory}/{self.env}/venv/bin/python"


def profile_for(device: Device, profile: str | None = None):
    """The device's facts and the profile whose wheels suit it (``profile``, else its arch's default) for its
    own Python: unlike a bundle's, this runtime is built for what the device has. One error saying what to fix
    otherwise."""
    from edgedl.stages.profiles import DEFAULT_PROFILE_FOR_ARCH, default_profile, load_profile

    label = device.label
    facts = device.facts()
    if not facts.python:
        raise EdgeDLError(f"{device.python} was not found on {label}; install Python there or pass the path")
    if not facts.venv:
        raise EdgeDLError(f"{device.python} on {label} cannot create virtual environments; install python3-venv")
    name = profile or default_profile(facts.arch)
    if name is None:
        raise EdgeDLError(f"{label} is {facts.arch}; edgedl has wheels for {', '.join(DEFAULT_PROFILE_FOR_ARCH)} only")
    prof = load_profile(name)
    if prof.arch != facts.arch:
        raise EdgeDLError(f"{label} is {facts.arch} but profile {prof.name} is for {prof.arch}")
    prof.check_python(facts.python)
    return facts, prof


def stage_runtime(target: SSHTarget, files: Iterable[Path], *, remote_dir: str, remote_python: str = "python3",
                  profile: str | None = None, cache_dir: Path | None = None,
                  advance: Callable[..., None] = lambda **_: None) -> StagedRuntime:
    """Install the runtime on ``target`` (once per wheel set) and copy ``files`` there; ``advance(info=...)`` is
    called after each of its three steps (device checked, runtime ready, files copied)."""
    from edgedl.stages import wheelhouse
    from edgedl.stages.resources import cache_root

    files = list(dict.fromkeys(Path(f) for f in files))
    for f in files:
        if not f.is_file():
            raise EdgeDLError(f"{f} does not exist")
    device = Device(target, remote_dir, remote_python)
    facts, prof = profile_for(device, profile)
    advance(info="device checked")
    with tempfile.TemporaryDirectory(prefix="edgedl-device-runtime-") as tmp:
        kit = Path(tmp) / "env"
        wheels = wheelhouse.assemble(kit, prof, facts.python, cache_root(cache_dir), link=True)
        key = hashlib.sha256("\n".join(sorted(sha256_file(w) for w in wheels.directory.glob("*.whl"))).encode()).hexdigest()[:16]
        env = f"env-{facts.arch}-py{facts.python}-{key}"
        staged = Path(tmp) / "models"
        staged.mkdir()
        remote_of: dict[str, str] = {}
        for f in files:
            name = f"{sha256_file(f)[:12]}-{f.name}"
            if not (staged / name).is_symlink():  # the same content under the same name goes once
                (staged / name).symlink_to(f.resolve())
            remote_of[str(f)] = f"{facts.directory}/models/{name}"
        device.ensure_env(env, kit, rsync=facts.rsync)
        advance(info="runtime ready")
        target.copy_dir(staged, f"{remote_dir}/models", use_rsync=facts.rsync, copy_links=True, delete=False)
        advance(info="models copied")
    return StagedRuntime(device=device, facts=facts, profile=prof.name, env=env, remote_of=remote_of)


__all__ = ["StagedRuntime", "profile_for", "stage_runtime"]
