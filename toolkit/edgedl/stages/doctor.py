"""``edgedl doctor``: what a user runs first on a new device.

Python, OS, CPU and its features; installed onnxruntime flavours (and whether two clash); every available
execution provider proven by a real inference on a tiny built-in model; the export side (torch, onnx); thread
recommendations; known-bad versions for this platform. Needs only numpy and onnxruntime (onnx optional).
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.stages.compare import compare_arrays
from edgedl.stages.machine import X86_MACHINES, cpu_info, int8_support, ort_flavours

# y = relu(x @ W + B), x: float32[2, 4] - built with onnx.helper when onnx is installed (tiny_model_with_onnx),
# otherwise these exact bytes (a test proves the two are identical), so doctor works on a device without onnx.
TINY_MODEL_B64 = (
    "CAcSDWVkZ2VkbC1kb2N0b3I60QEKGQoBeAoBVxIBaBoGbWF0bXVsIgZNYXRNdWwKEwoBaAoBQhIBehoDYWRkIgNBZGQKEgoBehIBeRoEcmVs"
    "dSIEUmVsdRINZWRnZWRsX2RvY3Rvcio7CAQIAxABQgFXSjAAALC/AACQvwAAYL8AACC/AADAvgAAAL4AAAA+AADAPgAAID8AAGA/AACQPwAA"
    "sD8qFQgDEAFCAUJKDAAAAD8AAIC/AACAPloTCgF4Eg4KDAgBEggKAggCCgIIBGITCgF5Eg4KDAgBEggKAggCCgIIA0IECgAQDQ=="
)
TINY_W = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.5) / 4
TINY_B = np.array([0.5, -1.0, 0.25], dtype=np.float32)
TINY_X = np.array([[1.0, -2.0, 0.5, 3.0], [-2.0, 1.0, 0.5, -1.0]], dtype=np.float32)  # row 2 hits the relu

# package, versions, platform test (cpu info dict, machine) -> bool, what goes wrong, what to do
KNOWN_BAD: list[dict[str, Any]] = [
    {
        "package": "onnxruntime", "versions": ("1.21.0",),
        "applies": lambda cpu, machine: cpu.get("arm_core") == "Cortex-A72" or "Raspberry Pi 4" in (cpu.get("board") or ""),
        "problem": "crashes with 'Illegal instruction' on Raspberry Pi 4 / Cortex-A72",
        "fix": "pip install 'onnxruntime>=1.22'",
    },
    {
        "package": "onnxruntime", "versions": ("1.16.3",),
        "applies": lambda cpu, machine: machine in ("aarch64", "arm64"),
        "problem": "the last manylinux2014 aarch64 wheel: pip picked it because newer wheels need glibc 2.28",
        "fix": "use an OS with glibc >= 2.28 (e.g. Raspberry Pi OS bookworm) and pip install 'onnxruntime>=1.22'",
    },
]
# providers that run no local kernels: listed, never "proven"
NOT_COMPUTE = {"AzureExecutionProvider": "calls remote Azure endpoints; it has no local kernels to prove"}
MIN_ORT = (1, 22)  # what edgedl's runtime is tested with
EXPORT_SIDE = ("torch", "onnx", "onnxscript", "onnxslim", "safetensors")


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | info
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    sections: dict[str, list[Check]]

    @property
    def failures(self) -> list[Check]:
        return [c for checks in self.sections.values() for c in checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for checks in self.sections.values() for c in checks if c.status == "warn"]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.failures,
            "failures": len(self.failures),
            "warnings": len(self.warnings),
            "sections": {s: [{"name": c.name, "status": c.status, "detail": c.detail, **({"data": c.data} if c.data else {})}
                             for c in checks] for s, checks in self.sections.items()},
        }


def tiny_model_bytes() -> bytes:
    return base64.b64decode(TINY_MODEL_B64)


def tiny_model_with_onnx() -> bytes:
    """The same tiny model, built with onnx.helper (used when onnx is installed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
         helper.make_node("Add", ["h", "B"], ["z"], name="add"),
         helper.make_node("Relu", ["z"], ["y"], name="relu")],
        "edgedl_doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(TINY_W, "W"), numpy_helper.from_array(TINY_B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgedl-doctor",
                              ir_version=7)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_model() -> tuple[bytes, str]:
    if importlib.util.find_spec("onnx") is not None:
        try:
            return tiny_model_with_onnx(), "built with onnx.helper"
        except Exception:  # a broken onnx install must not stop the doctor
            pass
    return tiny_model_bytes(), "built-in bytes"


