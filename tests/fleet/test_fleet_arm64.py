"""`edgedl fleet` on a mixed fleet of three real OpenSSH devices: two x86 loopback devices (tests/fleet/fleet_devices.py)
and the stand-in Raspberry Pi - an emulated arm64 Debian root filesystem running its own sshd (tests/deploy/
arm64_rootfs.py, restored from the cached tarball under build/arm64; built once with debootstrap, ~5-9 min). Each
inventory group gets its own bundle (x86-server, rpi5); the Pi's server runs under qemu and must answer the smoke
inference and tritonclient with what x86 onnxruntime computes.

The tests share the devices and run in order (each states what it expects to find); the Pi is deployed twice
(one install per release), the other rollouts only read it:
1. v1 to all three, --serial 1: every device updated, smoke outputs match, tritonclient on the Pi == x86 onnxruntime.
2. the same rollout again (one batch): nothing changes (outcomes, changed counts, releases, server pids).
3. a bad x86 release with the order pi, dev2, dev1, --serial 1 --max-fail 0 --keep 1: the Pi gets its v2, dev2
   crashes on start and is rolled back to v1 (ready, serving), the rollout stops, dev1 is left untouched.
4. `fleet status --json`: releases, model hashes, ready, aarch64 for the Pi.
5. --keep 1 left only the current release on the Pi. Its two releases are deployed in the order that a prune by
   release *name* instead of by age gets wrong (the older id sorts after the newer one).

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

from edgedl_testing import rehashed_bundle
from fleet_devices import Device, loopback_sshd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "deploy"))
import arm64_rootfs  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}
READY_TIMEOUT = "900"  # an emulated server start takes tens of seconds; be generous, a crash is detected at once

pytestmark = [
    pytest.mark.arm64_rootfs,
    *arm64_rootfs.marks("emulated arm64 fleet device: set EDGEDL_ARM64_ROOTFS=1 (slow)"),
    pytest.mark.skipif(loopback_sshd.available() is not None, reason=str(loopback_sshd.available())),
    pytest.mark.timeout(1800),
]


def edgedl(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgedl", *map(str, args)], capture_output=True, text=True,
                          timeout=1500, env={**os.environ, **CACHE_ENV})
    if check and proc.returncode != 0:
        raise AssertionError(f"edgedl {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def rollout(*args, check=True) -> tuple[dict, subprocess.CompletedProcess]:
    proc = edgedl("fleet", "deploy", *args, "--ready-timeout", READY_TIMEOUT, "--json", check=check)
    return json.loads(proc.stdout), proc


def by_host(result: dict) -> dict[str, dict]:
    return {r["host"]: r for r in result["hosts"]}


def infer(port: int, model: str, name: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return httpclient.InferenceServerClient(f"127.0.0.1:{port}").infer(model, [inp]).as_numpy("logits")


def write_fleet_inventory(path: Path, entries: list[Device]) -> Path:
    """INI inventory listing ``entries`` in this order (Ansible keeps it: groups in order of first appearance, hosts
    in order within a group), one [group] per device profile; the Pi's line is its ``line`` attribute."""
    groups: dict[str, list[str]] = {}
    for d in entries:
        groups.setdefault(d.group, []).append(d.extra["line"] if d.name == "pi" else d.inventory_line())
    path.write_text("".join(f"[{g}]\n" + "\n".join(lines) + "\n\n" for g, lines in groups.items()))
    return path


@pytest.fixture(scope="module")
def pi(tmp_path_factory) -> Device:
    """The emulated Pi: an arm64 rootfs with sshd on a loopback port, login root, deploy dir /root/edgedl (on this
    machine: ROOTFS/root/edgedl, which is ``remote_dir``)."""
    pi = arm64_rootfs.boot(tmp_path_factory.mktemp("pi"), ROOT / "build" / "arm64")
    try:
        serve_port = loopback_sshd.free_port()
        line = (f"pi ansible_host=127.0.0.1 ansible_port={pi.port} ansible_user=root "
                f"ansible_ssh_private_key_file={pi.identity} "
                f"ansible_ssh_common_args='-F /dev/null -o UserKnownHostsFile={pi.known_hosts}' "
                f"ansible_python_interpreter=/usr/bin/python3 ansible_ssh_transfer_method=piped "
                f"edgedl_python=/usr/bin/python3 edgedl_port={serve_port} edgedl_bind=127.0.0.1")
        yield Device(name="pi", sshd=None, remote_dir=pi.root / "root" / "edgedl", port=serve_port, group="rpi5",
                     extra={"line": line})
    finally:
        arm64_rootfs.shutdown(pi)


def _release(bundle: Path) -> str:
    from edgedl.runtime.manifest import sha256_file

    return "sha-" + sha256_file(bundle / "manifest.json")[:12]  # how `edgedl fleet` names a bundle's release


