"""A stand-in device with a real systemd for deploy tests.

The host's PID 1 is not systemd, so the "device" boots ``/lib/systemd/systemd`` as PID 1 of its own PID, mount,
UTS, IPC and cgroup namespaces, on an overlay of this machine's root filesystem (writes land in ``workdir/upper``
and are thrown away). It runs its own sshd (a unit of its own, on a free loopback port) and has a user ``pi`` with
passwordless sudo, like Raspberry Pi OS, so tests deploy into it over SSH exactly like into
:mod:`tests.deploy.loopback_sshd`'s host.

Isolation from the host (the namespace shares the host's NETWORK, so everything it starts listens on the host's
ports):
- it boots into its own ``edgedl-test.target`` (multi-user.target + the test sshd), never the default target;
  the units the HOST enabled (its /etc/systemd/system/*.wants) are hidden by opaque empty .wants directories, so
  only what the device itself enables (e.g. a deployed edgedl.service) starts at its boot;
- every unit that would touch kernel-global or host state is masked (:data:`MASKED_UNITS`), and systemd runs with
  ``container=edgedl-test`` so units conditioned on "not in a container" skip themselves;
- ``/proc/sys``, ``/proc/sysrq-trigger`` and ``/sys`` are read-only inside, ``/dev`` is a private tmpfs with a few
  bind-mounted device nodes and its own devpts, and systemd gets its own cgroup subtree
  (``/sys/fs/cgroup/{systemd,unified}/edgedl-device-<id>``) through a cgroup namespace, so the host's cgroup
  hierarchies and their roots are never written to.

:func:`power_cycle` kills it like a power cut and boots it again on the same files and port.
:func:`stop` SIGKILLs the namespace's PID 1 (the kernel then kills everything in the namespace), kills anything
left in the device's cgroups, removes them and the workdir. It is idempotent and also runs at exit.
"""

from __future__ import annotations

import atexit
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# tests/deploy is on sys.path wherever this module is imported; free_port is part of this module's API too
from loopback_sshd import LoopbackLogin, free_port, throwaway_keys, write_known_hosts  # noqa: F401

