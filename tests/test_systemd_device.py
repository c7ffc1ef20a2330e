"""The systemd test device (tests/deploy/systemd_device.py): a real systemd booted as PID 1 of its own namespaces,
reached over its own sshd as ``pi`` with passwordless sudo, and torn down without leaving anything on the host."""

from __future__ import annotations

import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import systemd_device  # noqa: E402

pytestmark = pytest.mark.skipif(systemd_device.available() is not None, reason=str(systemd_device.available()))

BINFMT = Path("/proc/sys/fs/binfmt_misc")


@pytest.fixture
def device(tmp_path):
    dev = systemd_device.start(tmp_path / "device")
    try:
        yield dev
    finally:
        dev.stop()


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def host_binfmt() -> dict[str, str]:
    if not BINFMT.is_dir():
        return {}
    return {p.name: p.read_text() for p in BINFMT.iterdir() if p.name != "register"}


def test_device_boots_systemd_reachable_as_pi_with_sudo(device):
    ssh = device.target()
    assert ssh.run("id -un").stdout.strip() == "pi"
    assert ssh.run("hostname").stdout.strip() == "raspberrypi"
    # systemd's own test for "booted with systemd" (what sd_booted() and deploy code check)
    assert ssh.run("test -d /run/systemd/system && echo yes").stdout.strip() == "yes"
    assert ssh.run("cat /proc/1/comm").stdout.strip() == "systemd"
    state = ssh.run("sudo -n systemctl is-system-running", check=False).stdout.strip()
    failed = device.failed_units()
    assert state == "running", f"system state {state!r}, failed units: {failed}"
    assert failed == []
    # not root by default, root through sudo without a password
    assert ssh.run("sudo -n id -u").stdout.strip() == "0"
    assert device.run("systemctl", "is-active", "edgedl-test-sshd.service", "multi-user.target").stdout.split() == [
        "active", "active"]
    # the host-facing units of the host's default boot are masked and not running
    for unit in ("ssh.service", "postgresql.service", "systemd-binfmt.service", "getty.target"):
        assert device.run("systemctl", "is-enabled", unit, check=False).stdout.strip() == "masked", unit
        assert device.run("systemctl", "is-active", unit, check=False).stdout.strip() != "active", unit


