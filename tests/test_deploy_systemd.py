"""``edgedl deploy`` to a device that runs systemd: a real systemd booted as PID 1 of its own namespaces
(tests/deploy/systemd_device.py), reached over its own sshd as ``pi`` with passwordless sudo, like Raspberry Pi OS.

The server must become an enabled unit that runs as pi, that systemd itself restarts when the server dies, that a
broken release rolls back under, and that `--service process`, `stop` and `status` handle - all queried from this
machine with the real tritonclient. Order matters: the tests share one device and build on each other's state."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import ROOT, rehashed_bundle, run_edgedl

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import systemd_device  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}
UNIT = "edgedl.service"  # the deploy directory is ~/edgedl
pytestmark = pytest.mark.skipif(systemd_device.available() is not None, reason=str(systemd_device.available()))


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    dev = systemd_device.start(tmp_path_factory.mktemp("sd") / "device")
    try:
        yield dev
    finally:
        dev.stop()


@pytest.fixture(scope="module")
def bundles(zoo, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sd-bundles")
    out = {"v1": base / "v1", "v2": base / "v2"}
    run_edgedl("package", zoo["mlp"].onnx, "--target", "x86-server", "-o", out["v1"], "--no-tarball", env=CACHE_ENV)
    run_edgedl("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--target", "x86-server", "-o", out["v2"], "--no-tarball",
               env=CACHE_ENV)
    out["broken"] = rehashed_bundle(out["v2"], base / "broken", "start.sh", "#!/bin/sh\necho 'simulated crash' >&2\nexit 3\n")
    return out


@pytest.fixture(scope="module")
def port():
    return systemd_device.free_port()


def deploy(device, *args, check=True):
    sub = [a for a in args if a in ("status", "rollback", "logs", "stop")]
    rest = [a for a in args if a not in sub]
    return run_edgedl("deploy", *sub, *rest, *device.cli_args("edgedl"), check=check, timeout=400, env=CACHE_ENV)


def unit(device, *props: str) -> dict[str, str]:
    out = device.run("systemctl", "show", *[f"-p{p}" for p in props], UNIT).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def infer_mlp(port: int) -> np.ndarray:
    import tritonclient.http as httpclient

    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return httpclient.InferenceServerClient(f"127.0.0.1:{port}").infer("mlp", [inp]).as_numpy("logits")


def expected_mlp(zoo) -> np.ndarray:
    from edgedl.runtime import load

    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    return load(zoo["mlp"].onnx).run({"pixels": x})["logits"]


def wait_ready(port: int, timeout: float = 60) -> bool:
    import tritonclient.http as httpclient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpclient.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready():
                return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    return False


def test_deploy_installs_an_enabled_unit_that_runs_as_pi(device, bundles, port, zoo):
    proc = deploy(device, bundles["v1"], "--serve-host", "127.0.0.1", "--serve-port", str(port), "--json")
    result = json.loads(proc.stdout)
    assert result["service"] == "systemd" and result["unit"] == UNIT and result["ready"]
    assert result["device"]["systemd_usable"] and result["device"]["systemd_why"] == "sudo" and not result["warnings"]
    props = unit(device, "ActiveState", "UnitFileState", "User", "WorkingDirectory", "MainPID", "FragmentPath",
                 "LimitNOFILE")
    assert props["ActiveState"] == "active" and props["UnitFileState"] == "enabled" and props["User"] == "pi"
    limits = device.run("cat", f"/proc/{props['MainPID']}/limits").stdout
    assert props["LimitNOFILE"] == "4096" and any(line.startswith("Max open files") and line.split()[3:5] == ["4096", "4096"]
                                                  for line in limits.splitlines()), limits
    assert props["WorkingDirectory"] == "/home/pi/edgedl" and props["FragmentPath"] == f"/etc/systemd/system/{UNIT}"
    owner = device.run("ps", "-o", "user=", "-p", props["MainPID"]).stdout.strip()
    assert owner == "pi"
    np.testing.assert_allclose(infer_mlp(port), expected_mlp(zoo), rtol=0, atol=1e-5)
    assert device.run("cat", "/home/pi/edgedl/run/service").stdout.strip() == f"systemd {UNIT}"
    assert device.run("test", "-e", "/home/pi/edgedl/run/edgedl.pid", check=False).returncode != 0  # no supervisor


def test_systemd_restarts_a_server_that_dies(device, port):
    before = unit(device, "MainPID", "NRestarts")
    device.run("kill", "-KILL", before["MainPID"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = unit(device, "MainPID", "NRestarts", "ActiveState")
        if now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"]):
            break
        time.sleep(0.3)
    assert int(now["NRestarts"]) == int(before["NRestarts"]) + 1, now
    assert wait_ready(port)
    log = deploy(device, "logs", "-n", "20").stdout
    assert "edgedl systemd: server exited (signal, killed KILL)" in log, log


def test_a_broken_release_rolls_back_under_systemd(device, bundles, port):
    current = json.loads(deploy(device, "status", "--json").stdout)["current"]
    proc = deploy(device, bundles["broken"], "--serve-host", "127.0.0.1", "--serve-port", str(port), "--ready-timeout", "60",
                  check=False)
    assert proc.returncode == 1
    assert "kept crashing on start" in proc.stderr and f"rolled back to release {current}, which is ready again" in proc.stderr
    st = json.loads(deploy(device, "status", "--json").stdout)
    assert st["current"] == current and st["ready"] and st["manager"] == "systemd" and st["enabled"] == "enabled"
    assert [r["state"] for r in st["releases"] if r["id"] != current] == ["failed"]
    assert unit(device, "ActiveState")["ActiveState"] == "active"


def test_update_then_rollback_keep_the_unit(device, bundles, port, zoo):
    v1 = json.loads(deploy(device, "status", "--json").stdout)["current"]
    v2 = json.loads(deploy(device, bundles["v2"], "--serve-host", "127.0.0.1", "--serve-port", str(port),
                           "--json").stdout)["release"]
    import tritonclient.http as httpclient

    served = {m["name"] for m in httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_repository_index()}
    assert served == {"cnn", "mlp"}
    assert v2 in device.run("cat", f"/etc/systemd/system/{UNIT}").stdout  # the unit now logs to v2's log
    back = json.loads(deploy(device, "rollback", "--json").stdout)
    assert back == {"host": device.host + f":{device.port}", "from": v2, "to": v1, "ready": True}
    np.testing.assert_allclose(infer_mlp(port), expected_mlp(zoo), rtol=0, atol=1e-5)
    assert unit(device, "ActiveState", "UnitFileState") == {"ActiveState": "active", "UnitFileState": "enabled"}


def test_a_deploy_directory_with_spaces_gets_its_own_unit(device, bundles, zoo):
    """The unit holds the directory whole (WorkingDirectory=, EnvironmentFile=, append:) and ExecStart= quoted."""
    other_port = systemd_device.free_port()
    conn = device.cli_args("my models/edge dl")
    result = json.loads(run_edgedl("deploy", bundles["v1"], *conn, "--serve-host", "127.0.0.1", "--serve-port",
                                   str(other_port), "--json", timeout=400, env=CACHE_ENV).stdout)
    assert result["service"] == "systemd" and result["unit"] == "edgedl-edge_dl.service" and result["ready"]
    props = device.run("systemctl", "show", "-pActiveState", "-pWorkingDirectory", "edgedl-edge_dl.service").stdout
    assert "ActiveState=active" in props and "WorkingDirectory=/home/pi/my models/edge dl" in props
    np.testing.assert_allclose(infer_mlp(other_port), expected_mlp(zoo), rtol=0, atol=1e-5)
    run_edgedl("deploy", "stop", *conn, timeout=200, env=CACHE_ENV)
    assert not wait_ready(other_port, timeout=2)


def test_a_fleet_rollout_and_fleet_status_use_the_unit(device, bundles, port, tmp_path):
    """The Ansible role runs the same device script: a rollout onto this device keeps the server a systemd unit,
    passes the health gate and smoke inference, and `fleet status` reads the unit's state and uptime."""
    if not (ROOT / ".venv/bin/ansible-playbook").is_file():
        pytest.skip("ansible-core (the fleet extra) is not installed")
    inv = tmp_path / "inventory.ini"
    inv.write_text(
        "[x86-server]\n"
        f"pi ansible_host=127.0.0.1 ansible_port={device.port} ansible_user=pi "
        f"ansible_ssh_private_key_file={device.identity} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_transfer_method=piped ansible_ssh_common_args='-F /dev/null -o UserKnownHostsFile={device.known_hosts}' "
        f"edgedl_remote_dir=edgedl edgedl_port={port} edgedl_bind=127.0.0.1 edgedl_python=/usr/bin/python3 "
        "edgedl_ready_timeout=60\n")
    before = unit(device, "MainPID")["MainPID"]
    row = json.loads(run_edgedl("fleet", "deploy", bundles["v2"], "-i", inv, "--json", timeout=400,
                                env=CACHE_ENV).stdout)["hosts"][0]
    assert row["outcome"] == "updated" and row["device"]["service"] == "systemd" and row["smoke"]["code"] == 0, row
    props = unit(device, "ActiveState", "UnitFileState", "MainPID", "WorkingDirectory")
    assert props["ActiveState"] == "active" and props["UnitFileState"] == "enabled" and props["MainPID"] != before
    assert row["release"] in device.run("cat", f"/etc/systemd/system/{UNIT}").stdout
    status = json.loads(run_edgedl("fleet", "status", "-i", inv, "--json", timeout=200).stdout)["hosts"][0]
    assert status["service"] == "systemd" and status["unit"] == UNIT and status["running"] and status["ready"], status
    assert status["current"] == row["release"] and 0 <= status["uptime_s"] < 600