SYSTEMD = "/lib/systemd/systemd"
SSHD = "/usr/sbin/sshd"
SUDO = "/usr/bin/sudo"
TARGET = "edgedl-test.target"
SSHD_UNIT = "edgedl-test-sshd.service"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_HIERARCHIES = ("systemd", "unified")  # the hybrid layout of this machine: name=systemd (v1) + cgroup2
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Units the device must never run: each touches kernel-global or host state (binfmt registrations the arm64 tests
# rely on, sysctls, kernel modules, the clock, pstore, host tty/serial consoles, host filesystems) or starts a
# host-facing service on the shared network (Debian's sshd on port 22, postgres), or is simply not wanted in a
# throwaway test boot (first-boot wizards, TPM measurements, utmp, periodic maintenance timers).
MASKED_UNITS = (
    # binfmt_misc is kernel-global: the arm64 tests need the host's qemu registrations intact
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "binfmt-support.service",
    # kernel-global settings, modules, clock, pstore, entropy
    "systemd-sysctl.service", "systemd-modules-load.service", "kmod-static-nodes.service", "modprobe@.service",
    "systemd-timesyncd.service", "systemd-pstore.service", "systemd-random-seed.service",
    # kernel API filesystems (already mounted on the host, or global)
    "sys-kernel-config.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "dev-mqueue.mount",
    # first-boot / image / TPM machinery
    "systemd-firstboot.service", "systemd-repart.service", "systemd-machine-id-commit.service",
    "systemd-pcrphase.service", "systemd-pcrphase-sysinit.service", "systemd-pcrphase-initrd.service",
    "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
    # consoles and gettys on the host's ttys
    "getty.target", "getty@.service", "serial-getty@.service", "console-getty.service",
    "container-getty@.service", "getty-static.service", "systemd-ask-password-console.path",
    "systemd-ask-password-wall.path",
    # host-facing services on the shared network namespace
    "ssh.service", "ssh.socket", "postgresql.service", "postgresql@.service", "systemd-networkd.service",
    "systemd-networkd.socket", "systemd-networkd-wait-online.service", "systemd-network-generator.service",
    # periodic maintenance of the host's disks and packages
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "systemd-tmpfiles-clean.timer",
    # fsck/remount of the root (the device's root is an overlay)
    "systemd-remount-fs.service", "systemd-fsck-root.service",
)

_LIVE: dict[int, "SystemdDevice"] = {}


@dataclass
class SystemdDevice(LoopbackLogin):
    port: int
    user: str
    identity: Path
    known_hosts: Path
    host_key_pub: Path
    workdir: Path
    pid: int  # the unshare process (host pid); its child is the namespace's systemd
    init_pid: int  # host pid of the namespace's PID 1 (systemd)
    cgroups: tuple[Path, ...]
    boot_s: float  # seconds from Popen to sshd listening and systemd running/degraded
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    stopped: bool = False

    def run(self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run ``argv`` as root inside the device (its namespaces and root), text output captured."""
        return _nsenter(self.init_pid, list(argv), check=check, timeout=timeout, input=input)

    def processes(self) -> list[int]:
        """Host pids of every process in the device's PID namespace (empty once it is stopped)."""
        return _pids_in_pidns(self.init_pid)

    def failed_units(self) -> list[str]:
        out = self.run("systemctl", "--failed", "--plain", "--no-legend", "--no-pager", check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        stop(self)

    def power_cycle(self, timeout: float = 45) -> "SystemdDevice":
        return power_cycle(self, timeout)


def available() -> str | None:
    """None when a systemd device can be booted here, else why not."""
    if os.geteuid() != 0:
        return "booting systemd in its own namespaces needs root"
    for binary, why in ((SYSTEMD, "systemd is not installed"), (SSHD, "openssh-server is not installed"),
                        (SUDO, "sudo is not installed (.ci/run installs it)")):
        if not Path(binary).is_file():
            return f"{why} ({binary} missing)"
    for tool in ("unshare", "nsenter", "chroot", "mount", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        return "/proc/filesystems is unreadable"
    if "\toverlay\n" not in filesystems:
        return "overlayfs is not available in this kernel"
    for hierarchy in CGROUP_HIERARCHIES:
        if not (CGROUP_ROOT / hierarchy / "cgroup.procs").is_file():
            return f"cgroup hierarchy {CGROUP_ROOT / hierarchy} is not mounted (this module expects the hybrid layout)"
    return None


def _free_id(used: set[int], start: int = 1001) -> int:
    n = start
    while n in used:
        n += 1
    return n


def _write_device_files(upper: Path, keys: Path, port: int, user: str) -> None:
    """The device's own files, written into the overlay's upper layer before it is mounted."""
    etc = upper / "etc"
    (etc / "sudoers.d").mkdir(parents=True, exist_ok=True)
    used_uids = {p.pw_uid for p in pwd.getpwall()}
    used_gids = {g.gr_gid for g in grp.getgrall()}
    uid = _free_id(used_uids | used_gids)
    home = upper / "home" / user
    passwd = Path("/etc/passwd").read_text()
    (etc / "passwd").write_text(passwd.rstrip("\n") + f"\n{user}:x:{uid}:{uid}:Raspberry Pi user,,,:/home/{user}:/bin/bash\n")
    shadow = Path("/etc/shadow").read_text()
    (etc / "shadow").write_text(shadow.rstrip("\n") + f"\n{user}:*:19000:0:99999:7:::\n")
    os.chmod(etc / "shadow", 0o640)
    shutil.copystat("/etc/shadow", etc / "shadow")
    os.chown(etc / "shadow", 0, os.stat("/etc/shadow").st_gid)
    groups = []
    for line in Path("/etc/group").read_text().splitlines():
        name = line.split(":", 1)[0]
        if name in ("sudo", "adm", "systemd-journal") and line.count(":") == 3:
            members = line.rsplit(":", 1)[1]
            line = line + ("," if members else "") + user
        groups.append(line)
    groups.append(f"{user}:x:{uid}:")
    (etc / "group").write_text("\n".join(groups) + "\n")
    sudoers = etc / "sudoers.d" / user
    sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD:ALL\n")
    os.chmod(sudoers, 0o440)
    (etc / "hostname").write_text("raspberrypi\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n::1\tlocalhost ip6-localhost ip6-loopback\n")

    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "authorized_keys").write_text((keys / "user_ed25519.pub").read_text())
    os.chmod(home, 0o755)
    os.chmod(home / ".ssh", 0o700)
    os.chmod(home / ".ssh" / "authorized_keys", 0o600)
    for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
        os.chown(path, uid, uid)

    conf = etc / "edgedl-test"
    conf.mkdir(exist_ok=True)
    shutil.copy(keys / "host_ed25519", conf / "ssh_host_ed25519_key")
    os.chmod(conf / "ssh_host_ed25519_key", 0o600)
    (conf / "sshd_config").write_text(
        "HostKey /etc/edgedl-test/ssh_host_ed25519_key\nAuthorizedKeysFile .ssh/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin no\nUsePAM no\nPidFile /run/edgedl-test-sshd.pid\nMaxStartups 50\nMaxSessions 50\n"
        "AcceptEnv LANG LC_*\nSubsystem sftp /usr/lib/openssh/sftp-server\n")

    units = etc / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    # units the HOST enabled (its /etc/systemd/system/*.wants: ssh, postgres, timers ... and whatever gets
    # installed there later) are hidden: opaque, empty .wants directories in the upper layer; the device's own
    # `systemctl enable` writes into them
    for wants in Path("/etc/systemd/system").glob("*.wants"):
        hidden = units / wants.name
        hidden.mkdir(exist_ok=True)
        os.setxattr(hidden, "trusted.overlay.opaque", b"y")
    for unit in MASKED_UNITS:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    (units / TARGET).write_text(
        "[Unit]\nDescription=edgedl test device (multi-user system with its own sshd)\n"
        f"Requires=basic.target\nWants=multi-user.target {SSHD_UNIT}\nAfter=basic.target multi-user.target {SSHD_UNIT}\n"
        "AllowIsolate=yes\n")
    (units / SSHD_UNIT).write_text(
        "[Unit]\nDescription=edgedl test device OpenSSH server (loopback only)\nAfter=network.target\n\n"
        "[Service]\nRuntimeDirectory=sshd\nRuntimeDirectoryMode=0755\n"
        f"ExecStart={SSHD} -D -e -f /etc/edgedl-test/sshd_config -p {port} -o ListenAddress=127.0.0.1\n"
        "Restart=on-failure\n\n[Install]\nWantedBy=" + TARGET + "\n")


_BOOT_SH = r"""
set -eu
W="$1"; M="$W/merged"; shift
# own cgroup subtree (the cgroup namespace created by unshare below is rooted here)
for cg in "$@"; do echo $$ > "$cg/cgroup.procs"; done
exec unshare --kill-child=SIGKILL --pid --fork --mount --uts --ipc --cgroup --propagation private sh -eu -c '
W="$1"; M="$W/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/upper,workdir=$W/work" "$M"
mount -t proc proc "$M/proc"
mount --bind "$M/proc/sys" "$M/proc/sys"
mount -o remount,bind,ro "$M/proc/sys"
if [ -e "$M/proc/sysrq-trigger" ]; then
    mount --bind "$M/proc/sysrq-trigger" "$M/proc/sysrq-trigger"
    mount -o remount,bind,ro "$M/proc/sysrq-trigger"
fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$M/sys"
mount -t tmpfs -o mode=755,nosuid,nodev,noexec,size=4m tmpfs "$M/sys/fs/cgroup"
mkdir "$M/sys/fs/cgroup/systemd" "$M/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup "$M/sys/fs/cgroup/systemd"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$M/sys/fs/cgroup/unified"
mount -o remount,ro,mode=755,size=4m "$M/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid,size=16m tmpfs "$M/dev"
for n in null zero full random urandom tty; do touch "$M/dev/$n"; mount --bind "/dev/$n" "$M/dev/$n"; done
touch "$M/dev/console"; mount --bind "$W/console.log" "$M/dev/console"
mkdir "$M/dev/pts" "$M/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$M/dev/pts"
ln -s pts/ptmx "$M/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$M/dev/shm"
ln -s /proc/self/fd "$M/dev/fd"; ln -s /proc/self/fd/0 "$M/dev/stdin"
ln -s /proc/self/fd/1 "$M/dev/stdout"; ln -s /proc/self/fd/2 "$M/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$M/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$M/tmp"
cd "$M"
exec env -i container=edgedl-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    chroot . /lib/systemd/systemd --system --unit=edgedl-test.target --show-status=no
' sh "$W"
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process (thread) that started it dies, however it dies.
    unshare --kill-child passes the same on to the namespace's PID 1, whose death kills the whole namespace."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def sweep_stale_cgroups(min_age_s: float = 120) -> list[Path]:
    """Remove device cgroups left by a test process that was killed before it could stop its device (the kernel
    killed the device itself): only empty ones older than ``min_age_s``, so a device booting now is never touched."""
    removed = []
    now = time.time()
    for hierarchy in CGROUP_HIERARCHIES:
        for cg in (CGROUP_ROOT / hierarchy).glob("edgedl-device-*"):
            try:
                if now - cg.stat().st_mtime < min_age_s:
                    continue
                if any(procs.read_text().strip() for procs in cg.rglob("cgroup.procs")):
                    continue
            except OSError:
                continue
            _kill_cgroups((cg,))
            if not cg.exists():
                removed.append(cg)
    return removed


def _children(pid: int) -> list[int]:
    try:
        text = " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children"))
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pids_in_pidns(init_pid: int) -> list[int]:
    try:
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") == ns:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return sorted(pids)


def _nsenter(init_pid: int, argv: list[str], *, check: bool, timeout: float, input: str | None
             ) -> subprocess.CompletedProcess:
    cmd = ["nsenter", "--target", str(init_pid), "--mount", "--pid", "--uts", "--ipc", "--cgroup", "--root", "--wd",
           "--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, input=input,
                          env={"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})


def _log_tail(workdir: Path, n: int = 2000) -> str:
    try:
        return (workdir / "boot.log").read_text(errors="replace")[-n:]
    except OSError:
        return ""


def start(workdir: Path, user: str = "pi", timeout: float = 45) -> SystemdDevice:
    """Boot a device under ``workdir`` (created; removed again by :func:`stop`) and wait until its sshd listens
    and ``systemctl is-system-running`` says running or degraded."""
    reason = available()
    if reason:
        raise RuntimeError(f"cannot boot a systemd device here: {reason}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    _, user_key = throwaway_keys(keys)
    for sub in ("upper", "work", "merged"):
        (workdir / sub).mkdir(exist_ok=True)
    port = free_port()
    _write_device_files(workdir / "upper", keys, port, user)
    (workdir / "boot.sh").write_text(_BOOT_SH)
    device = SystemdDevice(port=port, user=user, identity=user_key, known_hosts=workdir / "known_hosts",
                           host_key_pub=keys / "host_ed25519.pub", workdir=workdir, pid=0, init_pid=0,
                           cgroups=(), boot_s=0.0)
    _LIVE[id(device)] = device
    try:
        _boot(device, timeout)
    except BaseException:
        stop(device)
        raise
    write_known_hosts(device.known_hosts, port, device.host_key_pub)
    return device


def power_cycle(device: SystemdDevice, timeout: float = 45) -> SystemdDevice:
    """Pull the plug and boot again, in place: everything in the device is SIGKILLed (no clean shutdown, like a
    power cut), its files (the overlay's upper layer) are kept, and it boots again on the same sshd port with
    the same keys. Units enabled in the device (e.g. WantedBy=multi-user.target) start at this boot."""
    if device.stopped:
        raise RuntimeError("the device is stopped; start a new one")
    _kill(device)
    shutil.rmtree(device.workdir / "work", ignore_errors=True)  # overlay's scratch dir, must be empty
    (device.workdir / "work").mkdir()
    try:
        _boot(device, timeout)
    except BaseException:
        stop(device)
        raise
    return device


def _boot(device: SystemdDevice, timeout: float) -> None:
    sweep_stale_cgroups()
    name = f"edgedl-device-{uuid.uuid4().hex[:12]}"
    device.cgroups = tuple(CGROUP_ROOT / h / name for h in CGROUP_HIERARCHIES)
    for cg in device.cgroups:
        cg.mkdir()
    workdir = device.workdir
    (workdir / "console.log").touch()  # the device's /dev/console
    device.init_pid = 0
    with open(workdir / "boot.log", "ab") as log:
        t0 = time.monotonic()
        device._proc = subprocess.Popen(["sh", str(workdir / "boot.sh"), str(workdir), *map(str, device.cgroups)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                        preexec_fn=_die_with_parent)
    device.pid = device._proc.pid
    _wait_booted(device, device._proc, t0 + timeout)
    device.boot_s = time.monotonic() - t0


def _wait_booted(device: SystemdDevice, proc: subprocess.Popen, deadline: float) -> None:
    # 1. the namespace's PID 1: unshare's child once it has exec'd systemd
    while not device.init_pid:
        if proc.poll() is not None:
            raise RuntimeError(f"the device exited during boot (rc {proc.returncode}): {_log_tail(device.workdir)}")
        for child in _children(proc.pid):
            if _comm(child) == "systemd":
                device.init_pid = child
        if time.monotonic() > deadline:
            raise RuntimeError(f"systemd did not start within the boot timeout: {_log_tail(device.workdir)}")
        time.sleep(0.05)
    # 2. sshd listening and the boot finished
    listening, state = False, ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the device exited during boot (rc {proc.returncode}): {_log_tail(device.workdir)}")
        if not listening:
            try:
                socket.create_connection(("127.0.0.1", device.port), timeout=0.5).close()
                listening = True
            except OSError:
                pass
        if listening:
            try:
                state = device.run("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
            except subprocess.TimeoutExpired:
                state = "timeout"
            if state in ("running", "degraded"):
                return
        time.sleep(0.2)
    try:
        journal = device.run("journalctl", "-b", "-n", "25", "--no-pager", "-o", "short-monotonic",
                             check=False, timeout=10).stdout
    except subprocess.TimeoutExpired:
        journal = "(journalctl timed out)"
    raise RuntimeError(f"the device did not finish booting (sshd listening: {listening}, system state: "
                       f"{state or 'unknown'}); boot log: {_log_tail(device.workdir)!r}; journal tail:\n{journal}")


def _kill_cgroups(cgroups: tuple[Path, ...]) -> None:
    """SIGKILL whatever is left in the device's cgroups, then remove them (depth first)."""
    for _ in range(50):
        alive = False
        for cg in cgroups:
            if not cg.is_dir():
                continue
            for procs in cg.rglob("cgroup.procs"):
                try:
                    pids = [int(p) for p in procs.read_text().split()]
                except OSError:
                    continue
                for pid in pids:
                    alive = True
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if not alive:
            break
        time.sleep(0.1)
    for cg in cgroups:
        if not cg.is_dir():
            continue
        dirs = sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, cg]:
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def _kill(device: SystemdDevice) -> None:
    """SIGKILL the namespace's PID 1 (the kernel kills everything else in it), reap unshare, empty and remove
    the device's cgroups. The mounts lived only in the namespace and go with it."""
    if device.init_pid:
        try:
            os.kill(device.init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc = device._proc
    if proc is not None:
        if proc.poll() is None and not device.init_pid:
            # still in boot.sh / unshare before systemd exists: kill the whole session
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    _kill_cgroups(device.cgroups)


def stop(device: SystemdDevice) -> None:
    """Kill the device and everything in it, remove its cgroups and its workdir. Idempotent."""
    if device.stopped:
        return
    _kill(device)
    shutil.rmtree(device.workdir, ignore_errors=True)
    device.stopped = True
    _LIVE.pop(id(device), None)


@atexit.register
def _stop_all() -> None:
    for device in list(_LIVE.values()):
        try:
            stop(device)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
