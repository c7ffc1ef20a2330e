"""`edgedl fleet` against three real OpenSSH servers on loopback, driven through the real CLI and the real
ansible-playbook: a rolling rollout health-gated by a smoke inference, idempotent re-runs, --check, a device that
fails (its Python is missing) stopping the rollout or being tolerated by --max-fail, automatic rollback of a release
that does not start, a host refused for its architecture, and `fleet status` with an unreachable device.

The tests of this module share the devices and run in order (each states what it expects to find)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import rehashed_bundle
from fleet_devices import loopback_sshd, write_inventory

ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}
ANSIBLE = Path(sys.executable).parent / "ansible-playbook"

pytestmark = [
    pytest.mark.slow,  # ~3 min: seven real rollouts (venv installs on three devices)
    pytest.mark.skipif(loopback_sshd.available() is not None, reason=str(loopback_sshd.available())),
    pytest.mark.skipif(not ANSIBLE.is_file() and not shutil.which("ansible-playbook"),
                       reason="ansible-core is not installed (pip install 'edgedl[fleet]')"),
    pytest.mark.timeout(600),
]


def edgedl(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgedl", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **CACHE_ENV})
    if check and proc.returncode != 0:
        raise AssertionError(f"edgedl {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def rollout(*args, check=True) -> tuple[dict, subprocess.CompletedProcess]:
    proc = edgedl("fleet", "deploy", *args, "--json", check=check)
    return json.loads(proc.stdout), proc


def by_host(result: dict) -> dict[str, dict]:
    return {r["host"]: r for r in result["hosts"]}


@pytest.fixture(scope="module")
def bundles(zoo, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fleet-bundles")
    out = {"v1": base / "v1", "v2": base / "v2", "rpi5": base / "rpi5"}
    edgedl("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--target", "x86-server", "-o", out["v1"], "--no-tarball")
    edgedl("package", zoo["mlp"].onnx, "--name", "digits", "--target", "x86-server", "-o", out["v2"], "--no-tarball")
    edgedl("package", zoo["mlp"].onnx, "--target", "rpi5", "-o", out["rpi5"], "--no-tarball")
    # consistent hashes, but its server crashes on start (as a release with a bad dependency would)
    out["broken"] = rehashed_bundle(out["v2"], base / "broken", "start.sh", "#!/bin/sh\necho 'simulated crash on start' >&2\nexit 3\n")
    # consistent hashes, but the model is not ONNX: refused on the controller before any device is touched
    out["junk_model"] = rehashed_bundle(out["v2"], base / "junk_model", "models/digits/1/model.onnx", "not an onnx model")
    return out


@pytest.fixture(scope="module")
def inventory(devices, tmp_path_factory) -> Path:
    return write_inventory(tmp_path_factory.mktemp("inv") / "inventory.ini", devices)


@pytest.fixture(scope="module")
def releases(bundles) -> dict[str, str]:
    from edgedl.runtime.manifest import sha256_file

    return {k: "sha-" + sha256_file(b / "manifest.json")[:12] for k, b in bundles.items()}


def infer(port: int, model: str, name: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("logits")


def test_rolling_rollout_then_rerun_changes_nothing(devices, inventory, bundles, releases, zoo):
    from edgedl.runtime import load

    result, _ = rollout(bundles["v1"], "-i", inventory, "--serial", "2")
    rows = by_host(result)
    assert [rows[d.name]["outcome"] for d in devices] == ["updated"] * 3
    assert result["bundles"]["x86-server"]["reference_source"].startswith("bundle: computed at package time")
    x = np.random.default_rng(3).random((4, 1, 8, 8), dtype=np.float32)
    want = load(zoo["cnn"].onnx).run({"image": x})["logits"]
    for d in devices:
        assert d.current() == releases["v1"]
        assert rows[d.name]["smoke"]["models"] == ["cnn", "mlp"] and rows[d.name]["smoke"]["max_abs_diff"] <= 1e-4
        np.testing.assert_allclose(infer(d.port, "cnn", "image", x), want, rtol=0, atol=1e-5)
    pids = [d.pid() for d in devices]

    again, _ = rollout(bundles["v1"], "-i", inventory, "--serial", "100%")
    assert [(r["outcome"], r["changed"]) for r in again["hosts"]] == [("unchanged", 0)] * 3
    assert [d.pid() for d in devices] == pids  # not even restarted


def test_check_mode_changes_nothing(devices, inventory, bundles, releases):
    before = [(d.current(), d.pid(), sorted(os.listdir(d.remote_dir / "releases"))) for d in devices]
    result, _ = rollout(bundles["v2"], "-i", inventory, "--check")
    assert result["check"] and [r["outcome"] for r in result["hosts"]] == ["would-update"] * 3
    assert [(d.current(), d.pid(), sorted(os.listdir(d.remote_dir / "releases"))) for d in devices] == before
    assert not any((d.remote_dir / "staging").exists() and os.listdir(d.remote_dir / "staging") for d in devices)


def test_failed_device_stops_the_rollout_before_the_next_batch(devices, bundles, releases, tmp_path):
    """dev2's Python is missing: it fails its checks (nothing touched there), and with --max-fail 0 dev3 is left
    alone on v1 while dev1, in the batch before, is already on v2."""
    broken_python = write_inventory(tmp_path / "inv.ini", devices, {"dev2": {"edgedl_python": "/nonexistent/python3"}})
    pid3 = devices[2].pid()
    result, proc = rollout(bundles["v2"], "-i", broken_python, "--serial", "1", "--max-fail", "0", check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("error: 1 device(s) failed (dev2)") and "stopped before the next batch" in err[-1]
    rows = by_host(result)
    assert rows["dev1"]["outcome"] == "updated" and devices[0].current() == releases["v2"]
    assert rows["dev2"]["outcome"] == "failed" and "/nonexistent/python3 was not found on dev2" in rows["dev2"]["error"]
    assert devices[1].current() == releases["v1"]
    assert rows["dev3"]["outcome"] == "not-started" and result["stopped"]
    assert devices[2].current() == releases["v1"] and devices[2].pid() == pid3


def test_max_fail_lets_the_rollout_continue(devices, bundles, releases, tmp_path):
    broken_python = write_inventory(tmp_path / "inv.ini", devices, {"dev2": {"edgedl_python": "/nonexistent/python3"}})
    result, proc = rollout(bundles["v2"], "-i", broken_python, "--serial", "1", "--max-fail", "1", check=False)
    assert proc.returncode == 1 and not result["stopped"]
    assert [r["outcome"] for r in result["hosts"]] == ["unchanged", "failed", "updated"]
    assert [d.current() for d in devices] == [releases["v2"], releases["v1"], releases["v2"]]


def test_a_release_that_does_not_start_is_rolled_back(devices, inventory, bundles, releases):
    result, proc = rollout(bundles["broken"], "-i", inventory, "--serial", "1", check=False)
    assert proc.returncode == 1
    rows = by_host(result)
    assert rows["dev1"]["outcome"] == "rolled-back" and rows["dev1"]["previous"] == releases["v2"]
    assert rows["dev1"]["rollback_ready"] is True and "simulated crash on start" in rows["dev1"]["error"]
    assert (devices[0].remote_dir / "releases" / releases["broken"] / ".failed").is_file()
    assert devices[0].current() == releases["v2"]
    x = np.random.default_rng(4).random((2, 64), dtype=np.float32)
    assert infer(devices[0].port, "digits", "pixels", x).shape == (2, 10)  # v2 serves again
    assert [rows["dev2"]["outcome"], rows["dev3"]["outcome"]] == ["not-started", "not-started"]
    assert [devices[1].current(), devices[2].current()] == [releases["v1"], releases["v2"]]


def test_each_group_gets_its_bundle_and_a_wrong_architecture_is_refused(devices, bundles, releases, tmp_path):
    """dev1 stays in [x86-server], dev3 is put in [rpi5] (an aarch64 profile) although it is x86_64: refused before
    anything is copied; dev2 is in a group without a bundle and is not touched."""
    inv = write_inventory(tmp_path / "inv.ini", devices, groups={"dev2": "lab", "dev3": "rpi5"})
    before3 = sorted(os.listdir(devices[2].remote_dir / "releases"))
    result, proc = rollout(bundles["v2"], bundles["rpi5"], "-i", inv, "--serial", "1", "--max-fail", "1", check=False)
    assert proc.returncode == 1
    rows = by_host(result)
    assert rows["dev1"]["outcome"] == "unchanged" and rows["dev1"]["profile"] == "x86-server"
    assert rows["dev2"]["outcome"] == "no-bundle"
    assert rows["dev3"]["outcome"] == "failed" and rows["dev3"]["profile"] == "rpi5"
    assert "dev3 is x86_64 but its bundle rpi5 is for rpi5 (aarch64)" in rows["dev3"]["error"]
    assert sorted(os.listdir(devices[2].remote_dir / "releases")) == before3


def test_status_in_parallel_with_an_unreachable_device(devices, inventory, bundles, releases, tmp_path):
    dead = loopback_sshd.free_port()  # nothing listens there
    inv = write_inventory(tmp_path / "inv.ini", devices, extra_lines=[
        "[x86-server]", f"dev4 ansible_host=127.0.0.1 ansible_port={dead} ansible_ssh_common_args='-F /dev/null'"])
    proc = edgedl("fleet", "status", "-i", inv, "--json")
    rows = {r["host"]: r for r in json.loads(proc.stdout)["hosts"]}
    assert list(rows) == ["dev1", "dev2", "dev3", "dev4"]
    manifest = {"v1": json.loads((bundles["v1"] / "manifest.json").read_text()),
                "v2": json.loads((bundles["v2"] / "manifest.json").read_text())}
    expect = {"dev1": "v2", "dev2": "v1", "dev3": "v2"}
    for host, version in expect.items():
        r = rows[host]
        assert r["reachable"] and r["ready"] and r["current"] == releases[version]
        assert r["models"] == {m["name"]: m["sha256"] for m in manifest[version]["models"]}
        assert r["uptime_s"] >= 0
    assert rows["dev4"]["reachable"] is False and rows["dev4"]["ready"] is False
    assert "Connection refused" in rows["dev4"]["error"] or "unreachable" in rows["dev4"]["error"].lower()
    human = edgedl("fleet", "status", "-i", inventory)
    assert "dev1" in human.stdout and releases["v2"] in human.stdout
    # the fleet role keeps `edgedl deploy`'s on-device layout: its status command reads a fleet device
    single = json.loads(edgedl("deploy", "status", *devices[0].sshd.cli_args(devices[0].remote_dir), "--json").stdout)
    assert single["current"] == releases["v2"] and single["running"] and single["ready"]


def test_a_device_with_too_little_disk_is_refused_untouched(devices, bundles, tmp_path):
    """dev2's deploy directory is on a real 16 MB tmpfs: refused by the disk check before anything is copied."""
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        inv = write_inventory(tmp_path / "inv.ini", devices, {"dev2": {"edgedl_remote_dir": small / "edgedl"}})
        result, proc = rollout(bundles["v2"], "-i", inv, "--limit", "dev2", check=False)
        assert proc.returncode == 1
        (row,) = result["hosts"]
        assert row["host"] == "dev2" and row["outcome"] == "failed"
        assert "MB free in" in row["error"] and "but the release needs" in row["error"]
        assert sorted(os.listdir(small / "edgedl")) == []  # nothing copied, no release directory
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_device_locked_by_another_deploy_fails_untouched(devices, bundles, releases, tmp_path):
    """dev3's directory is held by another deploy (its lock taken with device.sh): the rollout fails that device
    with the holder named, changes nothing there, and leaves the lock to its holder."""
    from edgedl.stages.device import programs

    dev = devices[2]
    before = (dev.current(), dev.pid(), sorted(os.listdir(dev.remote_dir / "releases")))
    held = subprocess.run(["sh", "-c", programs.DEVICE, "edgedl", str(dev.remote_dir), "lock", "tok", "ann@laptop"],
                          capture_output=True, text=True)
    assert held.returncode == 0, held.stderr
    try:
        inv = write_inventory(tmp_path / "inv.ini", devices)
        target = "v2" if dev.current() != releases["v2"] else "v1"
        result, proc = rollout(bundles[target], "-i", inv, "--limit", "dev3", check=False)
        assert proc.returncode == 1
        (row,) = result["hosts"]
        assert row["outcome"] == "failed" and "another deploy to" in row["error"] and "ann@laptop" in row["error"]
        assert (dev.current(), dev.pid(), sorted(os.listdir(dev.remote_dir / "releases"))) == before
        assert (dev.remote_dir / "run/deploy.lock/owner").read_text().split() == ["tok", "ann@laptop"]
    finally:
        subprocess.run(["sh", "-c", programs.DEVICE, "edgedl", str(dev.remote_dir), "unlock", "tok"], check=True)


