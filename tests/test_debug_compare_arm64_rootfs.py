"""`edgedl debug compare` between x86 onnxruntime here and the emulated Raspberry Pi over SSH (a Debian arm64
root filesystem with its own sshd under qemu-user, tests/deploy/arm64_rootfs.py): the device gets the runtime
as `bench --remote` installs it, runs the capture worker, and its aarch64 tensors come back. Slow (the root
filesystem and the emulated pip install take minutes): only with EDGEDL_ARM64_ROOTFS=1, as the other rootfs tests.

    EDGEDL_ARM64_ROOTFS=1 .venv/bin/python -m pytest tests/test_debug_compare_arm64_rootfs.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgedl_testing import ROOT, run_edgedl_inprocess

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import arm64_rootfs  # noqa: E402

pytestmark = arm64_rootfs.marks()


@pytest.fixture(scope="module")
def pi(tmp_path_factory):
    with arm64_rootfs.booted(tmp_path_factory.mktemp("pi"), ROOT / "build" / "arm64") as pi:
        yield pi


def test_x86_against_the_emulated_pi_over_ssh(pi, zoo, monkeypatch):
    monkeypatch.setenv("EDGEDL_CACHE", str(ROOT / "build" / "cache"))
    result = run_edgedl_inprocess("debug", "compare", zoo["cnn"].onnx, zoo["cnn"].onnx, *pi.ssh_args(), "--samples", "8",
                                  "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    env = report["candidate"]["environment"]
    assert env["machine"] == "aarch64" and env["device"] == pi.address
    assert report["first_divergence"] is None and report["compared"] >= 5
    # different kernels, same model: float rounding only
    assert all(x["sqnr_db"] == "inf" or x["sqnr_db"] > 80 for x in report["layers"])
