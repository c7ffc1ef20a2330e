"""`edgedl optimize --target rpi5 --device root@...` on the stand-in Raspberry Pi (an emulated arm64 Debian root
filesystem with its own sshd, tests/deploy/arm64_rootfs.py): the aarch64 runtime is pushed and installed there and
every timing runs in a worker process under emulation. Emulation is ~250x slower than a Pi, so this proves the
path, not a speed. Slow (the root filesystem is built once, ~5-9 min; each emulated timing takes seconds): it
runs only with EDGEDL_ARM64_ROOTFS=1:

    EDGEDL_ARM64_ROOTFS=1 .venv/bin/python -m pytest tests/test_optimize_arm64.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgedl_testing import ROOT, run_edgedl

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import arm64_rootfs  # noqa: E402

pytestmark = arm64_rootfs.marks()


def test_optimize_on_the_emulated_pi(zoo, tmp_path):
    with arm64_rootfs.booted(tmp_path / "pi", ROOT / "build" / "arm64") as pi:
        space = [a for s in ["precision=fp32,dynamic", "weight_type=int8", "saved_optimized=false",
                             "graph_optimization=all", "execution_mode=sequential", "memory_arena=true",
                             "intra_op_threads=1"] for a in ("--space", s)]
        proc = run_edgedl("optimize", zoo["mlp"].onnx, "--target", "rpi5", *pi.ssh_args("--device"), "--budget", "20m",
                          "--rounds", "2", "--cache", tmp_path / "cache", *space, "-o", tmp_path / "out", "--json",
                          "--no-progress", timeout=3600,
                          env={"EDGEDL_CACHE": str(ROOT / "build" / "cache")})
        report = json.loads(proc.stdout)
        print("optimize on the emulated Pi:", report["chosen"]["label"], report["chosen"]["reason"],
              f"wall {report['wall_s']:.0f} s", report["work"])
        assert report["device"] == f"{pi.address} (profile rpi5)" and report["target"] == "rpi5"
        assert report["chosen"]["vs_fp32"] in ("faster", "tie", "fp32")
        assert {c["status"] for c in report["candidates"]} <= {"timed", "pruned"}
        fp32 = [m for m in report["finalists"] if m["vs_fp32"] == "fp32"]
        assert fp32 and fp32[0]["configuration"]["intra_op_threads"] == 4  # the profile's threads, on the device
        # the runtime that ran the timings is the aarch64 one, installed on the "Pi"
        so = next((pi.root / "root/edgedl-optimize").glob(
            "env-aarch64-*/venv/lib/python3.*/site-packages/onnxruntime/capi/onnxruntime_pybind11_state*.so"))
        assert so.read_bytes()[18:20] == (183).to_bytes(2, "little")  # ELF e_machine: EM_AARCH64