def tiny_expected() -> np.ndarray:
    return np.maximum(TINY_X @ TINY_W + TINY_B, 0)


def prove_provider(provider: str, model: bytes) -> Check:
    """Run the tiny model on ``provider`` alone; ok only if its output is right and the provider ran its nodes."""
    from edgedl.runtime import Runner, RunnerConfig
    from edgedl.runtime.providers import short_name
    from edgedl.stages.profiling import foreign_nodes, profile_placement

    name = short_name(provider)
    if provider in NOT_COMPUTE:
        return Check(name, "info", NOT_COMPUTE[provider])
    config = dict(providers=(provider,), graph_optimization="disable")  # keep the 3 nodes to place
    try:
        with Runner(model, RunnerConfig(**config)) as runner:
            y = runner.run({"x": TINY_X})["y"]
        placement = profile_placement(lambda: Runner(model, RunnerConfig(**config, profile=True)),
                                      lambda r: r.run({"x": TINY_X}), runs=1)
    except EdgeDLError as exc:
        return Check(name, "fail", f"inference failed: {exc}")
    except Exception as exc:  # provider libraries fail in their own ways (missing CUDA libs, driver mismatch...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Check(name, "fail", f"inference failed: {type(exc).__name__}: {first}")
    err = compare_arrays("y", y, tiny_expected(), atol=1e-3, rtol=0).max_abs_diff
    data = {"provider": provider, "max_abs_error": err, "placement": placement["by_provider"]}
    if err > 1e-3:
        return Check(name, "fail", f"ran, but the output is wrong (max abs error {err:.3g})", data)
    foreign = foreign_nodes(placement, provider)
    if foreign or not placement["nodes"]:
        where = ", ".join(f"{n} on {p}" for p, n in foreign.items()) or "no node trace"
        return Check(name, "warn", f"in the build, but executed none/part of the model itself ({where}); "
                                   "numbers 'on' it would be another provider's", data)
    return Check(name, "ok", f"proven: {placement['nodes']} of {placement['nodes']} nodes ran on it, output correct (max error {err:.1g})", data)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ver_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def cpu_checks(cpu: dict[str, Any], machine: str) -> list[Check]:
    flags = set(cpu.get("flags", []))
    checks = [Check("cpu", "info", f"{cpu.get('model') or '?'}" + (f" ({cpu['board']})" if cpu.get("board") else "") +
                    f", {machine}", {"flags": sorted(flags), "arm_core": cpu.get("arm_core")})]
    int8 = int8_support(flags, machine)
    if int8 is not None:
        if machine not in X86_MACHINES and "neon" not in flags and "asimd" not in flags:
            checks.append(Check("simd", "warn", "no NEON/ASIMD flag reported"))
        checks.append(Check("simd", "warn", int8.detail) if int8.level == "slow" else
                      Check("int8", "ok" if int8.level == "fast" else "info", int8.detail))
    elif machine.startswith("armv7") or machine.startswith("armv6"):
        checks.append(Check("platform", "fail", f"{machine}: there are no onnxruntime wheels for 32-bit Arm; "
                                                "install a 64-bit OS (e.g. Raspberry Pi OS 64-bit)"))
    return checks


def thread_checks(cpu: dict[str, Any], load: list[float] | None) -> list[Check]:
    usable = cpu.get("usable_cores") or 1
    physical = min(cpu.get("physical_cores") or usable, usable)
    checks = [Check("threads", "info",
                    f"{usable} usable core(s), {physical} physical: for throughput use --threads {physical} "
                    f"(intra-op); for batch-1 latency of small models 1 thread is often best; measure with "
                    f"`edgedl bench MODEL --threads {','.join(str(t) for t in sorted({1, max(1, physical // 2), physical}))}`",
                    {"usable_cores": usable, "physical_cores": physical, "recommended_intra_op_threads": physical})]
    if usable < (cpu.get("logical_cores") or usable):
        checks.append(Check("affinity", "info", f"this process may use {usable} of {cpu['logical_cores']} cores "
                                                "(CPU affinity / container limit)"))
    if load and load[0] > usable:
        checks.append(Check("load", "warn", f"load average {load[0]:.1f} > {usable} cores: other work will skew "
                                            "benchmark numbers"))
    return checks


