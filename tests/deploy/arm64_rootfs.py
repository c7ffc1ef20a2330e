"""A stand-in Raspberry Pi: a Debian bookworm arm64 root filesystem (debootstrap + qemu-user-static through
binfmt_misc) with python3, python3-venv, openssh-server and rsync, running its own sshd on loopback in a chroot.
Building it takes ~5 minutes (the second stage runs emulated); it is cached as a zstd tarball under build/
keyed by its recipe and restored in seconds. ../shared/ARM64.md, full path."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# tests/deploy is on sys.path wherever this module is imported
from loopback_sshd import LoopbackLogin, free_port, throwaway_keys, wait_listening, write_known_hosts

INCLUDE = ["python3", "python3-venv", "ca-certificates", "openssh-server", "rsync"]
SUITE = "bookworm"
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def marks(reason: str = "slow arm64 root filesystem test: set EDGEDL_ARM64_ROOTFS=1") -> list:
    """A rootfs test module's ``pytestmark``: it runs only with EDGEDL_ARM64_ROOTFS=1 and the tools at hand."""
    import pytest

    return [pytest.mark.skipif(os.environ.get("EDGEDL_ARM64_ROOTFS") != "1", reason=reason),
            pytest.mark.skipif(available() is not None, reason=str(available()))]


def available() -> str | None:
    for tool in ("/usr/sbin/debootstrap", "/usr/bin/qemu-aarch64-static", "/usr/sbin/update-binfmts", "/usr/bin/zstd"):
        if not Path(tool).exists():
            return f"{tool} is missing (.ci/run installs debootstrap, qemu-user-static, binfmt-support, zstd)"
    if os.geteuid() != 0:
        return "chroot and mounts need root"
    return None


def mirror() -> str:
    """The Debian mirror the machine's apt sources already name (never a hard-coded host)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text()
        for block in text.split("\n\n"):
            if re.search(rf"^Suites:.*\b{SUITE}\b", block, re.M) and "security" not in block:
                m = re.search(r"^URIs:\s*(\S+)", block, re.M)
                if m:
                    return m.group(1)
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.is_file():
            m = re.search(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", path.read_text(), re.M)
            if m:
                return m.group(1)
    raise RuntimeError("no Debian bookworm mirror in the apt sources")


def ensure_binfmt() -> bool:
    """Make the kernel run aarch64 binaries through qemu; returns True when this call enabled it."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if (BINFMT / "qemu-aarch64").exists():
        return False
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True, capture_output=True)
    return True


def rootfs_tarball(cache: Path) -> Path:
    recipe = {"suite": SUITE, "include": INCLUDE, "mirror": mirror(), "version": 1}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"arm64-rootfs-{key}.tar.zst"
    with open(cache / ".rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.is_file():
            _build(cache / f"arm64-rootfs-build-{key}", tarball, recipe["mirror"])
    return tarball


def unmount_under(root: Path) -> None:
    """Unmount everything mounted below root (debootstrap's second stage mounts proc and sysfs; a failed run can
    leave them), deepest first; refuse to go on while anything is still mounted there."""
    root = root.resolve()
    prefix = str(root) + "/"
    for _ in range(3):
        mounted = sorted((line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                          if line.split()[1].startswith(prefix)), key=len, reverse=True)
        if not mounted:
            return
        for point in mounted:
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    raise RuntimeError(f"could not unmount everything under {root}; not deleting it")


def _safe_rmtree(root: Path) -> None:
    if root.exists():
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _build(root: Path, tarball: Path, mirror_url: str) -> None:
    _safe_rmtree(root)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase", f"--include={','.join(INCLUDE)}",
                    SUITE, str(root), mirror_url], check=True, capture_output=True, env=env)
    policy = root / "usr/sbin/policy-rc.d"  # packages must not start services inside the build
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    subprocess.run(["chroot", str(root), "/debootstrap/debootstrap", "--second-stage"], check=True,
                   capture_output=True, env={**env, "PIP_FIND_LINKS": "", "PIP_CERT": ""})
    unmount_under(root)
    for key in root.glob("etc/ssh/ssh_host_*"):
        key.unlink()  # each restore gets fresh throwaway host keys
    tmp = tarball.with_suffix(".partial")
    subprocess.run(["tar", "--zstd", "--one-file-system", "-cf", str(tmp), "-C", str(root), "."], check=True)
    tmp.rename(tarball)
    _safe_rmtree(root)