def test_a_second_directory_whose_unit_name_is_taken_is_refused_untouched(device, bundles, port):
    """~/edgedl and ~/other/edgedl would both be edgedl.service: the second deploy is refused (the unit belongs to
    the first directory) before anything there or in the running service changes."""
    pid = unit(device, "MainPID")["MainPID"]
    proc = run_edgedl("deploy", bundles["v1"], *device.cli_args("other/edgedl"), "--serve-host", "127.0.0.1",
                      "--serve-port", str(systemd_device.free_port()), check=False, timeout=400, env=CACHE_ENV)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "edgedl.service already runs another directory" in proc.stderr and "the running release was not touched" in proc.stderr
    assert unit(device, "MainPID", "WorkingDirectory") == {"MainPID": pid, "WorkingDirectory": "/home/pi/edgedl"}
    assert wait_ready(port)


def test_stop_stops_and_disables_the_unit(device, port):
    out = deploy(device, "stop").stdout
    assert "stopped release" in out
    assert unit(device, "ActiveState", "UnitFileState") == {"ActiveState": "inactive", "UnitFileState": "disabled"}
    assert not wait_ready(port, timeout=2)
    st = json.loads(deploy(device, "status", "--json").stdout)
    assert not st["running"] and not st["ready"]


def test_service_process_replaces_the_unit_with_a_supervised_process(device, bundles, port, zoo):
    serve = ("--serve-host", "127.0.0.1", "--serve-port", str(port))
    result = json.loads(deploy(device, bundles["v1"], *serve, "--service", "process", "--json").stdout)
    assert result["service"] == "process" and result["unit"] is None and result["ready"]
    assert device.run("test", "-e", f"/etc/systemd/system/{UNIT}", check=False).returncode != 0  # the unit is gone
    assert device.run("test", "-s", "/home/pi/edgedl/run/edgedl.pid").returncode == 0
    np.testing.assert_allclose(infer_mlp(port), expected_mlp(zoo), rtol=0, atol=1e-5)
    # and back: auto picks systemd again, and the supervised process is stopped
    result = json.loads(deploy(device, bundles["v1"], *serve, "--json").stdout)
    assert result["service"] == "systemd" and unit(device, "ActiveState")["ActiveState"] == "active"
    assert device.run("test", "-e", "/home/pi/edgedl/run/edgedl.pid", check=False).returncode != 0
    assert wait_ready(port)


def test_the_enabled_unit_brings_the_server_back_after_a_power_cut(device, port, zoo):
    systemd_device.power_cycle(device)
    assert wait_ready(port), deploy(device, "logs", "-n", "20", check=False).stdout
    np.testing.assert_allclose(infer_mlp(port), expected_mlp(zoo), rtol=0, atol=1e-5)
    st = json.loads(deploy(device, "status", "--json").stdout)
    assert st["ready"] and st["manager"] == "systemd" and st["enabled"] == "enabled"
