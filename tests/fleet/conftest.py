"""Fixtures for the fleet tests: three real sshd "devices" on loopback and the bundles rolled out to them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fleet_devices import Device, loopback_sshd  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "arm64_rootfs: deploys into an emulated arm64 root filesystem with sshd (slow)")


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet")
    started = []
    try:
        for i in range(3):
            server = loopback_sshd.start(base / f"sshd{i + 1}")
            started.append(Device(name=f"dev{i + 1}", sshd=server, remote_dir=base / f"dev{i + 1}" / "edgedl",
                                  port=loopback_sshd.free_port()))
        yield started
    finally:
        for d in started:
            loopback_sshd.stop_release_services(d.remote_dir)
            loopback_sshd.stop(d.sshd)
