"""Device profiles: one small declarative TOML file per target (``deploy/profiles/NAME.toml``).

A profile says what the device is (architecture, wheel platform tags, Python versions), which onnxruntime is known
to work there (and which is known bad), the provider order, threads, the preferred quantization preset and its
budgets. ``package`` and ``deploy`` read it; nothing else branches on device names.

Lookup order for a name: directories in ``$EDGEDL_PROFILE_PATH`` (``:``-separated), ``~/.config/edgedl/profiles``,
then the built-in ``deploy/profiles``. ``--target`` also accepts a path to a ``.toml`` file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.providers import resolve_provider
from edgedl.stages.resources import deploy_dir

BUILTIN_DIR = deploy_dir("profiles")  # deploy/profiles in a checkout, edgedl/_deploy/profiles when installed
ARCHES = ("aarch64", "x86_64")
# the built-in profile that stands for each architecture (bench --remote's wheels, the advice for a wrong --target)
DEFAULT_PROFILE_FOR_ARCH = {"x86_64": "x86-server", "aarch64": "rpi5"}
# arm64 Python base image for the Pi-class targets; an l4t image is named by the Jetson profile itself
DEFAULT_DOCKER_BASE = {"aarch64": "arm64v8/python:{python}-slim-bookworm", "x86_64": "python:{python}-slim-bookworm"}


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    arch: str
    platforms: tuple[str, ...]
    python: tuple[str, ...]
    onnxruntime: str
    description: str = ""
    onnxruntime_known_bad: tuple[str, ...] = ()
    # a different pin for some Python versions (newer onnxruntime releases drop old Pythons): {"3.10": "1.23.2"}
    onnxruntime_for_python: dict[str, str] = field(default_factory=dict)
    providers: tuple[str, ...] = ("cpu",)
    threads: int = 0
    quantization: str = "arm64"  # an `edgedl quantize --preset` name
    memory_mb: int = 1000
    min_free_disk_mb: int = 200
    cpu_features: tuple[str, ...] = ()
    docker_base: str = ""
    wheel_note: str = ""
    serve_limits: str = "default"  # the server's limits preset on this device (edgedl serve --limits)
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        where = f"profile {self.name!r} ({self.source or 'inline'})"
        if self.arch not in ARCHES:
            raise EdgeDLError(f"{where}: arch {self.arch!r} is not supported; use one of {', '.join(ARCHES)} "
                              "(32-bit ARM has no onnxruntime wheels)")
        if not self.platforms or not all(p.endswith(self.arch) for p in self.platforms):
            raise EdgeDLError(f"{where}: platforms must be wheel tags ending in {self.arch}, e.g. manylinux_2_28_{self.arch}")
        if not self.python:
            raise EdgeDLError(f"{where}: list at least one Python version, e.g. python = [\"3.11\"]")
        for version in (self.onnxruntime, *self.onnxruntime_for_python.values()):
            if version in self.onnxruntime_known_bad:
                raise EdgeDLError(f"{where}: onnxruntime {version} is listed as known bad for this device; "
                                  "pin a known-good version")
        stray = sorted(set(self.onnxruntime_for_python) - set(self.python))
        if stray:
            raise EdgeDLError(f"{where}: onnxruntime_for_python names Python {', '.join(stray)}, which is not in python")
        for p in self.providers:
            resolve_provider(p)
        from edgedl.runtime.server.config import LIMITS

        if self.serve_limits not in LIMITS:
            raise EdgeDLError(f"{where}: serve_limits {self.serve_limits!r} is not a limits preset; use one of "
                              f"{', '.join(LIMITS)}")
        if self.threads < 0 or self.memory_mb <= 0 or self.min_free_disk_mb < 0:
            raise EdgeDLError(f"{where}: threads, memory_mb and min_free_disk_mb must be non-negative numbers")

    def onnxruntime_pin(self, python: str) -> str:
        """The onnxruntime version a bundle for this Python gets."""
        return self.onnxruntime_for_python.get(python, self.onnxruntime)

    def docker_image(self, python: str) -> str:
        return (self.docker_base or DEFAULT_DOCKER_BASE[self.arch]).format(python=python)

    def check_python(self, python: str) -> str:
        if python not in self.python:
            raise EdgeDLError(f"Python {python} is not supported by profile {self.name!r} "
                              f"(supported: {', '.join(self.python)}); pass --python with one of those")
        return python

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __hash__(self) -> int:  # frozen, but holds a dict
        return hash((self.name, self.arch, self.platforms, self.python, self.onnxruntime))


def default_profile(arch: str) -> str | None:
    """The built-in profile for a device of architecture ``arch`` (None: edgedl has no wheels for it)."""
    return DEFAULT_PROFILE_FOR_ARCH.get(arch)


def _toml_loads(text: str):
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        try:
            import tomli as tomllib
        except ImportError:
            raise EdgeDLError("reading device profiles on Python 3.10 needs the 'tomli' package: pip install tomli") from None
    return tomllib.loads(text)


def search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("EDGEDL_PROFILE_PATH", "").split(os.pathsep) if p]
    dirs.append(Path.home() / ".config" / "edgedl" / "profiles")
    dirs.append(BUILTIN_DIR)
    return dirs


def load_profile_file(path: Path) -> DeviceProfile:
    path = Path(path)
    try:
        data = _toml_loads(path.read_text())
    except OSError as exc:
        raise EdgeDLError(f"cannot read profile {path}: {exc.strerror}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise EdgeDLError(f"profile {path} is not valid TOML: {exc}") from None
    known = {f.name for f in dataclasses.fields(DeviceProfile)} - {"source"}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" - did you mean '{close[0]}'?" if close else ""
            raise EdgeDLError(f"profile {path}: unknown key {key!r}{hint} (known: {', '.join(sorted(known))})")
    data.setdefault("name", path.stem)
    missing = [k for k in ("arch", "platforms", "python", "onnxruntime") if k not in data]
    if missing:
        raise EdgeDLError(f"profile {path} lacks {', '.join(missing)}; see deploy/profiles/rpi4.toml for an example")
    for key in ("platforms", "python", "onnxruntime_known_bad", "providers", "cpu_features"):
        if key in data:
            data[key] = tuple(str(v) for v in data[key])
    if "onnxruntime_for_python" in data:
        data["onnxruntime_for_python"] = {str(k): str(v) for k, v in dict(data["onnxruntime_for_python"]).items()}
    try:
        return DeviceProfile(**data, source=str(path))
    except TypeError as exc:
        raise EdgeDLError(f"profile {path}: {exc}") from None


def list_profiles() -> dict[str, DeviceProfile]:
    """Every profile found, by name; earlier search directories win over the built-in ones."""
    out: dict[str, DeviceProfile] = {}
    for directory in reversed(search_dirs()):
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                profile = load_profile_file(path)
                out[profile.name] = profile
    return dict(sorted(out.items()))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A profile by name (``rpi4``) or by path to a TOML file; unknown names get a "did you mean"."""
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        if not Path(text).is_file():
            raise EdgeDLError(f"profile file {text} does not exist")
        return load_profile_file(Path(text))
    profiles = list_profiles()
    if text in profiles:
        return profiles[text]
    close = difflib.get_close_matches(text, list(profiles), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise EdgeDLError(f"unknown device profile '{text}'; {hint}known: {', '.join(profiles)} "
                      "(see `edgedl deploy --list-targets`, or pass a path to your own .toml)")