def onnxruntime_checks(cpu: dict[str, Any], machine: str) -> tuple[list[Check], Any]:
    checks = []
    flavours = ort_flavours()
    names = ", ".join(f"{f['name']} {f['version']}" for f in flavours) or "none"
    if len(flavours) > 1:
        checks.append(Check("flavours", "warn", f"{len(flavours)} onnxruntime flavours installed ({names}): they write "
                            "the same onnxruntime/ package and clash; keep one: pip uninstall "
                            + " ".join(f["name"] for f in flavours) + " then pip install the one you want",
                            {"flavours": flavours}))
    else:
        checks.append(Check("flavours", "ok" if flavours else "fail", f"installed: {names}", {"flavours": flavours}))
    try:
        import onnxruntime as ort
    except Exception as exc:
        checks.append(Check("import", "fail", f"import onnxruntime failed ({type(exc).__name__}: {exc}); "
                                              "pip install 'onnxruntime>=1.22'"))
        return checks, None
    version = ort.__version__
    checks.append(Check("version", "ok", f"onnxruntime {version} ({ort.get_device()}) from {ort.__file__.rsplit('/', 2)[0]}",
                        {"version": version}))
    if _ver_tuple(version)[:2] < MIN_ORT:
        checks.append(Check("minimum", "warn", f"edgedl is tested with onnxruntime >= {'.'.join(map(str, MIN_ORT))}; "
                                               f"this is {version}"))
    checks += known_bad({"onnxruntime": version}, cpu, machine)
    return checks, ort


def known_bad(installed: dict[str, str | None], cpu: dict[str, Any], machine: str) -> list[Check]:
    """Entries of KNOWN_BAD that match these package versions on this CPU/platform."""
    out = []
    for bad in KNOWN_BAD:
        version = installed.get(bad["package"])
        if version in bad["versions"] and bad["applies"](cpu, machine):
            out.append(Check("known-bad", "fail", f"{bad['package']} {version} {bad['problem']}; {bad['fix']}"))
    return out


def detect_accelerators() -> dict[str, bool]:
    """What hardware is present, independent of what onnxruntime was built for."""
    import shutil
    from pathlib import Path

    board = Path("/proc/device-tree/model")
    model = board.read_text(errors="replace") if board.is_file() else ""
    return {
        "nvidia_gpu": Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None,
        "jetson": Path("/etc/nv_tegra_release").exists() or "jetson" in model.lower(),
    }


def accelerator_hints(hardware: dict[str, bool], available: list[str]) -> list[Check]:
    """Hardware that the installed onnxruntime cannot use, and how to get a build that can."""
    out = []
    if hardware.get("jetson") and "CUDAExecutionProvider" not in available:
        out.append(Check("jetson", "warn", "a Jetson, but this onnxruntime has no CUDA provider; PyPI has no Jetson "
                                           "GPU wheel: install the onnxruntime-gpu wheel matching your JetPack from "
                                           "NVIDIA's Jetson index (and uninstall the CPU 'onnxruntime')"))
    elif hardware.get("nvidia_gpu") and "CUDAExecutionProvider" not in available:
        out.append(Check("nvidia", "warn", "an NVIDIA GPU is present, but this onnxruntime has no CUDA provider: "
                                           "pip uninstall onnxruntime && pip install onnxruntime-gpu (one flavour only)"))
    return out


def run_doctor(prove: bool = True) -> DoctorReport:
    cpu = cpu_info()
    machine = platform.machine()
    try:
        import os

        load = list(os.getloadavg())
    except (AttributeError, OSError):
        load = None
    sections: dict[str, list[Check]] = {}
    sections["system"] = [
        Check("python", "ok" if sys.version_info >= (3, 10) else "fail",
              f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"),
        Check("os", "info", platform.platform()),
        *cpu_checks(cpu, machine),
    ]
    ort_checks, ort = onnxruntime_checks(cpu, machine)
    sections["onnxruntime"] = ort_checks
    providers: list[Check] = []
    if ort is not None:
        model, how = tiny_model()
        available = ort.get_available_providers()
        providers.append(Check("build", "info", f"providers in this build: {', '.join(available)} "
                                                f"(proving each with a 3-node model, {how})"))
        for provider in available:
            providers.append(prove_provider(provider, model) if prove else Check(provider, "info", "not proven (--no-prove)"))
        providers += accelerator_hints(detect_accelerators(), available)
    sections["providers"] = providers
    export = []
    for dist in EXPORT_SIDE:
        v = _version(dist)
        export.append(Check(dist, "ok" if v else "info", v or "not installed (needed to export: pip install 'edgedl[export]')"))
    sections["export side"] = export
    sections["threads"] = thread_checks(cpu, load)
    return DoctorReport(sections)


# rich markup for each status in the terminal report
STATUS_MARK = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[bold red]✗[/]", "info": "[dim]·[/]"}
