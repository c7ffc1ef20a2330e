"""Deploy's decisions that need no device: the device checks against a bundle's manifest (from probe output as
the device prints it), host parsing, and refusing bad tarballs and keys before anything connects."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from edgedl.errors import EdgeDLError
from edgedl.stages.deploy import DeployConfig, DeviceFacts, check_device, deploy
from edgedl.stages.deploy.ssh import SSHTarget

MANIFEST = {"python": "3.11", "profile": {"name": "rpi5", "arch": "aarch64", "python": ["3.11", "3.12"],
                                          "min_free_disk_mb": 200, "memory_mb": 3500}}


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> dict:
    """What device.sh's `facts` command prints on this machine (run here with sh, as the device runs it)."""
    from edgedl.stages.deploy import remote

    d = tmp_path_factory.mktemp("device")
    proc = subprocess.run(["sh", "-c", remote.DEVICE, "edgedl", str(d / "edgedl"), "facts", "python3"],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_the_probe_reports_this_machine(probed):
    f = DeviceFacts.parse(json.dumps(probed))
    python3 = subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert f.arch == os.uname().machine and f.python == python3
    assert f.disk_free_mb > 0 and f.mem_total_mb > 0 and f.current is None and not f.running
    assert f.directory.endswith("/edgedl") and f.service == "process" and f.unit == "edgedl.service"
    assert f.systemd == os.path.isdir("/run/systemd/system")


@pytest.fixture
def facts(probed):
    """A Raspberry Pi 5 as device.sh would describe it: this machine's probe with Pi values put in."""
    def make(**overrides) -> DeviceFacts:
        d = {**probed, "arch": "aarch64", "python": "3.11", "venv": "yes", "disk_free_kb": 10_000_000,
             "mem_available_kb": 3_000_000, "mem_total_kb": 3_900_000, "systemd": "no", "systemd_usable": "no",
             "rsync": "yes", "current": "", "running": False, "dir": "/home/pi/edgedl"}
        d.update(overrides)
        return DeviceFacts.parse(json.dumps(d))
    return make


def config() -> DeployConfig:
    return DeployConfig(target=SSHTarget.parse("pi@raspberrypi.local"), progress=False)


def test_probe_output_parses(facts):
    f = facts()
    assert (f.arch, f.python, f.venv, f.rsync, f.systemd, f.current) == ("aarch64", "3.11", True, True, False, None)
    assert round(f.disk_free_mb) == 9766 and round(f.mem_available_mb) == 2930


def test_a_matching_device_passes_and_a_small_one_gets_a_warning(facts):
    assert check_device(facts(), MANIFEST, 50 * 2**20, config()) == []
    warnings = check_device(facts(mem_total_kb=2_000_000), MANIFEST, 50 * 2**20, config())  # a 2 GB board
    assert len(warnings) == 1 and "less than profile rpi5's budget of 3500 MB" in warnings[0]


@pytest.mark.parametrize("override, message", [
    ({"arch": "x86_64"}, "is x86_64 but the bundle is for rpi5 (aarch64)"),
    ({"python": ""}, "python3 was not found on pi@raspberrypi.local"),
    ({"python": "3.12"}, "re-package with --python 3.12"),
    ({"venv": "no"}, "install python3-venv"),
    ({"disk_free_kb": 100_000}, "has 98 MB free in /home/pi/edgedl"),
    ({"mem_available_kb": 50_000}, "only 49 MB of memory available"),
])
def test_each_unfit_device_gets_one_clear_error(facts, override, message):
    with pytest.raises(EdgeDLError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_device(facts(**override), MANIFEST, 50 * 2**20, config())


def test_systemd_that_cannot_be_used_is_a_warning_or_with_service_systemd_an_error(facts):
    why = "pi is not root and has no passwordless sudo"
    unusable = facts(systemd="yes", systemd_usable="no", systemd_why=why)
    warnings = check_device(unusable, MANIFEST, 50 * 2**20, config())
    assert len(warnings) == 1 and why in warnings[0] and "supervised process" in warnings[0]
    cfg = config()
    cfg.service = "systemd"
    with pytest.raises(EdgeDLError, match="--service systemd: on pi@raspberrypi.local pi is not root"):
        check_device(unusable, MANIFEST, 50 * 2**20, cfg)
    cfg.service = "process"  # asked for: no warning
    assert check_device(unusable, MANIFEST, 50 * 2**20, cfg) == []
    assert check_device(facts(systemd="yes", systemd_usable="yes", systemd_why="sudo"), MANIFEST, 50 * 2**20, config()) == []


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
    from edgedl.stages.deploy import remote

    return subprocess.run(["sh", "-c", remote.DEVICE, "edgedl", str(tmp_path / "d"), *args], capture_output=True,
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
