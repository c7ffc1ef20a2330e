"""The device-side programs, read from the files next to this module and sent over SSH as script text.

``device.sh`` is the one implementation of a release's life on a device (layout, install, switch, systemd unit or
supervised process, rollback, status, logs, prune); ``device_health.py`` waits for ``/v2/health/ready`` (and, for
fleet rollouts, checks a smoke inference). The edgedl_release Ansible role runs the same two files. Run a command
with ``target.run(remote.DEVICE, remote_dir, COMMAND, *args)``; see device.sh for the commands and the layout.
"""

from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent

# the smallest prelude for other device-side scripts (remote bench): cd into $1, created
PRELUDE = r'''
set -u
R=$1; shift
mkdir -p "$R" && cd "$R" || { echo "cannot create or enter $R" >&2; exit 20; }
'''


@cache
def _read(name: str) -> str:
    return (_HERE / name).read_text()


def __getattr__(name: str) -> str:  # DEVICE / HEALTH, read on first use
    if name == "DEVICE":
        return _read("device.sh")
    if name == "HEALTH":
        return _read("device_health.py")
    raise AttributeError(name)
