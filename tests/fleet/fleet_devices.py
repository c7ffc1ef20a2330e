"""Test devices for `edgedl fleet`: several real OpenSSH servers on loopback (tests/deploy/loopback_sshd.py),
each "device" a directory on this machine with its own sshd port and server port, and an Ansible inventory
(INI) that describes them the way a user describes real devices."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import loopback_sshd  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"  # the devices' Python (also Ansible's interpreter there)


@dataclass
class Device:
    name: str
    sshd: "loopback_sshd.LoopbackSSHD"
    remote_dir: Path
    port: int  # the edgedl server's port on this device
    group: str = "x86-server"
    extra: dict = field(default_factory=dict)

    def current(self) -> str | None:
        link = self.remote_dir / "current"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def pid(self) -> str | None:
        p = self.remote_dir / "run" / "edgedl.pid"
        return p.read_text().strip() if p.is_file() else None

    def inventory_line(self, **overrides) -> str:
        s = self.sshd
        values = {"ansible_host": "127.0.0.1", "ansible_port": s.port, "ansible_user": s.user,
                  "ansible_ssh_private_key_file": s.identity, "ansible_python_interpreter": SYSTEM_PYTHON,
                  # sshd from loopback_sshd has no sftp subsystem: send files through the ssh channel
                  "ansible_ssh_transfer_method": "piped",
                  "ansible_ssh_common_args": f"'-F /dev/null -o UserKnownHostsFile={s.known_hosts}'",
                  "edgedl_remote_dir": self.remote_dir, "edgedl_port": self.port, "edgedl_bind": "127.0.0.1",
                  "edgedl_python": SYSTEM_PYTHON, "edgedl_ready_timeout": 60, **self.extra, **overrides}
        return self.name + " " + " ".join(f"{k}={v}" for k, v in values.items())


def write_inventory(path: Path, devices: list[Device], overrides: dict[str, dict] | None = None,
                    groups: dict[str, str] | None = None, extra_lines: list[str] | None = None) -> Path:
    """INI inventory: one [group] per device profile; ``overrides`` {device: {var: value}} adapt single devices."""
    by_group: dict[str, list[str]] = {}
    for d in devices:
        group = (groups or {}).get(d.name, d.group)
        by_group.setdefault(group, []).append(d.inventory_line(**(overrides or {}).get(d.name, {})))
    text = "".join(f"[{g}]\n" + "\n".join(lines) + "\n\n" for g, lines in by_group.items())
    path.write_text(text + "\n".join(extra_lines or []) + "\n")
    return path
