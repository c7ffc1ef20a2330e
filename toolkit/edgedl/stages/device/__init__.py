"""A device over SSH, shared by ``edgedl deploy``, ``edgedl bench --remote`` and ``edgedl fleet``: the SSH layer
(:mod:`.ssh`), the values that may reach a device (:mod:`.values`), the device-side programs (``device.sh``,
``device_health.py``), the protocol between host and device (:mod:`.protocol`: exit codes, typed results) and
:class:`Device`, one method per device command."""

from edgedl.stages.device.device import Device, DeviceCheck, DeviceError
from edgedl.stages.device.protocol import DeviceExit, DeviceFacts, DeviceStatus, Requirements
from edgedl.stages.device.ssh import SSHTarget

__all__ = ["Device", "DeviceCheck", "DeviceError", "DeviceExit", "DeviceFacts", "DeviceStatus", "Requirements",
           "SSHTarget"]
