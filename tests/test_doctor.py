"""`edgedl doctor` on this machine, without onnx/torch, with two onnxruntime flavours installed, and the
known-bad table on a Raspberry Pi 4's CPU description."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort

from edgedl_testing import EDGEDL, run_edgedl
from edgedl.runtime import Runner
from edgedl.stages.machine import parse_cpuinfo
from edgedl.stages.doctor import (cpu_checks, known_bad, tiny_expected, tiny_model_bytes, tiny_model_with_onnx,
                                  TINY_X)
from test_bench_units import ORIN_FEATURES, PI4_CPUINFO


def _checks(report: dict, section: str) -> dict:
    return {c["name"]: c for c in report["sections"][section]}


def test_doctor_on_this_machine():
    proc = run_edgedl("doctor", "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["failures"] == 0
    providers = _checks(report, "providers")
    assert providers["cpu"]["status"] == "ok"
    assert providers["cpu"]["data"]["placement"] == {"cpu": 3} and providers["cpu"]["data"]["max_abs_error"] < 1e-6
    # every provider of the build is listed with a verdict, not just the CPU
    for name in ort.get_available_providers():
        short = {"CPUExecutionProvider": "cpu", "AzureExecutionProvider": "azure"}.get(name, name)
        assert short in providers
    ort_checks = _checks(report, "onnxruntime")
    assert ort_checks["flavours"]["data"]["flavours"] == [{"name": "onnxruntime", "version": ort.__version__}]
    assert ort_checks["version"]["data"]["version"] == ort.__version__
    assert _checks(report, "export side")["torch"]["status"] == "ok"
    threads = _checks(report, "threads")["threads"]["data"]
    assert threads["usable_cores"] == len(os.sched_getaffinity(0))
    assert 1 <= threads["recommended_intra_op_threads"] <= threads["usable_cores"]
    human = run_edgedl("doctor").stdout
    assert "providers" in human and "proven" in human and "no problems" in human


def test_tiny_model_bytes_are_what_onnx_builds():
    assert tiny_model_with_onnx() == tiny_model_bytes()
    y = Runner(tiny_model_bytes()).run({"x": TINY_X})["y"]
    assert np.allclose(y, tiny_expected(), atol=1e-6) and (y == 0).any() and (y > 0).any()  # relu really clips


def test_doctor_works_without_onnx_and_torch():
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['torch'] = None; "
            "from edgedl.cli import main; sys.argv = ['edgedl', 'doctor', '--json']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "built-in bytes" in _checks(report, "providers")["build"]["detail"]
    assert _checks(report, "providers")["cpu"]["status"] == "ok"


def test_two_onnxruntime_flavours_are_reported_as_a_clash(tmp_path):
    # a real (empty) second distribution on sys.path, as `pip install onnxruntime-gpu` would leave one
    dist = tmp_path / "onnxruntime_gpu-1.31.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([*EDGEDL, "doctor", "--json", "--no-prove"], capture_output=True, text=True, env=env,
                          timeout=120)
    flavours = _checks(json.loads(proc.stdout), "onnxruntime")["flavours"]
    assert flavours["status"] == "warn" and "clash" in flavours["detail"]
    assert {"name": "onnxruntime-gpu", "version": "1.31.1"} in flavours["data"]["flavours"]
    assert "pip uninstall onnxruntime onnxruntime-gpu" in flavours["detail"]


def test_known_bad_versions_match_the_platform():
    pi4 = parse_cpuinfo(PI4_CPUINFO)
    [bad] = known_bad({"onnxruntime": "1.21.0"}, pi4, "aarch64")
    assert bad.status == "fail" and "Illegal instruction" in bad.detail and "onnxruntime>=1.22" in bad.detail
    assert known_bad({"onnxruntime": "1.22.0"}, pi4, "aarch64") == []
    orin = parse_cpuinfo(f"Features\t: {ORIN_FEATURES}\nCPU part\t: 0xd42\n")
    assert known_bad({"onnxruntime": "1.21.0"}, orin, "aarch64") == []  # only the A72 crashed
    [old] = known_bad({"onnxruntime": "1.16.3"}, orin, "aarch64")
    assert "glibc 2.28" in old.detail


def test_cpu_feature_advice():
    pi = {c.name: c for c in cpu_checks({**parse_cpuinfo(PI4_CPUINFO), "board": None}, "aarch64")}
    assert pi["int8"].status == "info" and "no dot-product" in pi["int8"].detail
    orin = {c.name: c for c in cpu_checks(parse_cpuinfo(f"Features\t: {ORIN_FEATURES}\n"), "aarch64")}
    assert orin["int8"].status == "ok" and "asimddp" in orin["int8"].detail
    armv7 = {c.name: c for c in cpu_checks({"model": "ARMv7", "flags": []}, "armv7l")}
    assert armv7["platform"].status == "fail" and "64-bit" in armv7["platform"].detail


def test_accelerator_hints():
    from edgedl.stages.doctor import accelerator_hints, detect_accelerators

    cpu_only = ["CPUExecutionProvider"]
    [jetson] = accelerator_hints({"jetson": True, "nvidia_gpu": True}, cpu_only)
    assert jetson.status == "warn" and "JetPack" in jetson.detail
    [gpu] = accelerator_hints({"jetson": False, "nvidia_gpu": True}, cpu_only)
    assert "onnxruntime-gpu" in gpu.detail
    assert accelerator_hints({"jetson": False, "nvidia_gpu": True}, ["CUDAExecutionProvider", *cpu_only]) == []
    assert accelerator_hints({"jetson": False, "nvidia_gpu": False}, cpu_only) == []
    assert set(detect_accelerators()) == {"nvidia_gpu", "jetson"}