@pytest.fixture(scope="module")
def bundles(zoo, tmp_path_factory) -> dict[str, Path]:
    """x86 v1 (cnn + mlp), x86 "bad" (v1 with a start.sh that crashes, hashes consistent), and two rpi5 releases
    of the mlp (served as "mlp" and as "digits"); rpi5 v1 is the one whose release id sorts after the other's."""
    base = tmp_path_factory.mktemp("fleet-arm64-bundles")
    out = {"x86_v1": base / "x86_v1"}
    edgedl("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--target", "x86-server", "-o", out["x86_v1"], "--no-tarball")
    out["x86_bad"] = rehashed_bundle(out["x86_v1"], base / "x86_bad", "start.sh",
                                     "#!/bin/sh\necho 'simulated crash on start' >&2\nexit 3\n")
    a, b = base / "rpi5_mlp", base / "rpi5_digits"
    edgedl("package", zoo["mlp"].onnx, "--target", "rpi5", "-o", a, "--no-tarball")
    edgedl("package", zoo["mlp"].onnx, "--name", "digits", "--target", "rpi5", "-o", b, "--no-tarball")
    out["pi_v1"], out["pi_v2"] = (a, b) if _release(a) > _release(b) else (b, a)
    return out


@pytest.fixture(scope="module")
def releases(bundles) -> dict[str, str]:
    return {k: _release(b) for k, b in bundles.items()}


@pytest.fixture(scope="module")
def models(bundles) -> dict[str, dict[str, str]]:
    """{bundle key: {model name: sha256}} from each bundle's manifest."""
    return {k: {m["name"]: m["sha256"] for m in json.loads((b / "manifest.json").read_text())["models"]}
            for k, b in bundles.items()}


@pytest.fixture(scope="module")
def fleet(devices, pi) -> list[Device]:
    return [devices[0], devices[1], pi]  # dev1, dev2 (x86-server), pi (rpi5)


@pytest.fixture(scope="module")
def inventory(fleet, tmp_path_factory) -> Path:
    return write_fleet_inventory(tmp_path_factory.mktemp("inv") / "inventory.ini", fleet)


@pytest.fixture(scope="module")
def state() -> dict:
    """What one test leaves for the next (pids after the first rollout)."""
    return {}


