"""The README's systemd deploy example, for real: a device booted with a real systemd (systemd_device.py, user pi
with passwordless sudo), a deploy that installs an enabled unit, `deploy status`, a crash that systemd restarts,
a power cut, and a deploy while another deploy holds the directory. Prints every command with its output;
everything it starts is stopped at the end.

    .venv/bin/python tests/deploy/systemd_demo.py      (root, systemd, openssh-server, sudo; ~1 min)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import systemd_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from edgedl_testing import build_zoo

    zoo = build_zoo(ROOT / "build" / "test-zoo")
    work = Path(tempfile.mkdtemp(prefix="edgedl-systemd-demo-"))
    env = {**os.environ, "COLUMNS": "130", "EDGEDL_CACHE": str(ROOT / "build" / "cache")}
    device = None

    def cli(*args, show=True):
        proc = subprocess.run([sys.executable, "-m", "edgedl", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=work)
        if show:
            shown = " ".join(str(a) for a in args).replace(str(work) + "/", "")
            print(f"$ edgedl {shown}\n{proc.stdout}{proc.stderr}".rstrip() + "\n", flush=True)
        return proc

    def inside(*argv):
        out = device.run(*argv, check=False)
        print(f"[on the device] $ {' '.join(argv)}\n{out.stdout}{out.stderr}".rstrip() + "\n", flush=True)
        return out

    try:
        device = systemd_device.start(work / "device")
        conn = ["--host", device.host, "--port", str(device.port), "--identity", "key", "--known-hosts", "known_hosts",
                "--ssh-config", "/dev/null"]
        shutil.copy(device.identity, work / "key")
        shutil.copy(device.known_hosts, work / "known_hosts")
        port = str(systemd_device.free_port())
        cli("package", zoo["mlp"].onnx, "--target", "x86-server", "-o", "mlp-x86", "--no-tarball", show=False)
        print(f"# a device running systemd 252 as PID 1, user pi with passwordless sudo, booted in {device.boot_s:.2f} s\n")
        cli("deploy", "mlp-x86", *conn, "--serve-host", "127.0.0.1", "--serve-port", port)
        cli("deploy", "status", *conn)
        inside("systemctl", "status", "--no-pager", "-n", "0", "edgedl.service")
        pid = device.run("systemctl", "show", "-p", "MainPID", "--value", "edgedl.service").stdout.strip()
        inside("kill", "-KILL", pid)
        time.sleep(4)
        cli("deploy", "logs", *conn, "-n", "4")
        inside("systemctl", "show", "-p", "NRestarts", "-p", "ActiveState", "edgedl.service")
        systemd_device.power_cycle(device)
        time.sleep(3)
        print("# after a power cut (the device's processes killed, booted again):\n")
        cli("deploy", "status", *conn)
        print("# another deploy (ann's) holds the directory:\n")
        device.run("sh", "-c", "cd /home/pi/edgedl && mkdir run/deploy.lock && echo 'tok ann@laptop:4242' > "
                   "run/deploy.lock/owner && chown -R pi run")
        cli("deploy", "mlp-x86", *conn, "--serve-host", "127.0.0.1", "--serve-port", port)
    finally:
        if device is not None:
            device.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
