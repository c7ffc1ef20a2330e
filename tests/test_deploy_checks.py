"""Deploy's decisions that need no SSH: the compatibility check as the device makes it (``device.sh check``, run
here by this machine's own sh: the same program, the same checks), the probe's output as the device prints it,
host parsing, and refusing bad tarballs and keys before anything connects."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgedl.errors import EdgeDLError
from edgedl.stages.deploy import DeployConfig, deploy
from edgedl.stages.device import Device, DeviceError, DeviceExit, DeviceFacts, Requirements
from edgedl.stages.device.ssh import SSHTarget

PYTHON3 = subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                         text=True, check=True).stdout.strip()
MACHINE = os.uname().machine
OTHER_ARCH = "aarch64" if MACHINE == "x86_64" else "x86_64"


@dataclass(frozen=True)
class ThisMachine:
    """A Device's transport to this machine's own sh instead of over SSH: device.sh runs for real, as on a device
    (the SSH layer has its own tests against a real sshd)."""

    label: str = "pi@raspberrypi.local"
    prefix: tuple[str, ...] = ()  # e.g. a command that runs sh in another mount namespace, as another user

    def run(self, script, *args, check=True, timeout=60, input=None):
        proc = subprocess.run([*self.prefix, "sh", "-c", script, "edgedl", *args], capture_output=True, timeout=timeout,
                              input=input or b"")
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> dict:
    """What device.sh's `facts` command prints on this machine (run here with sh, as the device runs it)."""
    from edgedl.stages.device import programs

    d = tmp_path_factory.mktemp("device")
    proc = subprocess.run(["sh", "-c", programs.DEVICE, "edgedl", str(d / "edgedl"), "facts", "python3"],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_the_probe_reports_this_machine(probed):
    f = DeviceFacts.parse(json.dumps(probed))
    assert f.arch == MACHINE and f.python == PYTHON3
    assert f.disk_free_mb > 0 and f.mem_total_mb > 0 and f.current is None and not f.running
    assert f.directory.endswith("/edgedl") and f.service == "process" and f.unit == "edgedl.service"
    assert f.systemd == os.path.isdir("/run/systemd/system")


def test_probe_output_parses(probed):
    d = {**probed, "arch": "aarch64", "python": "3.11", "venv": "yes", "disk_free_kb": 10_000_000,
         "mem_available_kb": 3_000_000, "mem_total_kb": 3_900_000, "systemd": "no", "systemd_usable": "no",
         "rsync": "yes", "current": "", "running": False, "dir": "/home/pi/edgedl", "installed": ["sha-1", "sha-2"]}
    f = DeviceFacts.parse("a login banner\n" + json.dumps(d))
    assert (f.arch, f.python, f.venv, f.rsync, f.systemd, f.current) == ("aarch64", "3.11", True, True, False, None)
    assert round(f.disk_free_mb) == 9766 and round(f.mem_available_mb) == 2930 and f.installed == ("sha-1", "sha-2")
    with pytest.raises(EdgeDLError, match="not JSON"):
        DeviceFacts.parse("Welcome to the Pi!")


def needs(**overrides) -> Requirements:
    """A bundle for this machine (architecture, python3), small enough to fit; ``overrides`` make it not fit."""
    values = dict(profile="rpi5", arch=MACHINE, python=PYTHON3, pythons=("3.11", "3.12"), need_disk_mb=50,
                  min_memory_mb=150, memory_mb=64, release="sha-000000000000")
    return Requirements(**{**values, **overrides})


def device(tmp_path, python="python3", prefix=()) -> Device:
    return Device(ThisMachine(prefix=prefix), str(tmp_path / "edgedl"), python)


def test_a_matching_device_passes_and_a_small_one_gets_a_warning(tmp_path):
    checked = device(tmp_path).check(needs())
    assert checked.warnings == () and checked.facts.arch == MACHINE and checked.facts.python == PYTHON3
    warnings = device(tmp_path).check(needs(memory_mb=10**9)).warnings  # a board with less memory than the profile's
    assert len(warnings) == 1 and "less than profile rpi5's budget of 1000000000 MB" in warnings[0]


def _no_venv_python(tmp_path) -> str:
    """A python3 that answers its version but has no venv module (as Debian's without python3-venv)."""
    fake = tmp_path / "python-without-venv"
    fake.write_text('#!/bin/sh\ncase "$2" in *venv*) exit 1;; esac\nexec python3 "$@"\n')
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize("case, code, message", [
    ("arch", DeviceExit.ARCH, f"is {MACHINE} but the bundle is for rpi5 ({OTHER_ARCH}); package it for a matching target "
                              f"(e.g. --target {'x86-server' if MACHINE == 'x86_64' else 'rpi5'})"),
    ("no python", DeviceExit.NO_PYTHON, "nonexistent-python3 was not found on pi@raspberrypi.local"),
    ("python", DeviceExit.PYTHON, f"re-package with --python {PYTHON3}"),
    ("venv", DeviceExit.NO_VENV, "install python3-venv"),
    ("disk", DeviceExit.DISK, "MB free in "),
    ("memory", DeviceExit.MEMORY, "MB of memory available; the server needs ~1000000000 MB"),
])
def test_each_unfit_device_gets_one_clear_error(tmp_path, case, code, message):
    python = {"no python": "nonexistent-python3", "venv": _no_venv_python(tmp_path)}.get(case, "python3")
    unfit = {"arch": needs(arch=OTHER_ARCH), "python": needs(python="3.99"), "disk": needs(need_disk_mb=10**9),
             "memory": needs(min_memory_mb=10**9)}.get(case, needs())
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) as err:
        device(tmp_path, python).check(unfit)
    assert err.value.code == code and len(str(err.value).splitlines()) == 1
    if case == "disk":
        assert f"{tmp_path / 'edgedl'} but the release needs ~1000000000 MB" in str(err.value)
        (tmp_path / "edgedl/releases/sha-installed").mkdir(parents=True)
        (tmp_path / "edgedl/releases/sha-installed/.installed").touch()
        # a release the device has installed already needs no more disk
        assert device(tmp_path).check(needs(need_disk_mb=10**9, release="sha-installed")).warnings == ()