@pytest.mark.parametrize("args, message", [
    (["--serial", "0"], "--serial '0' must be a positive count"),
    (["--serial", "150%"], "must be a positive count"),
    (["--max-fail", "-1"], "--max-fail must be >= 0"),
])
def test_bad_options_are_one_line_errors(inventory, bundles, args, message):
    proc = edgedl("fleet", "deploy", bundles["v2"], "-i", inventory, *args, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert message in proc.stderr


def test_bad_inputs_are_refused_before_ansible_runs(bundles, inventory, tmp_path):
    missing = edgedl("fleet", "deploy", bundles["v2"], "-i", tmp_path / "nope.ini", check=False)
    assert missing.returncode == 1 and "inventory" in missing.stderr and "does not exist" in missing.stderr
    twice = edgedl("fleet", "deploy", bundles["v1"], bundles["v2"], "-i", inventory, check=False)
    assert twice.returncode == 1 and "two bundles are for profile x86-server" in twice.stderr
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["v2"], tampered)
    (tampered / "start.sh").write_text("#!/bin/sh\necho evil\n")
    bad = edgedl("fleet", "deploy", tampered, "-i", inventory, check=False)
    assert bad.returncode == 1 and "start.sh does not match its sha256" in bad.stderr
    junk = edgedl("fleet", "deploy", bundles["junk_model"], "-i", inventory, check=False)
    assert junk.returncode == 1 and "model digits does not load here" in junk.stderr
    assert "no device was touched" in junk.stderr


