"""The device-side programs, read from the files next to this module and sent over SSH as script text.

``device.sh`` is the one implementation of a release's life on a device (layout, checks, install, switch, systemd
unit or supervised process, rollback, status, logs, prune) and of the runtime ``edgedl bench --remote`` measures
in; ``device_health.py`` waits for ``/v2/health/ready`` (and checks a smoke inference against reference outputs).
The edgedl_release Ansible role runs the same two files. :class:`edgedl.stages.device.Device` runs one command per
method: ``target.run(programs.DEVICE, directory, COMMAND, *args)``.
"""

from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@cache
def _read(name: str) -> str:
    return (_HERE / name).read_text()


def __getattr__(name: str) -> str:  # DEVICE / HEALTH, read on first use
    if name == "DEVICE":
        return _read("device.sh")
    if name == "HEALTH":
        return _read("device_health.py")
    raise AttributeError(name)
