"""The SSH layer: the system OpenSSH client (``ssh``) and ``rsync`` over it.

Why the system client and not an SSH library (paramiko, asyncssh): it is what users already configure and trust -
``~/.ssh/config`` host aliases, ProxyJump, agents, hardware keys and ``known_hosts`` all just work; rsync over it
gives resumable, delta-compressed copies of a 40 MB wheelhouse over Wi-Fi; and the laptop needs no extra
compiled dependency (paramiko pulls cryptography/bcrypt/pynacl). The device needs only sshd.

Host keys are verified against known_hosts (``StrictHostKeyChecking=yes``); ``accept_new_host_key`` switches to
``accept-new`` (trust on first use, still refuses a *changed* key) and is only set by an explicit CLI flag.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgedl.errors import EdgeDLError

# a user and a host (or ~/.ssh/config alias) that neither ssh nor a shell reads as anything else: no leading '-'
# (ssh would take it for an option), no shell metacharacters (ssh runs ProxyCommand and friends through a shell)
_TARGET_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@)?"
                        r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)(?::(?P<port>[0-9]+))?$")


@dataclass(frozen=True)
class SSHTarget:
    host: str
    user: str | None = None
    port: int | None = None
    identity: Path | None = None
    known_hosts: Path | None = None  # default: ssh's own (~/.ssh/known_hosts)
    accept_new_host_key: bool = False
    connect_timeout: int = 10
    ssh_config: Path | None = None  # e.g. /dev/null in tests, so the user's ~/.ssh/config cannot interfere

    @classmethod
    def parse(cls, text: str, **kwargs) -> "SSHTarget":
        """``[USER@]HOST[:PORT]``; an explicit ``port=`` keyword wins over ``:PORT``."""
        m = _TARGET_RE.fullmatch(text.strip())
        if not m:
            raise EdgeDLError(f"--host {text!r} is not USER@HOST[:PORT]; e.g. pi@raspberrypi.local or pi@10.0.0.7:2222")
        port = kwargs.pop("port", None) or (int(m["port"]) if m["port"] else None)
        if port is not None and not 0 < port < 65536:
            raise EdgeDLError(f"SSH port {port} is not a TCP port; use 1-65535")
        return cls(host=m["host"].strip("[]"), user=m["user"], port=port, **kwargs)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def label(self) -> str:
        return self.destination + (f":{self.port}" if self.port else "")

    def ssh_options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
                "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}"]
        if self.ssh_config:
            opts = ["-F", str(self.ssh_config), *opts]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.port:
            opts += ["-p", str(self.port)]
        return opts

    # --- running things -------------------------------------------------------------------------------------
    def run(self, script: str, *args: str, check: bool = True, timeout: float = 300,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run a POSIX sh ``script`` on the device with positional ``args`` ($1, $2 ...); text output."""
        remote = " ".join(["sh", "-c", shlex.quote(script), "edgedl", *map(shlex.quote, args)])
        cmd = [_require("ssh"), *self.ssh_options(), "--", self.destination, remote]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input if input is not None else b"")
        except subprocess.TimeoutExpired:
            raise EdgeDLError(f"{self.label} did not answer within {timeout:.0f} s; check the device and the network") from None
        out = subprocess.CompletedProcess(cmd, proc.returncode, proc.stdout.decode(errors="replace"),
                                          proc.stderr.decode(errors="replace"))
        if out.returncode == 255:
            raise self.connection_error(out.stderr)
        if check and out.returncode != 0:
            raise RemoteCommandError(self, out)
        return out

    def connection_error(self, stderr: str) -> EdgeDLError:
        text = stderr.strip()
        last = text.splitlines()[-1] if text else "ssh failed without a message"
        if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
            where = self.known_hosts or "~/.ssh/known_hosts"
            return EdgeDLError(f"the host key of {self.label} is not in {where} (or it changed): verify the device's "
                               f"fingerprint and add it (ssh-keyscan -p {self.port or 22} {self.host} >> {where}), "
                               "or pass --accept-new-host-key to trust it on first use")
        if "Permission denied" in text:
            return EdgeDLError(f"{self.label} refused the SSH login ({last}); pass --identity KEY or install your key with ssh-copy-id")
        if any(s in text for s in ("Connection refused", "timed out", "No route to host", "Could not resolve",
                                   "Name or service not known", "Network is unreachable", "Connection closed")):
            return EdgeDLError(f"cannot reach {self.label} over SSH ({last}); check the address, port and that sshd runs")
        return EdgeDLError(f"ssh to {self.label} failed: {last}")

    def copy_dir(self, local: Path, remote: str, link_dest: str | None = None, use_rsync: bool = True,
                 timeout: float = 1800, copy_links: bool = False, delete: bool = True) -> None:
        """Copy the contents of ``local`` into directory ``remote`` (created). rsync when both ends have it
        (``link_dest``: an existing remote dir, relative to ``remote``, whose identical files are hard-linked
        instead of sent); otherwise a tar stream over ssh. ``copy_links`` sends the files symlinks point to;
        ``delete`` removes remote files that ``local`` does not have."""
        if use_rsync and shutil.which("rsync"):
            self.run('mkdir -p "$1"', remote)
            rsh = " ".join(shlex.quote(a) for a in [_require("ssh"), *self.ssh_options()])
            # --protect-args: the remote path travels inside rsync's protocol, not through the device's shell, so
            # a directory with spaces is just that directory (rsync 3.2.4+ does this by default, older ones do not)
            cmd = ["rsync", "-a", "--partial", "--protect-args", "-e", rsh, *(["--delete"] if delete else []),
                   *(["-L"] if copy_links else [])]
            if link_dest:
                # --checksum: rsync's quick check (size + mtime) would hard-link a previous release's file that
                # differs only in content - seen with two bundles packaged in the same second; the device-side
                # hash check then refused the release
                cmd += [f"--link-dest={link_dest}", "--checksum"]
            cmd += ["--", f"{local}/", f"{self.destination}:{remote}/"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise EdgeDLError(f"copying the bundle to {self.label} took over {timeout:.0f} s; check the link") from None
            if proc.returncode != 0:
                if "Host key verification failed" in proc.stderr or proc.returncode == 255:
                    raise self.connection_error(proc.stderr)
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                raise EdgeDLError(f"copying the bundle to {self.label} failed (rsync exit {proc.returncode}: {tail}); "
                                  "the running release was not touched - fix the cause and deploy again")
            return
        tar = subprocess.Popen(["tar", *(["-h"] if copy_links else []), "-C", str(local), "-czf", "-", "."], stdout=subprocess.PIPE)
        try:
            data, _ = tar.communicate(timeout=timeout)
        finally:
            tar.kill()
        if tar.returncode != 0:
            raise EdgeDLError(f"packing {local} with tar failed (exit {tar.returncode})")
        self.run('mkdir -p "$1" && tar -C "$1" -xzf -', remote, input=data, timeout=timeout)


class RemoteCommandError(EdgeDLError):
    def __init__(self, target: SSHTarget, proc: subprocess.CompletedProcess):
        self.proc = proc
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        super().__init__(f"a command on {target.label} failed (exit {proc.returncode}): {' | '.join(tail) or 'no output'}")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise EdgeDLError(f"the '{tool}' command is not installed on this machine; install OpenSSH client (and rsync)")
    return path
