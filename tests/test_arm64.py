"""The aarch64 runtime on an emulated arm64 system (qemu-user-static + a Debian arm64 sysroot, ../shared/ARM64.md):
a bundle packaged for rpi4 has its offline wheelhouse installed into an arm64 Python, the real ``edgedl serve`` is
started inside emulation from it, and the host queries it with tritonclient. The outputs must match x86
onnxruntime. Emulation is ~250x slower than a Pi: this proves correctness and the install path, not speed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import ROOT, run_edgedl

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import arm64_sysroot  # noqa: E402
from loopback_sshd import free_port  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}
pytestmark = pytest.mark.skipif(arm64_sysroot.available() is not None, reason=str(arm64_sysroot.available()))


@pytest.fixture(scope="module")
def sysroot() -> Path:
    return arm64_sysroot.sysroot(ROOT / "build" / "arm64")


@pytest.fixture(scope="module")
def rpi4_bundle(zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arm") / "digits-rpi4"
    run_edgedl("package", zoo["cnn"].onnx, zoo["lstm"].onnx, zoo["transformer"].onnx, "--target", "rpi4", "-o", out,
               "--no-tarball", env=CACHE_ENV)
    return out


def install_wheelhouse(bundle: Path, site: Path) -> None:
    """What the device does, offline: pip resolves requirements.txt from the bundle's wheels/ only."""
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    platforms = [a for p in manifest["platforms"] for a in ("--platform", p)]
    tag = "cp" + manifest["python"].replace(".", "")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--find-links", str(bundle / "wheels"), "--target", str(site), *platforms,
                    "--python-version", manifest["python"], "--implementation", "cp", "--abi", tag, "--abi", "abi3",
                    "--abi", "none", "--only-binary=:all:", "-r", str(bundle / "requirements.txt")], check=True)


def test_arm64_server_from_the_bundle_matches_x86(sysroot, rpi4_bundle, zoo, tmp_path):
    import tritonclient.http as httpclient

    from edgedl.recipe import load_recipe
    from edgedl.runtime import load

    site = tmp_path / "site"
    install_wheelhouse(rpi4_bundle, site)
    so = next((site / "onnxruntime" / "capi").glob("onnxruntime_pybind11_state*.so"))
    assert b"\xb7\x00" == so.read_bytes()[18:20]  # ELF e_machine 183 = EM_AARCH64: the wheelhouse really is arm64

    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([*arm64_sysroot.python_cmd(sysroot), "-m", "edgedl", "serve", "--model-repository",
                               str(rpi4_bundle / "models"), "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        deadline = time.time() + 150
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"arm64 server not ready: {(tmp_path / 'serve.log').read_text()[-2000:]}")
        meta = client.get_server_metadata()
        assert meta["name"] == "edgedl"
        worst = {}
        for name in ("cnn", "lstm", "transformer"):
            recipe = load_recipe(zoo[name].recipe)
            feeds = {k: v[:8] for k, v in recipe.split("test").inputs.items()}
            inputs = []
            for key, value in feeds.items():
                inp = httpclient.InferInput(key, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64")
                inp.set_data_from_numpy(value)
                inputs.append(inp)
            remote = client.infer(name, inputs).as_numpy("logits")
            local = load(zoo[name].onnx).run(feeds)["logits"]
            worst[name] = float(np.max(np.abs(remote - local)))
            # different CPUs may pick different kernels (NEON vs AVX): equal within fp32 rounding, same predictions
            np.testing.assert_allclose(remote, local, rtol=1e-5, atol=1e-5)
            assert (remote.argmax(1) == local.argmax(1)).all()
        print("max |arm64 - x86|:", worst)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    # the server inside emulation logged its own readiness (it is the process we started, not another server)
    assert "ready" in (tmp_path / "serve.log").read_text()
