"""One option group for reaching a device over SSH, shared by ``deploy`` (and ``deploy status|rollback|logs|stop``),
``bench --remote``, ``debug compare --remote`` and ``optimize --device`` (and any later command that runs on a device):

    --host USER@HOST[:PORT] (deploy) / --remote (bench, debug compare) / --device (optimize)   the device (an
    ~/.ssh/config alias too)
    --port N (deploy only: bench's -p is --provider)   -i/--identity KEY   --known-hosts FILE
    --accept-new-host-key   --ssh-config FILE

The command gets one ``ssh: SSHOptions``; ``ssh.target()`` is the checked ``SSHTarget``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from edgedl.cli._groups import option_group


@dataclass(frozen=True)
class SSHOptions:
    host: str | None
    port: int | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    ssh_config: Path | None = None
    flag: str = "--host"  # the option that names the device

    def remote_target(self):
        """The ``SSHTarget`` when the device option was given, else None (an error when only the options that go
        with it were)."""
        from edgedl.errors import EdgeDLError

        if self.host:
            return self.target()
        extras = self.extras()
        if extras:
            raise EdgeDLError(f"{'/'.join(extras)} {'is' if len(extras) == 1 else 'are'} for {self.flag} USER@HOST; "
                              f"add {self.flag}")
        return None

    def extras(self) -> list[str]:
        """The options given besides the host (they mean nothing without one)."""
        return [flag for flag, value in (("--identity", self.identity), ("--known-hosts", self.known_hosts),
                                         ("--accept-new-host-key", self.accept_new_host_key)) if value]

    def target(self):
        from edgedl.errors import EdgeDLError
        from edgedl.stages.device.ssh import SSHTarget

        for path, flag in ((self.identity, "--identity"), (self.known_hosts, "--known-hosts")):
            if path is not None and not Path(path).is_file():
                raise EdgeDLError(f"{flag} {path} does not exist")
        return SSHTarget.parse(self.host, port=self.port, identity=self.identity, known_hosts=self.known_hosts,
                               accept_new_host_key=self.accept_new_host_key, ssh_config=self.ssh_config)


def ssh_options(host_flag: str = "--host", required: bool = True, port: bool = True, host_help: str | None = None):
    """The SSH group; ``host_flag`` names the device option (its help ``host_help``); the others' help starts
    with it when the device is optional (e.g. "--remote: SSH private key file.")."""
    what = "" if required else f"{host_flag}: "
    host_help = host_help or ("The device: USER@HOST[:PORT] (an ~/.ssh/config alias works too)." if required else
                              "Run on a device over SSH: USER@HOST[:PORT] (models and the runtime are pushed; "
                              "never torch).")
    options = [
        click.option(host_flag, "host", required=required, metavar="USER@HOST[:PORT]", help=host_help),
        *([click.option("--port", "-p", "ssh_port", type=int, default=None,
                        help="SSH port (default 22, or :PORT in --host).")] if port else []),
        click.option("--identity", "-i", type=click.Path(path_type=Path), default=None, help=f"{what}SSH private key file."),
        click.option("--known-hosts", type=click.Path(path_type=Path), default=None,
                     help=f"{what}known_hosts file (default: ssh's own)."),
        click.option("--accept-new-host-key", is_flag=True,
                     help=f"{what}Trust the device's host key on first connection (still refuses a changed key)."),
        click.option("--ssh-config", type=click.Path(path_type=Path), default=None, hidden=not required,
                     help="ssh -F FILE (e.g. /dev/null)."),
    ]

    def build(host, identity, known_hosts, accept_new_host_key, ssh_config, ssh_port=None) -> SSHOptions:
        return SSHOptions(host=host, port=ssh_port, identity=identity, known_hosts=known_hosts,
                          accept_new_host_key=accept_new_host_key, ssh_config=ssh_config, flag=host_flag)

    return option_group("ssh", options, build)