@dataclass
class RunningPi:
    root: Path
    port: int
    sshd_pid: int
    mounts: list[Path]


def start(tarball: Path, root: Path, port: int, authorized_key: str, host_key: Path) -> RunningPi:
    root.mkdir(parents=True)
    subprocess.run(["tar", "--zstd", "-xf", str(tarball), "-C", str(root)], check=True)
    mounts = []
    for src, dest in (("proc", root / "proc"), ("/dev", root / "dev")):
        if src == "proc":
            subprocess.run(["mount", "-t", "proc", "proc", str(dest)], check=True)
        else:
            subprocess.run(["mount", "--bind", src, str(dest)], check=True)
        mounts.append(dest)
    try:
        # qemu shows the x86 /proc/cpuinfo; onnxruntime then segfaults when /sys is visible too - /sys is not mounted
        (root / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "root/.ssh/authorized_keys").write_text(authorized_key)
        shutil.copy(host_key, root / "etc/ssh/ssh_host_ed25519_key")
        shutil.copy(host_key.with_suffix(".pub"), root / "etc/ssh/ssh_host_ed25519_key.pub")
        (root / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
        (root / "run/sshd").mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(["chroot", str(root), "/usr/sbin/sshd", "-D", "-e", "-p", str(port),
                                 "-o", "ListenAddress=127.0.0.1", "-o", "HostKey=/etc/ssh/ssh_host_ed25519_key",
                                 "-o", "PermitRootLogin=prohibit-password", "-o", "UsePAM=no"],
                                stdout=open(root / "sshd.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_listening(proc, port, root / "sshd.log", timeout=60, what="arm64 sshd", interval=0.3)
    except BaseException:
        unmount_under(root)  # never leave /dev bind-mounted under a tree someone may delete
        raise
    return RunningPi(root=root, port=port, sshd_pid=proc.pid, mounts=mounts)


@dataclass
class EmulatedPi(LoopbackLogin):
    """A booted stand-in Pi and how to log in to it (root, a throwaway key, a known_hosts entry)."""
    port: int
    identity: Path
    known_hosts: Path
    running: RunningPi
    binfmt_enabled: bool  # this boot registered qemu-aarch64; shutdown() unregisters it
    user: str = "root"

    @property
    def root(self) -> Path:
        return self.running.root


def boot(work: Path, cache: Path) -> EmulatedPi:
    """Register qemu if needed, restore the root filesystem (built once into ``cache``) under ``work/rootfs`` and
    start its sshd on a free loopback port with fresh keys under ``work``. Undo with :func:`shutdown`."""
    enabled = ensure_binfmt()
    try:
        work.mkdir(parents=True, exist_ok=True)
        tarball = rootfs_tarball(cache)
        host_key, user_key = throwaway_keys(work)
        port = free_port()
        running = start(tarball, work / "rootfs", port, user_key.with_suffix(".pub").read_text(), host_key)
    except BaseException:
        _disable_binfmt(enabled)
        raise
    return EmulatedPi(port=port, identity=user_key, running=running, binfmt_enabled=enabled,
                      known_hosts=write_known_hosts(work / "known_hosts", port, host_key.with_suffix(".pub")))


@contextmanager
def booted(work: Path, cache: Path) -> Iterator[EmulatedPi]:
    """:func:`boot`, shut down again on leaving (a module fixture's body: ``with booted(...) as pi: yield pi``)."""
    pi = boot(work, cache)
    try:
        yield pi
    finally:
        shutdown(pi)


def shutdown(pi: EmulatedPi) -> None:
    stop(pi.running)
    _disable_binfmt(pi.binfmt_enabled)


def _disable_binfmt(enabled_here: bool) -> None:
    if enabled_here:
        subprocess.run(["update-binfmts", "--disable", "qemu-aarch64"], check=False, capture_output=True)


def stop(pi: RunningPi) -> None:
    pid_file = pi.root / "root/edgedl/run/edgedl.pid"
    pids = [pi.sshd_pid] + ([int(pid_file.read_text())] if pid_file.is_file() else [])
    for pid in reversed(pids):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            time.sleep(1)
    for mount in reversed(pi.mounts):
        subprocess.run(["umount", "-l", str(mount)], check=False)
    unmount_under(pi.root)