def test_systemd_that_cannot_be_used_is_a_warning_or_with_service_systemd_an_error():
    """A device that runs systemd, reached as a login that is not root and has no sudo: device.sh runs in a mount
    namespace where /run/systemd/system exists, as user nobody."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("needs root, unshare and setpriv to show device.sh a systemd as another user")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgedl-nobody-") as tmp:  # outside pytest's 0700 tree: nobody enters it
        os.chmod(tmp, 0o777)
        _systemd_unusable(Path(tmp))


def _systemd_unusable(tmp_path: Path) -> None:
    prefix = ("unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs /run/systemd 2>/dev/null || mount -t tmpfs tmpfs /run; '
              'mkdir -p /run/systemd/system && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"', "unshare")
    unusable = device(tmp_path, prefix=prefix)
    checked = unusable.check(needs(memory_mb=1))
    why = checked.facts.systemd_why
    assert checked.facts.systemd and not checked.facts.systemd_usable and why
    assert len(checked.warnings) == 1 and why in checked.warnings[0] and "supervised process" in checked.warnings[0]
    with pytest.raises(DeviceError, match=f"--service systemd: on pi@raspberrypi.local {why}") as err:
        unusable.check(needs(memory_mb=1), service="systemd")
    assert err.value.code == DeviceExit.NO_SYSTEMD
    assert unusable.check(needs(memory_mb=1), service="process").warnings == ()  # asked for: no warning
    assert device(tmp_path).check(needs(memory_mb=1), service="auto").warnings == ()  # no systemd here at all


def config() -> DeployConfig:
    return DeployConfig(target=SSHTarget.parse("pi@raspberrypi.local"), progress=False)


@pytest.mark.parametrize("text, expected", [
    ("pi@raspberrypi.local", ("pi", "raspberrypi.local", None)),
    ("pi@10.0.0.7:2222", ("pi", "10.0.0.7", 2222)),
    ("mypi", (None, "mypi", None)),
    ("root@[::1]:22", ("root", "::1", 22)),
])
def test_host_parsing(text, expected):
    t = SSHTarget.parse(text)
    assert (t.user, t.host, t.port) == expected


@pytest.mark.parametrize("text", ["pi@", "pi@host:99999", "a b@host", "pi@host:port", "-oProxyCommand=id", "pi@-oX=y",
                                  "pi@h$(id)", "pi@h`id`", "pi;id@h", "pi@h\nx"])
def test_bad_hosts_are_refused(text):
    with pytest.raises(EdgeDLError):
        SSHTarget.parse(text)


def test_host_key_checking_is_strict_unless_asked():
    assert "StrictHostKeyChecking=yes" in SSHTarget.parse("pi@h").ssh_options()
    assert "StrictHostKeyChecking=accept-new" in SSHTarget.parse("pi@h", accept_new_host_key=True).ssh_options()


def test_tarball_with_a_link_is_refused_before_connecting(tmp_path):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bundle/manifest.json")
        data = b"{}"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bundle/models")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc"
        tar.addfile(link)
    with pytest.raises(EdgeDLError, match="not a bundle tarball written by `edgedl package`"):
        deploy(path, config())


@pytest.mark.parametrize("key", ["it's-a-long-enough-key", "short", "x" * 20 + "$(id)", "x" * 20 + "\nEDGEDL_HOST=1"])
def test_bad_api_key_is_refused_before_connecting(key):
    with pytest.raises(EdgeDLError, match="16 or more characters of letters, digits and"):
        DeployConfig(target=SSHTarget.parse("pi@raspberrypi.local"), api_key=key)


def test_missing_bundle(tmp_path):
    with pytest.raises(EdgeDLError, match="is not a directory or a .tar.gz"):
        deploy(tmp_path / "nope", config())
    with pytest.raises(EdgeDLError, match="has no manifest.json"):
        deploy(Path(tmp_path), config())


def _device(tmp_path, *args) -> subprocess.CompletedProcess:
    from edgedl.stages.device import programs

    return subprocess.run(["sh", "-c", programs.DEVICE, "edgedl", str(tmp_path / "d"), *args], capture_output=True,
                          text=True, timeout=60, check=True)


@pytest.mark.parametrize("keep, kept", [(1, {"sha-ffffff"}), (2, {"sha-ffffff", "sha-111111"}),
                                        (3, {"sha-ffffff", "sha-111111", "sha-555555"})])
def test_prune_keeps_the_most_recently_used_releases_not_the_highest_ids(tmp_path, keep, kept):
    """Fleet release ids are hashes: activated 555555, then 111111, then ffffff (current) - `prune 2` must keep
    ffffff and 111111 (the one a rollback goes back to), never the alphabetically last ones."""
    d = tmp_path / "d"
    for i, rid in enumerate(["sha-555555", "sha-111111", "sha-ffffff"]):
        (d / "releases" / rid).mkdir(parents=True)
        with open(d / "history", "a") as h:
            h.write(f"2026-11-28T10:0{i}:00Z {rid} installed\n2026-11-28T10:0{i}:01Z {rid} activated\n")
    (d / "releases" / "sha-000000").mkdir()  # unknown to history: the oldest
    (d / "current").symlink_to("releases/sha-ffffff")
    out = _device(tmp_path, "prune", str(keep)).stdout
    assert set(os.listdir(d / "releases")) == kept
    assert {line.split("=", 1)[1] for line in out.split()} == {"sha-555555", "sha-111111", "sha-000000"} - kept


def test_prune_counts_a_rollback_as_use_and_never_removes_current(tmp_path):
    d = tmp_path / "d"
    for rid in ("sha-aaaa", "sha-bbbb"):
        (d / "releases" / rid).mkdir(parents=True)
    (d / "history").write_text("t sha-aaaa activated\nt sha-bbbb activated\nt sha-bbbb failed\nt sha-aaaa rolled-back-to\n")
    (d / "current").symlink_to("releases/sha-aaaa")
    _device(tmp_path, "prune", "1")
    assert os.listdir(d / "releases") == ["sha-aaaa"]
    (d / "current").unlink()
    (d / "current").symlink_to("releases/sha-aaaa")
    (d / "history").write_text("t sha-aaaa activated\n")
    (d / "releases" / "sha-cccc").mkdir()
    (d / "history").write_text("t sha-aaaa activated\nt sha-cccc installed\n")  # cccc newer, but aaaa is current
    _device(tmp_path, "prune", "1")
    assert os.listdir(d / "releases") == ["sha-aaaa"]
