"""The runtime a device installs offline: a wheelhouse of the target's wheels (onnxruntime pinned by the device
profile, numpy, the server's deps) plus a wheel of this edgedl, and the exact pins of every wheel in it.

Downloads are cached per (platforms, Python, requirements) under the edgedl cache, built wheels per source hash;
``edgedl package`` copies the result into a bundle, ``edgedl bench --remote`` links it into the kit it sends.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.stages.profiles import DeviceProfile

SOURCE_ROOT = Path(__file__).resolve().parents[3]
# what the device needs to serve: the runtime (numpy, onnxruntime, click, rich) and the server (uvicorn, httptools;
# orjson reads large JSON bodies' numbers, with wheels for both profile arches)
RUNTIME_REQUIREMENTS = ("numpy", "click", "rich", "uvicorn", "httptools", "orjson")
GRPC_REQUIREMENTS = ("hpack", "protobuf")  # edgedl[grpc]: only in a bundle that serves gRPC (package --grpc-port)


@dataclass(frozen=True)
class Wheelhouse:
    """``DIR/wheels`` and ``DIR/requirements.txt``, as :func:`assemble` wrote them."""

    directory: Path  # the wheels/ folder
    onnxruntime: str  # the pinned version
    requested: tuple[str, ...]  # what was asked of pip
    pins: tuple[str, ...]  # name==version of every wheel (requirements.txt)
    wheels: tuple[str, ...]  # the wheel files


def _pip(*args: str, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        if "No matching distribution" in tail:
            raise EdgeDLError(f"{what} failed: {tail.removeprefix('ERROR: ')} - that version has no wheel for this "
                              "platform and Python; pick another --python or pin another onnxruntime in the profile")
        raise EdgeDLError(f"{what} failed: {tail} - check your network/index settings (pip {' '.join(args[:1])})")


def _locked_cache(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.parent / f".{path.name}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # parallel package runs share one download
    return lock


def target_wheels(profile: DeviceProfile, python: str, cache: Path, grpc: bool = False) -> tuple[Path, list[str]]:
    """The target's runtime wheels, downloaded once per (platforms, python, requirements); returns (dir, specs)."""
    specs = [f"onnxruntime=={profile.onnxruntime_pin(python)}", *RUNTIME_REQUIREMENTS, *(GRPC_REQUIREMENTS if grpc else ())]
    key = hashlib.sha256(json.dumps([profile.platforms, python, specs]).encode()).hexdigest()[:16]
    target = cache / "wheelhouse" / f"{profile.arch}-py{python}-{key}"
    lock = _locked_cache(target)
    try:
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
            platform_args = [a for p in profile.platforms for a in ("--platform", p)]
            tag = python.replace(".", "")
            _pip("download", "-q", "--only-binary=:all:", *platform_args, "--python-version", python,
                 "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none", "-d", str(tmp), *specs,
                 what=f"downloading {profile.arch} wheels for Python {python} ({', '.join(specs)})")
            (tmp / ".complete").write_text(json.dumps(specs))
            tmp.rename(target)
    finally:
        lock.close()
    return target, specs


def edgedl_wheel(cache: Path) -> Path:
    """A wheel of this edgedl source tree (pure Python), built once per source hash with pip's build backend."""
    if not (SOURCE_ROOT / "pyproject.toml").is_file():
        raise EdgeDLError("edgedl's source tree is not available to build the runtime wheel; pass --edgedl-wheel PATH")
    # walk with followlinks: edgedl/_deploy is a link to deploy/, whose files the wheel carries too
    sources = sorted(Path(d, f) for d, _, files in os.walk(SOURCE_ROOT / "toolkit" / "edgedl", followlinks=True)
                     for f in files if "__pycache__" not in Path(d).parts)
    h = hashlib.sha256((SOURCE_ROOT / "pyproject.toml").read_bytes())
    for p in sources:
        h.update(str(p.relative_to(SOURCE_ROOT)).encode())
        h.update(p.read_bytes())
    target = cache / "edgedl-wheel" / h.hexdigest()[:16]
    lock = _locked_cache(target)
    try:
        wheels = sorted(target.glob("edgedl-*.whl"))
        if not wheels:
            with tempfile.TemporaryDirectory(prefix="edgedl-src-") as tmp:
                src = Path(tmp) / "src"
                # build from a clean copy so the shared source tree gets no build/ or egg-info litter
                shutil.copytree(SOURCE_ROOT / "toolkit", src / "toolkit", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                shutil.copy2(SOURCE_ROOT / "pyproject.toml", src)
                if (SOURCE_ROOT / "README.md").is_file():
                    shutil.copy2(SOURCE_ROOT / "README.md", src)
                out = Path(tmp) / "out"
                _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src), what="building the edgedl wheel")
                target.mkdir(parents=True, exist_ok=True)
                for whl in out.glob("edgedl-*.whl"):
                    shutil.copy2(whl, target)
            wheels = sorted(target.glob("edgedl-*.whl"))
    finally:
        lock.close()
    if not wheels:
        raise EdgeDLError("building the edgedl wheel produced no file; run `pip wheel --no-deps .` to see why")
    return wheels[-1]


def pins(wheel_dir: Path) -> list[str]:
    """name==version for every wheel file (PEP 427 file names)."""
    out = []
    for whl in sorted(Path(wheel_dir).glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        out.append(f"{name.replace('_', '-').lower()}=={version}")
    return out


def assemble(dest: Path, profile: DeviceProfile, python: str, cache: Path, own_wheel: Path | None = None,
             link: bool = False, note: str = "", grpc: bool = False) -> Wheelhouse:
    """Write ``dest/wheels/`` (the target's wheels and edgedl's own; symlinks with ``link``) and
    ``dest/requirements.txt`` (``note``, then the exact pins)."""
    source, specs = target_wheels(profile, python, cache, grpc)
    own = Path(own_wheel) if own_wheel else edgedl_wheel(cache)
    if not own.is_file():
        raise EdgeDLError(f"--edgedl-wheel {own} does not exist")
    wheels = Path(dest) / "wheels"
    wheels.mkdir(parents=True)
    for whl in [*sorted(source.glob("*.whl")), own]:
        if link:
            (wheels / whl.name).symlink_to(whl.resolve())
        else:
            shutil.copy2(whl, wheels)
    pinned = pins(wheels)
    (Path(dest) / "requirements.txt").write_text(note + "\n".join(pinned) + "\n")
    return Wheelhouse(directory=wheels, onnxruntime=profile.onnxruntime_pin(python), requested=tuple(specs),
                      pins=tuple(pinned), wheels=tuple(sorted(p.name for p in wheels.glob("*.whl"))))
