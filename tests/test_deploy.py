"""``edgedl deploy`` against a real OpenSSH server on loopback (the "device" is a directory on this machine,
served by the host's python3 from a venv built from the bundle's offline wheelhouse), with the real
``edgedl serve`` started by the deploy and queried with the real tritonclient.

Order matters within this module: the bad-input tests run against a device that already serves release v1 and
check that it is untouched; the lifecycle test then updates, breaks (automatic rollback), and rolls back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import EDGEDL, ROOT, assert_one_line_error, rehashed_bundle, run_edgedl

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import loopback_sshd  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}
pytestmark = pytest.mark.skipif(loopback_sshd.available() is not None, reason=str(loopback_sshd.available()))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with loopback_sshd.running(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def bundles(zoo, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bundles")
    out = {"v1": base / "v1", "v2": base / "v2", "rpi5": base / "rpi5"}
    run_edgedl("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--target", "x86-server", "-o", out["v1"], env=CACHE_ENV)
    run_edgedl("package", zoo["mlp"].onnx, "--name", "digits", "--target", "x86-server", "-o", out["v2"], env=CACHE_ENV)
    run_edgedl("package", zoo["mlp"].onnx, "--target", "rpi5", "-o", out["rpi5"], "--no-tarball", env=CACHE_ENV)
    # hashes all consistent, but the model is not ONNX: it installs, then cannot serve
    out["broken"] = rehashed_bundle(out["v1"], base / "broken", "models/cnn/1/model.onnx", "this is not an onnx model")
    return out


@pytest.fixture(scope="module")
def device(sshd, bundles, tmp_path_factory):
    """A device directory already serving release v1 on a free port."""
    remote_dir = tmp_path_factory.mktemp("device") / "edgedl"
    port = loopback_sshd.free_port()
    proc = deploy_cli(sshd, remote_dir, bundles["v1"], "--serve-host", "127.0.0.1", "--serve-port", str(port), "--json")
    result = json.loads(proc.stdout)
    yield {"dir": remote_dir, "port": port, "v1": result["release"]}
    loopback_sshd.stop_release_services(remote_dir)


def deploy_cli(sshd, remote_dir, *args, check=True):
    sub = [a for a in args if a in ("status", "rollback", "logs")]
    rest = [a for a in args if a not in sub]
    return run_edgedl("deploy", *sub, *rest, *sshd.cli_args(remote_dir), check=check, timeout=300)


def snapshot(remote_dir: Path) -> dict:
    pid = remote_dir / "run/edgedl.pid"
    return {"current": os.readlink(remote_dir / "current") if (remote_dir / "current").is_symlink() else None,
            "pid": pid.read_text().strip() if pid.is_file() else None,
            "releases": sorted(p.name for p in (remote_dir / "releases").iterdir())}


def client(port):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(f"127.0.0.1:{port}")


def models_served(port) -> list[str]:
    return sorted(m["name"] for m in client(port).get_model_repository_index() if m.get("state") == "READY")


def infer(port, model, name, array):
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(name, list(array.shape), "FP32")
    inp.set_data_from_numpy(array)
    return client(port).infer(model, [inp]).as_numpy("logits")


def assert_untouched(device, before):
    assert snapshot(device["dir"]) == before
    assert client(device["port"]).is_server_ready()


# --- the first deploy -------------------------------------------------------------------------------------------

def test_first_deploy_serves_what_onnxruntime_computes_here(device, zoo):
    from edgedl.recipe import load_recipe
    from edgedl.runtime import load

    assert models_served(device["port"]) == ["cnn", "mlp"]
    images = load_recipe(zoo["cnn"].recipe).split("test").inputs["image"][:16].astype(np.float32)
    remote = infer(device["port"], "cnn", "image", images)
    local = load(zoo["cnn"].onnx).run({"image": images})["logits"]
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-6)
    rel = device["dir"] / "releases" / device["v1"]
    assert (rel / ".installed").is_file() and (rel / "venv/bin/python").exists()
    assert os.readlink(device["dir"] / "current") == f"releases/{device['v1']}"
    # the device's venv holds the bundle's runtime, not this machine's torch
    pyver = subprocess.run([rel / "venv/bin/python", "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True)
    assert pyver.stdout.strip() == "None"


# --- bad input: one clear line, the running release untouched --------------------------------------------------

def test_unreachable_host(sshd, device, bundles):
    before = snapshot(device["dir"])
    proc = run_edgedl("deploy", bundles["v2"], "--host", "root@127.0.0.1", "--port", str(loopback_sshd.free_port()),
                      "--identity", sshd.identity, "--known-hosts", sshd.known_hosts, "--ssh-config", "/dev/null",
                      "--remote-dir", device["dir"], check=False)
    assert_one_line_error(proc, "cannot reach root@127.0.0.1:", "Connection refused")
    assert_untouched(device, before)


def test_unknown_host_key_is_refused_unless_accepted_explicitly(sshd, device, bundles, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    args = ["--host", sshd.host, "--port", str(sshd.port), "--identity", sshd.identity, "--known-hosts", empty,
            "--ssh-config", "/dev/null", "--remote-dir", device["dir"]]
    before = snapshot(device["dir"])
    proc = run_edgedl("deploy", bundles["v2"], *args, check=False)
    assert_one_line_error(proc, "host key", "--accept-new-host-key")
    assert_untouched(device, before)
    assert empty.read_text() == ""
    proc = run_edgedl("deploy", "status", *args, "--accept-new-host-key", "--json")
    assert json.loads(proc.stdout)["current"] == before["current"].split("/")[1]
    assert sshd.host_key_pub.read_text().split()[1] in empty.read_text()  # trusted on first use, now recorded


def test_wrong_architecture(sshd, device, bundles):
    before = snapshot(device["dir"])
    proc = deploy_cli(sshd, device["dir"], bundles["rpi5"], check=False)
    assert_one_line_error(proc, "is x86_64 but the bundle is for rpi5 (aarch64)", "--target x86-server")
    assert_untouched(device, before)
    assert not any((device["dir"] / "staging").glob("*"))


def test_missing_python_on_device(sshd, device, bundles):
    before = snapshot(device["dir"])
    proc = deploy_cli(sshd, device["dir"], bundles["v2"], "--remote-python", "python3.99", check=False)
    assert_one_line_error(proc, "python3.99 was not found on", "--remote-python")
    assert_untouched(device, before)


def test_insufficient_disk(sshd, device, zoo, tmp_path):
    # a profile whose reserve exceeds any real disk: the device's real free space (df) is compared with it
    profile = tmp_path / "tiny-disk.toml"
    profile.write_text((ROOT / "deploy/profiles/x86-server.toml").read_text().replace(
        "min_free_disk_mb = 300", "min_free_disk_mb = 900000000").replace('name = "x86-server"', 'name = "tiny-disk"'))
    bundle = tmp_path / "bundle"
    run_edgedl("package", zoo["mlp"].onnx, "--target", profile, "-o", bundle, "--no-tarball", env=CACHE_ENV)
    before = snapshot(device["dir"])
    proc = deploy_cli(sshd, device["dir"], bundle, check=False)
    assert_one_line_error(proc, "MB free in", "free space or prune old releases")
    assert_untouched(device, before)


def test_a_deploy_already_in_progress_is_refused(sshd, device, bundles):
    """Two deploys to one directory never interleave: the second is refused while the first holds the lock."""
    from edgedl.stages.device import programs

    before = snapshot(device["dir"])
    target = sshd.target()
    target.run(programs.DEVICE, str(device["dir"]), "lock", "other-token", "bob@laptop:4242")
    try:
        proc = deploy_cli(sshd, device["dir"], bundles["v2"], check=False)
        assert_one_line_error(proc, "another deploy to", "is in progress (bob@laptop:4242", "wait for it to finish")
        proc = deploy_cli(sshd, device["dir"], "rollback", check=False)
        assert_one_line_error(proc, "another deploy to")
        assert_untouched(device, before)
    finally:
        target.run(programs.DEVICE, str(device["dir"]), "unlock", "other-token")
    assert not (device["dir"] / "run/deploy.lock").exists()


def test_tampered_bundle_is_refused_before_anything_is_copied(sshd, device, bundles, tmp_path):
    bundle = shutil.copytree(bundles["v2"], tmp_path / "tampered")
    wheel = next((bundle / "wheels").glob("numpy-*.whl"))
    with open(wheel, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = snapshot(device["dir"])
    proc = deploy_cli(sshd, device["dir"], bundle, check=False)
    assert_one_line_error(proc, f"wheels/{wheel.name} does not match its sha256")
    assert_untouched(device, before)
    assert not any((device["dir"] / "staging").glob("*"))


def test_interrupted_deploy_never_touches_the_running_release(sshd, device, bundles):
    before = snapshot(device["dir"])
    cmd = [*EDGEDL, "deploy", str(bundles["v2"]), *map(str, sshd.cli_args(device["dir"]))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    staging = device["dir"] / "staging"
    deadline = time.time() + 60
    while time.time() < deadline and not any(staging.glob("*")):
        time.sleep(0.05)
    assert any(staging.glob("*")), "the deploy never started copying"
    os.killpg(proc.pid, signal.SIGKILL)  # the laptop dies mid-copy (or mid-install)
    proc.wait()
    time.sleep(0.5)
    after = snapshot(device["dir"])
    assert after["current"] == before["current"] and after["pid"] == before["pid"]
    assert client(device["port"]).is_server_ready()
    assert models_served(device["port"]) == ["cnn", "mlp"]
    new = [r for r in after["releases"] if r not in before["releases"]]
    assert all(not (device["dir"] / "releases" / r / ".installed").exists() for r in new)
    # the dead deploy still holds the directory's lock: the next deploy says so (and how to take it over)
    again = deploy_cli(sshd, device["dir"], bundles["v2"], check=False)
    assert_one_line_error(again, "another deploy to", "last active", "--break-lock if it died")
    assert snapshot(device["dir"]) == after


# --- the lifecycle: update, a broken update rolled back automatically, status, rollback, logs ---------------------

def test_update_broken_update_rollback_status_logs(sshd, device, bundles):
    port = str(device["port"])
    # update to v2 (one model, renamed): the new release serves, v1 stays installed for rollback
    # --break-lock: test_interrupted_deploy's killed deploy left the directory's lock behind
    left = (device["dir"] / "run/deploy.lock").exists()
    v2 = json.loads(deploy_cli(sshd, device["dir"], bundles["v2"], "--serve-host", "127.0.0.1", "--serve-port", port,
                               "--break-lock", "--json").stdout)
    assert v2["previous"] == device["v1"] and v2["ready"]
    assert any("took over the deploy lock of" in w for w in v2["warnings"]) == left, v2["warnings"]
    assert not (device["dir"] / "run/deploy.lock").exists()
    assert models_served(device["port"]) == ["digits"]
    assert not any((device["dir"] / "staging").glob("*"))  # the interrupted copy's leftovers were cleaned

    # a broken release: installs, starts without its model cnn (the server serves what loads, cnn UNAVAILABLE) ->
    # automatic rollback to v2, one clear line, v2 serving again
    proc = deploy_cli(sshd, device["dir"], bundles["broken"], "--serve-host", "127.0.0.1", "--serve-port", port,
                      "--ready-timeout", "60", check=False)
    assert_one_line_error(proc, "started without all of its models (the server runs without its model cnn",
                          f"rolled back to release {v2['release']}, which is ready again", "could not load")
    assert os.readlink(device["dir"] / "current") == f"releases/{v2['release']}"
    assert models_served(device["port"]) == ["digits"]

    status = json.loads(deploy_cli(sshd, device["dir"], "status", "--json").stdout)
    assert status["current"] == v2["release"] and status["running"] and status["ready"]
    states = {r["id"]: r["state"] for r in status["releases"]}
    assert states[device["v1"]] == "installed" and states[v2["release"]] == "installed"
    assert sorted(states.values()).count("failed") == 1
    human = deploy_cli(sshd, device["dir"], "status").stdout
    assert "ready" in human and v2["release"] in human

    # manual rollback goes to the release active before v2 (v1), skipping the failed one
    rolled = json.loads(deploy_cli(sshd, device["dir"], "rollback", "--json").stdout)
    assert rolled == {"host": f"{sshd.user}@127.0.0.1:{sshd.port}", "from": v2["release"], "to": device["v1"], "ready": True}
    assert models_served(device["port"]) == ["cnn", "mlp"]

    logs = deploy_cli(sshd, device["dir"], "logs", "-n", "20").stdout
    assert f"starting release {device['v1']}" in logs and "edgedl serve: ready" in logs
    bad = deploy_cli(sshd, device["dir"], "rollback", "--to", "no-such-release", check=False)
    assert_one_line_error(bad, "'no-such-release' is not an installed release")


def test_api_key_from_a_tarball_deploy_is_set_on_the_device_and_kept_across_rollback(sshd, device, bundles, tmp_path):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    key_file = tmp_path / "key"
    key_file.write_text("s3cret-token-for-the-test\n")
    port = str(device["port"])
    tarball = bundles["v2"].parent / "v2.tar.gz"  # the tarball `edgedl package` wrote deploys like the directory
    deploy_cli(sshd, device["dir"], tarball, "--serve-host", "127.0.0.1", "--serve-port", port,
               "--api-key-file", key_file)
    env_file = device["dir"] / "service.env"
    assert "EDGEDL_API_KEY='s3cret-token-for-the-test'" in env_file.read_text()
    assert env_file.stat().st_mode & 0o077 == 0  # readable by the service user only
    with pytest.raises(InferenceServerException, match="API key"):
        client(device["port"]).get_model_repository_index()
    authed = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    headers = {"Authorization": "Bearer s3cret-token-for-the-test"}
    assert sorted(m["name"] for m in authed.get_model_repository_index(headers=headers)) == ["digits"]
    status = json.loads(deploy_cli(sshd, device["dir"], "status", "--json").stdout)
    assert status["ready"] and status["service"]["EDGEDL_API_KEY"] == "(set)"  # the key itself never leaves the device
    rolled = json.loads(deploy_cli(sshd, device["dir"], "rollback", "--json").stdout)
    assert rolled["ready"]  # readiness was checked with the key, which the rolled-back release keeps
    assert "EDGEDL_API_KEY=" in env_file.read_text()


def test_device_side_hash_check_refuses_a_corrupted_copy(sshd, device, bundles):
    """The hashes are verified again on the device after the copy: a copy that differs from the manifest (a
    corrupted transfer) is refused there with exit code 22, never installed, and the running release is untouched."""
    from edgedl.stages.device import programs

    current = os.readlink(device["dir"] / "current")
    staging = device["dir"] / "staging" / "corrupted-copy"
    shutil.copytree(bundles["v2"], staging)
    (staging / "models" / "digits" / "1" / "model.onnx").write_bytes(b"bit rot")
    proc = sshd.target().run(programs.DEVICE, str(device["dir"]), "install", "corrupted-copy", "python3",
                             check=False, timeout=120)
    assert proc.returncode == 22, proc.stderr
    assert "sha256 mismatch models/digits/1/model.onnx" in proc.stderr
    assert not (device["dir"] / "releases" / "corrupted-copy").exists()
    assert os.readlink(device["dir"] / "current") == current
    status = json.loads(deploy_cli(sshd, device["dir"], "status", "--json").stdout)  # knows the device's API key
    assert status["ready"] and status["current"] == os.path.basename(current)
