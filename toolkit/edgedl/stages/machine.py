"""What machine this is: CPU model and flags, cores, onnxruntime version and flavour, OS, Python.

Shared by bench (the environment block every report carries), debug (which int8 kernels this CPU has), quantize
(whether full 8-bit weights saturate here: its default weight range) and doctor.
Standard library only (plus onnxruntime for its version), so the bench worker can report it from a device.
"""

from __future__ import annotations

import functools
import os
import platform
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# CPU features that decide which onnxruntime kernels run (int8 dot products, wide vectors)
INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",  # x86
    "neon", "asimd", "asimdhp", "fphp", "asimddp", "dotprod", "i8mm", "bf16", "sve", "sve2",  # arm
)
# Arm "CPU part" -> core name (the ones edgedl targets)
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE",
    "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2", "0xd8b": "Cortex-A720",
    "0x004": "Carmel",  # NVIDIA (Jetson Xavier)
}
# every PyPI distribution that installs the `onnxruntime` package (two at once overwrite each other's files)
ORT_FLAVOURS = (
    "onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn",
    "onnxruntime-rocm", "onnxruntime-migraphx", "onnxruntime-cann", "onnxruntime-vitisai", "onnxruntime-silicon",
    "onnxruntime-training", "onnxruntime-azure", "ort-nightly", "ort-nightly-gpu", "onnxruntime-trt-rtx",
)


def parse_cpuinfo(text: str, hwcaps: set[str] | None = None) -> dict[str, Any]:
    """/proc/cpuinfo text -> {'model': ..., 'flags': [...interesting...], 'all_flags': set, 'arm_part': ...}.

    ``hwcaps`` (``arm_hwcap_flags``), when given, replace the text's flags: they are what the process may execute."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    physical: set[tuple[str, str]] = set()
    phys_id = core_id = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
            physical.add((phys_id or "0", core_id))
        elif key not in fields:
            fields[key] = value
    if hwcaps is not None:
        flags = set(hwcaps)
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or ""
    part = fields.get("cpu part", "").lower() or None
    if part and not fields.get("model name"):
        core = ARM_PARTS.get(part)
        model = f"{model} {core}".strip() if core else (model or f"Arm part {part}")
    if "asimddp" in flags:
        flags.add("dotprod")
    if "asimd" in flags:
        flags.add("neon")
    return {
        "model": model or platform.processor() or platform.machine(),
        "flags": [f for f in INTERESTING_FLAGS if f in flags],
        "all_flags": flags,
        "arm_part": part,
        "arm_core": ARM_PARTS.get(part) if part else None,
        "physical_cores": len(physical) or None,
        "board": fields.get("model") if not fields.get("model name") else None,  # Raspberry Pi kernels set "Model"
    }


# AArch64 AT_HWCAP / AT_HWCAP2 bits (Linux arch/arm64/include/uapi/asm/hwcap.h) -> the /proc/cpuinfo name
_AT_HWCAP, _AT_HWCAP2 = 16, 26
ARM_HWCAP = {0: "fp", 1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve"}
ARM_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16"}
X86_MACHINES = ("x86_64", "AMD64", "amd64", "i686", "i386")
ARM64_MACHINES = ("aarch64", "arm64")


def parse_auxv(data: bytes) -> dict[int, int]:
    """The process's auxiliary vector (/proc/self/auxv: native-word (type, value) pairs) -> {type: value}."""
    word = struct.calcsize("L")
    usable = len(data) - len(data) % (2 * word)
    out: dict[int, int] = {}
    for key, value in struct.iter_unpack(f"{'L' * 2}", data[:usable]):
        if key == 0:  # AT_NULL ends the vector
            break
        out[key] = value
    return out


def arm_hwcap_flags(auxv: dict[int, int]) -> set[str]:
    """AArch64 hardware capabilities from the auxiliary vector, named as /proc/cpuinfo names them.

    The kernel (or qemu-user, for its ``-cpu`` model) puts there what this process may execute, and onnxruntime's
    kernels dispatch on it; /proc/cpuinfo can disagree (under qemu-user it is the host's, or a file)."""
    hwcap, hwcap2 = auxv.get(_AT_HWCAP, 0), auxv.get(_AT_HWCAP2, 0)
    return ({name for bit, name in ARM_HWCAP.items() if hwcap >> bit & 1}
            | {name for bit, name in ARM_HWCAP2.items() if hwcap2 >> bit & 1})


@dataclass(frozen=True)
class Int8Support:
    """What this CPU offers onnxruntime's int8 kernels: ``level`` fast (int8 dot-product instructions), basic
    (int8 works, smaller gains) or slow (the slowest SIMD paths); ``instructions`` the flags that decide it."""

    level: str
    instructions: tuple[str, ...]
    detail: str