def test_rollout_to_two_x86_devices_and_the_emulated_pi(fleet, inventory, bundles, releases, models, zoo, state):
    from edgedl.runtime import load

    dev1, dev2, pi = fleet
    result, _ = rollout(bundles["x86_v1"], bundles["pi_v1"], "-i", inventory, "--serial", "1")
    rows = by_host(result)
    assert [r["host"] for r in result["hosts"]] == ["dev1", "dev2", "pi"] and not result["stopped"]
    assert [rows[h]["outcome"] for h in ("dev1", "dev2", "pi")] == ["updated"] * 3, result
    assert [rows[h]["profile"] for h in ("dev1", "dev2", "pi")] == ["x86-server", "x86-server", "rpi5"]
    assert rows["pi"]["device"]["arch"] == "aarch64" and rows["dev1"]["device"]["arch"] == "x86_64"
    assert rows["pi"]["device"]["systemd"] == "no" and rows["pi"]["device"]["python"] == "3.11"
    for d, key in ((dev1, "x86_v1"), (dev2, "x86_v1"), (pi, "pi_v1")):
        assert d.current() == releases[key] and d.pid() is not None  # a supervised process (no systemd there)
        assert (d.remote_dir / "run" / "service").read_text().strip() == "process"
        smoke = rows[d.name]["smoke"]
        assert smoke["ready"] and sorted(smoke["models"]) == sorted(models[key]) and smoke["max_abs_diff"] <= 1e-4
        assert rows[d.name]["pruned"] == []  # default --keep 5: nothing to prune yet

    # tritonclient from the host against the Pi's server (run by emulated arm64 onnxruntime) == x86 onnxruntime
    (pi_model,) = models["pi_v1"]
    x = np.random.default_rng(5).random((8, 64), dtype=np.float32)
    want = load(zoo["mlp"].onnx).run({"pixels": x})["logits"]
    np.testing.assert_allclose(infer(pi.port, pi_model, "pixels", x), want, rtol=0, atol=1e-5)
    img = np.random.default_rng(6).random((2, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(infer(dev2.port, "cnn", "image", img), load(zoo["cnn"].onnx).run({"image": img})["logits"],
                               rtol=0, atol=1e-5)
    state["pids"] = {d.name: d.pid() for d in fleet}


def test_the_same_rollout_again_changes_nothing(fleet, inventory, bundles, releases, state):
    before = {d.name: (d.current(), d.pid(), sorted(os.listdir(d.remote_dir / "releases"))) for d in fleet}
    assert {n: pid for n, (_, pid, _) in before.items()} == state["pids"]
    # the same bundles and inventory; one batch of all three (batching cannot change an outcome: this runs the
    # three health gates at once instead of one after another)
    result, _ = rollout(bundles["x86_v1"], bundles["pi_v1"], "-i", inventory, "--serial", "100%")
    assert [(r["host"], r["outcome"], r["changed"]) for r in result["hosts"]] == [
        ("dev1", "unchanged", 0), ("dev2", "unchanged", 0), ("pi", "unchanged", 0)]
    assert by_host(result)["pi"]["smoke"]["max_abs_diff"] <= 1e-4  # still health-gated, still right
    assert {d.name: (d.current(), d.pid(), sorted(os.listdir(d.remote_dir / "releases"))) for d in fleet} == before


def test_a_failing_device_is_rolled_back_and_stops_the_rollout(fleet, bundles, releases, models, zoo, state, tmp_path):
    """Order pi, dev2, dev1 (--serial 1 --max-fail 0 --keep 1): the Pi goes to its v2; dev2 gets the bad x86 release,
    whose server crashes on start, and is rolled back to v1; the rollout stops before dev1's batch."""
    from edgedl.runtime import load

    dev1, dev2, pi = fleet
    inv = write_fleet_inventory(tmp_path / "inv.ini", [pi, dev2, dev1])
    result, proc = rollout(bundles["x86_bad"], bundles["pi_v2"], "-i", inv, "--serial", "1", "--max-fail", "0",
                           "--keep", "1", check=False)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: 1 device(s) failed (dev2)") and "stopped before the next batch" in err
    assert [r["host"] for r in result["hosts"]] == ["pi", "dev2", "dev1"] and result["stopped"]
    rows = by_host(result)

    assert rows["pi"]["outcome"] == "updated" and rows["pi"]["previous"] == releases["pi_v1"]
    assert pi.current() == releases["pi_v2"] and pi.pid() != state["pids"]["pi"]
    assert rows["pi"]["smoke"]["max_abs_diff"] <= 1e-4
    assert not (pi.remote_dir / "staging").exists()  # the prune step ran there (it also clears staging/)
    (pi_model,) = models["pi_v2"]
    x = np.random.default_rng(7).random((3, 64), dtype=np.float32)
    np.testing.assert_allclose(infer(pi.port, pi_model, "pixels", x), load(zoo["mlp"].onnx).run({"pixels": x})["logits"],
                               rtol=0, atol=1e-5)

    r2 = rows["dev2"]
    assert r2["outcome"] == "rolled-back" and r2["release"] == releases["x86_bad"] and r2["previous"] == releases["x86_v1"]
    assert r2["rollback_ready"] is True and "simulated crash on start" in r2["error"]
    assert dev2.current() == releases["x86_v1"] and dev2.pid() is not None
    assert (dev2.remote_dir / "releases" / releases["x86_bad"] / ".failed").is_file()
    assert r2["pruned"] == []  # a failed device is not pruned: its releases stay for inspection
    img = np.random.default_rng(8).random((2, 1, 8, 8), dtype=np.float32)  # v1 serves again
    np.testing.assert_allclose(infer(dev2.port, "cnn", "image", img), load(zoo["cnn"].onnx).run({"image": img})["logits"],
                               rtol=0, atol=1e-5)

    assert rows["dev1"]["outcome"] == "not-started"
    assert dev1.current() == releases["x86_v1"] and dev1.pid() == state["pids"]["dev1"]
    assert sorted(os.listdir(dev1.remote_dir / "releases")) == [releases["x86_v1"]]
    state["pi_row"] = rows["pi"]


def test_fleet_status_shows_each_device(fleet, inventory, releases, models):
    proc = edgedl("fleet", "status", "-i", inventory, "--json")
    rows = {r["host"]: r for r in json.loads(proc.stdout)["hosts"]}
    assert list(rows) == ["dev1", "dev2", "pi"]
    expect = {"dev1": ("x86_v1", "x86_64"), "dev2": ("x86_v1", "x86_64"), "pi": ("pi_v2", "aarch64")}
    for host, (key, arch) in expect.items():
        r = rows[host]
        assert r["reachable"] and r["ready"] and r["current"] == releases[key], r
        assert r["arch"] == arch and r["models"] == models[key] and r["uptime_s"] >= 0


def test_keep_1_leaves_only_the_current_release_on_the_pi(fleet, releases, state):
    pi = fleet[2]
    # the release deployed first has the id that sorts higher: pruning by name (a bug once) would keep it
    assert releases["pi_v1"] > releases["pi_v2"]
    assert sorted(os.listdir(pi.remote_dir / "releases")) == [releases["pi_v2"]]
    assert state["pi_row"]["pruned"] == [releases["pi_v1"]]
