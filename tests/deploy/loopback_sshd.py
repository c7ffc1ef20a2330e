"""A real OpenSSH server on loopback for deploy tests: throwaway host and user keys, a known_hosts entry,
started on a free port and stopped by its pid. The "device" is this machine; each test passes its own
``--remote-dir`` so deploys never share state."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SSHD = "/usr/sbin/sshd"


class LoopbackLogin:
    """What edgedl needs to reach a test device over ssh on 127.0.0.1 (mixed into the device dataclasses, which
    have ``port``, ``user``, ``identity`` and ``known_hosts``)."""

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1"

    @property
    def address(self) -> str:
        """USER@127.0.0.1:PORT, as the device options take it (and as edgedl labels the device)."""
        return f"{self.host}:{self.port}"

    def cli_args(self, remote_dir: Path | str) -> list[str]:
        return ["--host", self.host, "--port", str(self.port), "--identity", str(self.identity),
                "--known-hosts", str(self.known_hosts), "--ssh-config", "/dev/null", "--remote-dir", str(remote_dir)]

    def ssh_args(self, flag: str = "--remote") -> list[str]:
        """The device options of bench --remote, debug compare --remote (``flag``) or optimize --device."""
        return [flag, self.address, "-i", str(self.identity), "--known-hosts", str(self.known_hosts),
                "--ssh-config", "/dev/null"]

    def target(self, **kw):
        from edgedl.stages.device.ssh import SSHTarget

        return SSHTarget(host="127.0.0.1", user=self.user, port=self.port, identity=self.identity,
                         known_hosts=self.known_hosts, ssh_config=Path("/dev/null"), **kw)


@dataclass
class LoopbackSSHD(LoopbackLogin):
    port: int
    user: str
    identity: Path
    known_hosts: Path
    host_key_pub: Path
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def throwaway_keys(directory: Path) -> tuple[Path, Path]:
    """``(host key, user key)``: ed25519 pairs without a passphrase in ``directory``, made once."""
    host_key, user_key = directory / "host_ed25519", directory / "user_ed25519"
    for key in (host_key, user_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return host_key, user_key


def write_known_hosts(path: Path, port: int, host_key_pub: Path) -> Path:
    """A known_hosts file trusting exactly ``host_key_pub`` for 127.0.0.1:``port``."""
    key_type, key_b64 = host_key_pub.read_text().split()[:2]
    path.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    return path


def wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float, what: str = "sshd",
                   interval: float = 0.1) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; raise (and kill ``proc``) if it exits or times out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(interval)
    proc.kill()
    raise RuntimeError(f"{what} did not listen within {timeout:.0f} s: {log.read_text(errors='replace')[-500:]}")


def available() -> str | None:
    """None when an sshd can be started here, else why not."""
    if not Path(SSHD).is_file():
        return "openssh-server is not installed (.ci/run installs it)"
    if not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        return "the OpenSSH client is not installed"
    if os.geteuid() != 0:
        return "sshd with a throwaway config needs root here"
    return None


def start(workdir: Path) -> LoopbackSSHD:
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    host_key, user_key = throwaway_keys(workdir)
    (workdir / "authorized_keys").write_text((workdir / "user_ed25519.pub").read_text())
    port = free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"HostKey {host_key}\nAuthorizedKeysFile {workdir / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        f"StrictModes no\nUsePAM no\nPidFile {workdir / 'sshd.pid'}\nMaxStartups 50\nMaxSessions 50\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log = open(workdir / "sshd.log", "ab")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config), "-p", str(port), "-o", "ListenAddress=127.0.0.1"],
                            stdout=log, stderr=log)
    wait_listening(proc, port, workdir / "sshd.log", timeout=15)
    known_hosts = write_known_hosts(workdir / "known_hosts", port, workdir / "host_ed25519.pub")
    import pwd

    return LoopbackSSHD(port=port, user=pwd.getpwuid(os.geteuid()).pw_name, identity=user_key,
                        known_hosts=known_hosts, host_key_pub=workdir / "host_ed25519.pub", pid=proc.pid)


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[LoopbackSSHD]:
    """A started sshd for the block, stopped after it; skips the calling test where none can start here."""
    why = available()
    if why is not None:
        import pytest

        pytest.skip(why)
    server = start(workdir)
    try:
        yield server
    finally:
        stop(server)


def stop(server: LoopbackSSHD) -> None:
    try:
        os.kill(server.pid, signal.SIGTERM)
        os.waitpid(server.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def stop_release_services(remote_dir: Path) -> None:
    """Stop a supervised server a test deployed (by the pid file's process group)."""
    pid_file = Path(remote_dir) / "run" / "edgedl.pid"
    if pid_file.is_file():
        pid = int(pid_file.read_text().strip())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            time.sleep(1)