def int8_support(flags: set[str] | list[str], machine: str) -> Int8Support | None:
    """Classify a CPU for int8 inference from its feature flags; None for an architecture this does not know."""
    flags = set(flags)
    if machine in X86_MACHINES:
        vnni = tuple(f for f in ("avx512_vnni", "avx_vnni") if f in flags)
        if vnni:
            return Int8Support("fast", vnni, "VNNI present (avx512_vnni/avx_vnni): onnxruntime has fast int8 kernels")
        if "avx2" in flags:
            return Int8Support("basic", ("avx2",), "AVX2 without VNNI: int8 works, gains are smaller; measure with "
                                                   "edgedl bench")
        return Int8Support("slow", (), "no AVX2: onnxruntime runs its slowest x86 kernels here")
    if machine in ARM64_MACHINES or "neon" in flags:
        dot = tuple(f for f in ("asimddp", "i8mm") if f in flags) or (("dotprod",) if "dotprod" in flags else ())
        if dot:
            return Int8Support("fast", dot, "dot-product instructions (asimddp): int8 models can run faster than fp32")
        return Int8Support("basic", (), "no dot-product instructions (asimddp; e.g. Cortex-A72 / Pi 4): int8 mostly "
                                        "saves size, not time; measure with edgedl bench")
    return None


# x86 int8 dot-product instructions: with them onnxruntime's u8s8 kernels accumulate in int32 (VPDPBUSD)
X86_VNNI = ("avx512_vnni", "avx_vnni")


def saturates_full_range_weights(flags: set[str] | list[str] | tuple[str, ...], machine: str) -> bool:
    """Whether onnxruntime's u8s8 int8 kernels can saturate here with full 8-bit weights: on x86 without VNNI they
    multiply with VPMADDUBSW, whose pairwise sums of u8 x s8 products are 16-bit and clip (255 x 127 x 2 > 32767);
    7-bit weights (reduce_range) keep them exact. VNNI and the Arm dot-product kernels accumulate in 32 bits."""
    return machine in X86_MACHINES and not set(X86_VNNI) & set(flags)


@dataclass(frozen=True)
class CpuReading:
    """The features of the CPU this process runs on, as onnxruntime's kernels see them."""

    machine: str
    model: str
    flags: tuple[str, ...]  # the INTERESTING_FLAGS present
    source: str  # where the flags were read

    @property
    def int8(self) -> Int8Support | None:
        return int8_support(set(self.flags), self.machine)

    @property
    def saturates_full_range_weights(self) -> bool:
        return saturates_full_range_weights(self.flags, self.machine)


def read_cpu(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo", auxv_path: str | os.PathLike = "/proc/self/auxv",
             machine: str | None = None) -> CpuReading:
    """This CPU's features: on AArch64 from the auxiliary vector (what this process may execute, and what
    onnxruntime dispatches on), elsewhere (or when it cannot be read) from /proc/cpuinfo."""
    machine = machine or platform.machine()
    path = Path(cpuinfo_path)
    text = path.read_text(errors="replace") if path.is_file() else ""
    hwcaps, source = None, str(cpuinfo_path)
    if machine in ARM64_MACHINES:
        try:
            hwcaps = arm_hwcap_flags(parse_auxv(Path(auxv_path).read_bytes())) or None
        except OSError:
            hwcaps = None
        if hwcaps is not None:
            source = "the auxiliary vector (AT_HWCAP)"
    info = parse_cpuinfo(text, hwcaps)
    return CpuReading(machine, info["model"], tuple(info["flags"]), source)


@functools.lru_cache(maxsize=1)
def this_cpu() -> CpuReading:
    """``read_cpu()`` of the machine this process runs on, read once."""
    return read_cpu()


def cpu_info(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    path = Path(cpuinfo_path)
    text = path.read_text(errors="replace") if path.is_file() else ""
    info = parse_cpuinfo(text)
    info.pop("all_flags")
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info["logical_cores"] = os.cpu_count()
    info["usable_cores"] = usable
    board = Path("/proc/device-tree/model")
    if board.is_file():
        info["board"] = board.read_text(errors="replace").strip("\x00\n ")
    return info


def ort_flavours() -> list[dict[str, str]]:
    """Installed distributions that provide the onnxruntime package: [{'name', 'version'}]."""
    from importlib import metadata

    seen = {}
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if name in ORT_FLAVOURS and name not in seen:
            seen[name] = {"name": name, "version": dist.version}
    return sorted(seen.values(), key=lambda d: d["name"])


def onnxruntime_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception as exc:  # a broken or clashing install fails here: report, don't crash
        return {"version": None, "error": f"{type(exc).__name__}: {exc}", "flavours": ort_flavours()}
    flavours = ort_flavours()
    return {
        "version": ort.__version__,
        "flavour": next((f["name"] for f in flavours if f["version"] == ort.__version__), None)
        or (flavours[0]["name"] if flavours else None),
        "flavours": flavours,
        "build_providers": list(ort.get_available_providers()),
        "device": ort.get_device(),
        "path": str(Path(ort.__file__).parent),
    }


def environment() -> dict[str, Any]:
    """The environment block every report carries."""
    import numpy

    return {
        "cpu": cpu_info(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime_info(),
        # other work on the machine skews numbers; record how busy it was
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
