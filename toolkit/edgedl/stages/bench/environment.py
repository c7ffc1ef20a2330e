"""What machine a number was measured on: CPU model and flags, cores, onnxruntime version and flavour, OS, Python.

Standard library only (plus onnxruntime for its version), so the worker can report it from a device.
"""

from __future__ import annotations

import os
import platform
import sys
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


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """/proc/cpuinfo text -> {'model': ..., 'flags': [...interesting...], 'all_flags': set, 'arm_part': ...}."""
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
