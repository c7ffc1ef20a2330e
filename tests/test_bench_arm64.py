"""The device side of bench and doctor on an emulated Raspberry Pi 4 (aarch64 Python + onnxruntime wheels under
qemu-user, ../shared/ARM64.md): the worker runs with only numpy + onnxruntime + edgedl's source, and doctor
reads an Arm CPU. Emulation is for correctness only: no speed figure here means anything."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from edgedl_testing import ROOT

arm64 = pytest.importorskip("deploy.arm64_sysroot")

CACHE = ROOT / "build" / "bench-arm64"


@pytest.fixture(scope="module")
def device_python():
    reason = arm64.available()
    if reason:
        pytest.skip(reason)
    root = arm64.sysroot(ROOT / "build" / "arm64")
    site = arm64.runtime_site(CACHE)
    env = {**os.environ, "PYTHONPATH": f"{site}:{ROOT / 'toolkit'}", "PYTHONNOUSERSITE": "1"}

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*arm64.python_cmd(root), *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

    return run


def test_worker_measures_on_emulated_aarch64(device_python, zoo, tmp_path):
    config = {"model": str(zoo["cnn"].onnx), "iterations": 20, "duration_s": None, "warmup": 2, "batch": 2}
    proc = device_python("-m", "edgedl.stages.bench.worker", json.dumps(config))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    env = result["environment"]
    assert env["machine"] == "aarch64" and env["onnxruntime"]["version"] == "1.32.0"
    assert env["cpu"]["arm_core"] == "Cortex-A72" and "neon" in env["cpu"]["flags"]
    assert "dotprod" not in env["cpu"]["flags"]
    assert result["latency_ms"]["count"] == 20 and result["providers_used"] == ["cpu"]
    assert result["placement"]["nodes"] > 0 and result["peak_rss_mib"] > 0


def test_doctor_on_emulated_raspberry_pi_4(device_python):
    code = "import json; from edgedl.stages.doctor import run_doctor; print(json.dumps(run_doctor().to_json()))"
    proc = device_python("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    checks = {(s, c["name"]): c for s, cs in report["sections"].items() for c in cs}
    assert "Raspberry Pi 4" in checks[("system", "cpu")]["detail"]
    assert checks[("system", "cpu")]["data"]["arm_core"] == "Cortex-A72"
    assert "no dot-product" in checks[("system", "int8")]["detail"]
    assert checks[("providers", "cpu")]["status"] == "ok"  # proven by a real aarch64 inference
    assert "built-in bytes" in checks[("providers", "build")]["detail"]  # no onnx on the device
    assert report["failures"] == 0  # 1.32.0 is not a known-bad version on a Pi 4