def test_unit_started_with_sudo_serves_http_on_host_and_stop_leaves_nothing(device, tmp_path):
    binfmt_before = host_binfmt()
    ssh = device.target()
    http_port = systemd_device.free_port()
    unit = (
        "[Unit]\nDescription=edgedl probe http server\n\n"
        f"[Service]\nExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 --directory /srv/probe {http_port}\n"
        "User=pi\n")
    ssh.run("sudo -n mkdir -p /srv/probe && echo hello-from-the-device | sudo -n tee /srv/probe/index.html >/dev/null")
    ssh.run("sudo -n tee /etc/systemd/system/edgedl-probe.service >/dev/null", input=unit.encode())
    ssh.run("sudo -n systemctl daemon-reload && sudo -n systemctl start edgedl-probe.service")
    assert ssh.run("systemctl is-active edgedl-probe.service").stdout.strip() == "active"
    main_pid = int(device.run("systemctl", "show", "-p", "MainPID", "--value", "edgedl-probe.service").stdout)
    assert main_pid > 1  # a pid inside the device's namespace
    deadline = time.monotonic() + 15
    while not port_open(http_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    # from the HOST: the device shares the host's network, like a Pi on the LAN
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/index.html", timeout=5) as resp:
        assert resp.read().decode().strip() == "hello-from-the-device"
    # its journal has the request
    logs = ssh.run("sudo -n journalctl -u edgedl-probe.service --no-pager -o cat").stdout
    assert "GET /index.html" in logs
    # DefaultDependencies pulled in sysinit/basic: they came up cleanly
    assert device.failed_units() == []

    inside = device.processes()
    assert device.init_pid in inside and len(inside) >= 4  # systemd, journald, sshd, python3 ...
    workdir, cgroups = device.workdir, device.cgroups
    device.stop()
    device.stop()  # idempotent
    assert not port_open(device.port)
    assert not port_open(http_port)
    assert [pid for pid in inside if pid_alive(pid)] == []
    assert not workdir.exists()
    assert [cg for cg in cgroups if cg.exists()] == []
    assert host_binfmt() == binfmt_before


def test_boots_twice_in_a_row(tmp_path):
    ports = []
    for n in range(2):
        dev = systemd_device.start(tmp_path / f"device{n}")
        try:
            assert dev.target().run("sudo -n systemctl is-system-running").stdout.strip() == "running"
            ports.append(dev.port)
            init_pid = dev.init_pid
        finally:
            dev.stop()
        assert not pid_alive(init_pid)
        assert not port_open(dev.port)
    assert len(ports) == 2


def test_failed_boot_is_reported_and_cleaned_up(tmp_path, monkeypatch):
    # a boot whose sshd never comes up: its config has an unknown keyword
    write_files = systemd_device._write_device_files

    def broken_sshd_config(upper, *args):
        write_files(upper, *args)
        with open(upper / "etc/edgedl-test/sshd_config", "a") as f:
            f.write("NoSuchSshdKeyword yes\n")

    def ours():
        return {p for h in systemd_device.CGROUP_HIERARCHIES
                for p in (systemd_device.CGROUP_ROOT / h).glob("edgedl-device-*")}

    before = ours()
    monkeypatch.setattr(systemd_device, "_write_device_files", broken_sshd_config)
    with pytest.raises(RuntimeError, match="did not finish booting"):
        systemd_device.start(tmp_path / "device", timeout=5)
    assert not (tmp_path / "device").exists()
    assert ours() - before == set()


def test_device_dies_with_the_process_that_booted_it(tmp_path):
    """A test process killed outright (no atexit, no finally) must not leave systemd, sshd or servers behind."""
    import json
    import os
    import signal
    import subprocess

    script = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent / 'deploy')!r})\n"
        "import systemd_device\n"
        f"dev = systemd_device.start(__import__('pathlib').Path({str(tmp_path / 'device')!r}))\n"
        "print(json.dumps({'init_pid': dev.init_pid, 'port': dev.port, 'pids': dev.processes(),"
        " 'cgroups': [str(c) for c in dev.cgroups]}), flush=True)\n"
        "time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(owner.stdout.readline())
        assert pid_alive(info["init_pid"]) and port_open(info["port"])
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in info["pids"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in info["pids"] if pid_alive(p)] == []
    assert not port_open(info["port"])
    # what the kernel cannot clean (the empty cgroups) is swept by a later start once stale
    removed = systemd_device.sweep_stale_cgroups(min_age_s=0)
    assert {str(c) for c in removed} >= set(info["cgroups"])


def test_power_cycle_keeps_files_and_starts_enabled_units(device):
    """Like pulling a Pi's plug: everything dies at once, the disk survives, units enabled at boot come back."""
    ssh = device.target()
    http_port = systemd_device.free_port()
    unit = (
        "[Unit]\nDescription=edgedl probe http server\n\n"
        f"[Service]\nExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 {http_port}\nUser=pi\n"
        "WorkingDirectory=/home/pi\n\n[Install]\nWantedBy=multi-user.target\n")
    ssh.run("sudo -n tee /etc/systemd/system/edgedl-probe.service >/dev/null", input=unit.encode())
    ssh.run("echo kept > ~/on-disk && sudo -n systemctl daemon-reload && sudo -n systemctl enable --now edgedl-probe")
    # the host's own enabled units (ssh, postgresql ...) are not the device's
    wants = device.run("ls", "/etc/systemd/system/multi-user.target.wants").stdout.split()
    assert wants == ["edgedl-probe.service"]
    before = device.processes()
    port, old_init = device.port, device.init_pid
    device.power_cycle()
    assert device.port == port and device.init_pid != old_init
    assert [pid for pid in before if pid_alive(pid)] == []
    assert ssh.run("cat ~/on-disk").stdout.strip() == "kept"
    assert ssh.run("systemctl is-active edgedl-probe.service", check=False).stdout.strip() == "active"
    assert ssh.run("sudo -n systemctl is-system-running", check=False).stdout.strip() == "running", device.failed_units()
    deadline = time.monotonic() + 15
    while not port_open(http_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/on-disk", timeout=5) as resp:
        assert resp.read().decode().strip() == "kept"