def test_a_device_deployed_with_an_api_key_keeps_it_through_a_fleet_rollout(devices, bundles, releases, tmp_path):
    """`edgedl deploy --api-key-file` puts a bearer token in service.env; a fleet rollout keeps it, its health gate
    and smoke inference authenticate with it, and `fleet status` still sees the device ready."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    dev = devices[2]
    key_file = tmp_path / "key"
    key_file.write_text("fleet-test-token\n")
    edgedl("deploy", bundles["v1"], *dev.sshd.cli_args(dev.remote_dir), "--serve-host", "127.0.0.1",
           "--serve-port", dev.port, "--api-key-file", key_file)
    inv = write_inventory(tmp_path / "inv.ini", devices)
    result, _ = rollout(bundles["v2"], "-i", inv, "--limit", dev.name)
    (row,) = result["hosts"]
    assert row["outcome"] == "updated" and dev.current() == releases["v2"]
    env_file = dev.remote_dir / "service.env"
    assert "EDGEDL_API_KEY='fleet-test-token'" in env_file.read_text()
    assert env_file.stat().st_mode & 0o077 == 0
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(InferenceServerException):
        infer(dev.port, "digits", "pixels", x)  # no token: refused
    client = httpclient.InferenceServerClient(f"127.0.0.1:{dev.port}")
    inp = httpclient.InferInput("pixels", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("digits", [inp], headers={"Authorization": "Bearer fleet-test-token"}).as_numpy("logits")
    assert out.shape == (1, 10)
    status = json.loads(edgedl("fleet", "status", "-i", inv, "--limit", dev.name, "--json").stdout)
    (row,) = [r for r in status["hosts"] if r["host"] == dev.name]
    assert row["ready"] is True and "fleet-test-token" not in json.dumps(status)


def test_an_inventory_value_with_shell_characters_is_refused_by_the_device(devices, bundles, releases, tmp_path):
    """An inventory's edgedl_bind reaches the device script unchecked by edgedl: device.sh refuses it (exit 33)
    before writing service.env, the injected command never runs, and the device keeps serving its release."""
    dev = devices[0]
    marker = tmp_path / "INJECTED"
    before = (dev.current(), dev.pid(), (dev.remote_dir / "service.env").read_text())
    inv = write_inventory(tmp_path / "inv.ini", devices, {dev.name: {"edgedl_bind": f'"127.0.0.1$(touch {marker})"'}})
    result, proc = rollout(bundles["v1"], "-i", inv, "--limit", dev.name, check=False)
    (row,) = result["hosts"]
    assert proc.returncode == 1 and row["outcome"] == "failed", row
    assert "refusing the host value given: it is not a valid host" in row["error"], row["error"]
    assert not marker.exists()
    assert (dev.current(), dev.pid(), (dev.remote_dir / "service.env").read_text()) == before
