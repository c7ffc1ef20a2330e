"""End to end on a stand-in Raspberry Pi: ``edgedl deploy`` of an rpi4 bundle over SSH into an emulated arm64
Debian root filesystem running its own sshd (qemu-user-static via binfmt_misc), which installs the wheelhouse
offline into a venv *on the arm64 system*, starts ``edgedl serve`` there and waits for ready; the host then infers
with tritonclient and compares with x86 onnxruntime.

Slow: building the root filesystem takes ~5 min once (cached as a tarball under build/arm64), and the emulated
pip install + server start take a few minutes more. It runs only with EDGEDL_ARM64_ROOTFS=1:

    EDGEDL_ARM64_ROOTFS=1 .venv/bin/python -m pytest tests/test_arm64_rootfs.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import ROOT, run_edgedl

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import arm64_rootfs  # noqa: E402
from loopback_sshd import free_port  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}
pytestmark = arm64_rootfs.marks()


@pytest.fixture(scope="module")
def pi(tmp_path_factory):
    with arm64_rootfs.booted(tmp_path_factory.mktemp("pi"), ROOT / "build" / "arm64") as pi:
        yield {"port": pi.port, "identity": pi.identity, "known_hosts": pi.known_hosts, "root": pi.root}


def test_deploy_to_emulated_pi_and_infer_from_the_host(pi, zoo, tmp_path):
    import tritonclient.http as httpclient

    from edgedl.recipe import load_recipe
    from edgedl.runtime import load

    bundle = tmp_path / "digits-rpi4"
    run_edgedl("package", zoo["cnn"].onnx, "--target", "rpi4", "-o", bundle, "--no-tarball", env=CACHE_ENV)
    serve_port = free_port()
    conn = ["--host", "root@127.0.0.1", "--port", str(pi["port"]), "--identity", pi["identity"],
            "--known-hosts", pi["known_hosts"], "--ssh-config", "/dev/null"]
    proc = run_edgedl("deploy", bundle, *conn, "--serve-host", "127.0.0.1", "--serve-port", str(serve_port),
                      "--ready-timeout", "300", "--json", timeout=1800)
    result = json.loads(proc.stdout)
    assert result["device"]["arch"] == "aarch64" and result["device"]["python"] == "3.11"
    print("deploy phases on the emulated Pi:", result["timings_s"])
    # the venv on the "Pi" holds the aarch64 onnxruntime
    so = next((pi["root"] / "root/edgedl/releases" / result["release"] / "venv/lib/python3.11/site-packages/onnxruntime/capi")
              .glob("onnxruntime_pybind11_state*.so"))
    assert so.read_bytes()[18:20] == b"\xb7\x00"  # EM_AARCH64

    client = httpclient.InferenceServerClient(f"127.0.0.1:{serve_port}", network_timeout=120)
    images = load_recipe(zoo["cnn"].recipe).split("test").inputs["image"][:8]
    inp = httpclient.InferInput("image", list(images.shape), "FP32")
    inp.set_data_from_numpy(images)
    remote = client.infer("cnn", [inp]).as_numpy("logits")
    local = load(zoo["cnn"].onnx).run({"image": images})["logits"]
    np.testing.assert_allclose(remote, local, rtol=1e-5, atol=1e-5)

    status = json.loads(run_edgedl("deploy", "status", *conn, "--json", timeout=600).stdout)
    assert status["current"] == result["release"] and status["ready"]
