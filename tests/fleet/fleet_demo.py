"""The README's fleet example, for real: three devices (real OpenSSH servers on loopback, as in the tests), a
rolling rollout, `fleet status`, and a rollout of a release that crashes on start (rolled back, rollout stopped).
Prints every command with its output; everything it starts is stopped at the end (by pid).

    .venv/bin/python tests/fleet/fleet_demo.py      (root, openssh-server, the fleet extra; ~2 min)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fleet_devices import Device, loopback_sshd, write_inventory  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from edgedl_testing import build_zoo, rehashed_bundle

    zoo = build_zoo(ROOT / "build" / "test-zoo")
    work = Path(tempfile.mkdtemp(prefix="edgedl-fleet-demo-"))
    env = {**os.environ, "COLUMNS": "130", "EDGEDL_CACHE": str(ROOT / "build" / "cache")}

    def cli(*args, show=True):
        proc = subprocess.run([sys.executable, "-m", "edgedl", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=work)
        if show:
            print(f"$ edgedl {' '.join(map(str, args))}\n{proc.stdout}{proc.stderr}".rstrip() + "\n", flush=True)
        return proc

    devices = []
    try:
        for i in range(3):
            devices.append(Device(name=f"dev{i + 1}", sshd=loopback_sshd.start(work / f"sshd{i + 1}"),
                                  remote_dir=work / f"dev{i + 1}", port=loopback_sshd.free_port()))
        write_inventory(work / "inventory.ini", devices)
        cli("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--target", "x86-server", "-o", "digits-v1", "--no-tarball", show=False)
        cli("package", zoo["mlp"].onnx, "--name", "digits", "--target", "x86-server", "-o", "digits-v2", "--no-tarball", show=False)
        # a release whose server crashes on start (hashes consistent): it must be rolled back
        rehashed_bundle(work / "digits-v2", work / "digits-v3-crashes", "start.sh",
                        "#!/bin/sh\necho 'simulated crash on start' >&2\nexit 3\n")
        print(f"# inventory.ini (3 loopback sshd devices, group = device profile)\n{(work / 'inventory.ini').read_text()}")
        cli("fleet", "deploy", "digits-v1", "-i", "inventory.ini", "--serial", "2")
        cli("fleet", "deploy", "digits-v1", "-i", "inventory.ini", "--serial", "100%")
        cli("fleet", "deploy", "digits-v2", "-i", "inventory.ini", "--check")
        cli("fleet", "deploy", "digits-v2", "-i", "inventory.ini", "--serial", "1")
        cli("fleet", "deploy", "digits-v3-crashes", "-i", "inventory.ini", "--serial", "1", "--max-fail", "0")
        cli("fleet", "status", "-i", "inventory.ini")
    finally:
        for d in devices:
            loopback_sshd.stop_release_services(d.remote_dir)
            loopback_sshd.stop(d.sshd)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
