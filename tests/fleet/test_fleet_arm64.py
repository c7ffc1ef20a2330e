"""`edgedl fleet deploy` to a mixed fleet: an x86 loopback device and the stand-in Raspberry Pi - an emulated arm64
Debian root filesystem running its own sshd (tests/deploy/arm64_rootfs.py, restored from the cached tarball under
build/arm64; built once with debootstrap, ~5-9 min). Each inventory group gets its own bundle; the Pi's server runs
under qemu and must answer the smoke inference and tritonclient with what x86 onnxruntime computes.

Slow (emulated pip install and server start): run with
    EDGEDL_ARM64_ROOTFS=1 .venv/bin/python -m pytest -m arm64_rootfs tests/fleet/test_fleet_arm64.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleet_devices import loopback_sshd, write_inventory

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "deploy"))
import arm64_rootfs  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}

pytestmark = [
    pytest.mark.arm64_rootfs,
    pytest.mark.skipif(os.environ.get("EDGEDL_ARM64_ROOTFS") != "1",
                       reason="emulated arm64 fleet device: set EDGEDL_ARM64_ROOTFS=1 (slow)"),
    pytest.mark.skipif(arm64_rootfs.available() is not None, reason=str(arm64_rootfs.available())),
    pytest.mark.skipif(loopback_sshd.available() is not None, reason=str(loopback_sshd.available())),
    pytest.mark.timeout(1800),
]


def edgedl(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgedl", *map(str, args)], capture_output=True, text=True,
                          timeout=1500, env={**os.environ, **CACHE_ENV})
    if check and proc.returncode != 0:
        raise AssertionError(f"edgedl {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def pi(tmp_path):
    enabled = arm64_rootfs.ensure_binfmt()
    tarball = arm64_rootfs.rootfs_tarball(ROOT / "build" / "arm64")
    keys = tmp_path / "pi-keys"
    keys.mkdir()
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True)
    port = loopback_sshd.free_port()
    running = arm64_rootfs.start(tarball, tmp_path / "rootfs", port, (keys / "user.pub").read_text(), keys / "host")
    kt, kb = (keys / "host.pub").read_text().split()[:2]
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {kt} {kb}\n")
    serve_port = loopback_sshd.free_port()
    line = (f"pi ansible_host=127.0.0.1 ansible_port={port} ansible_user=root ansible_ssh_private_key_file={keys / 'user'} "
            f"ansible_ssh_common_args='-F /dev/null -o UserKnownHostsFile={keys / 'known_hosts'}' "
            f"ansible_python_interpreter=/usr/bin/python3 ansible_ssh_transfer_method=piped "
            f"edgedl_python=/usr/bin/python3 edgedl_port={serve_port} edgedl_bind=127.0.0.1")
    try:
        yield {"line": line, "port": serve_port, "root": running.root}
    finally:
        arm64_rootfs.stop(running)
        if enabled:
            subprocess.run(["update-binfmts", "--disable", "qemu-aarch64"], check=False, capture_output=True)


def test_mixed_fleet_x86_and_emulated_pi(devices, pi, zoo, tmp_path):
    import tritonclient.http as httpclient

    from edgedl.runtime import load

    x86, arm = tmp_path / "x86", tmp_path / "rpi5"
    edgedl("package", zoo["mlp"].onnx, "--target", "x86-server", "-o", x86, "--no-tarball")
    edgedl("package", zoo["mlp"].onnx, "--target", "rpi5", "-o", arm, "--no-tarball")
    inv = write_inventory(tmp_path / "inv.ini", devices[:1], extra_lines=["[rpi5]", pi["line"]])
    proc = edgedl("fleet", "deploy", x86, arm, "-i", inv, "--serial", "100%", "--ready-timeout", "900", "--json")
    rows = {r["host"]: r for r in json.loads(proc.stdout)["hosts"]}
    assert rows["dev1"]["profile"] == "x86-server" and rows["pi"]["profile"] == "rpi5"
    assert rows["pi"]["outcome"] in ("updated", "unchanged") and rows["pi"]["device"]["arch"] == "aarch64"
    assert rows["pi"]["smoke"]["max_abs_diff"] <= 1e-4
    x = np.random.default_rng(5).random((8, 64), dtype=np.float32)
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    remote = httpclient.InferenceServerClient(f"127.0.0.1:{pi['port']}").infer("mlp", [inp]).as_numpy("logits")
    np.testing.assert_allclose(remote, load(zoo["mlp"].onnx).run({"pixels": x})["logits"], rtol=0, atol=1e-5)

    status = {r["host"]: r for r in json.loads(edgedl("fleet", "status", "-i", inv, "--json").stdout)["hosts"]}
    assert status["pi"]["arch"] == "aarch64" and status["pi"]["ready"] and status["pi"]["current"] == rows["pi"]["release"]
    assert status["dev1"]["arch"] == "x86_64" and status["dev1"]["ready"]
