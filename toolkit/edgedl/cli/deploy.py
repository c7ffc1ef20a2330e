"""``edgedl deploy BUNDLE --host USER@HOST`` and ``edgedl deploy status|rollback|logs|stop``, ``--list-targets``."""

from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option
from edgedl.cli._ssh import ssh_options

_GROUP_ONLY = {"--list-targets", "-h", "--help"}


class _DeployGroup(click.Group):
    """``edgedl deploy BUNDLE ...`` runs the hidden ``push`` command; ``status``/``rollback``/``logs``/``stop`` are subcommands."""

    def parse_args(self, ctx, args):
        group_only = args and (args[0] in _GROUP_ONLY or (args[0].startswith("-") and "--list-targets" in args))
        if args and args[0] not in self.commands and not group_only:
            self._suggest(ctx, args[0])
            args = ["push", *args]
        return super().parse_args(ctx, args)

    def _suggest(self, ctx, word: str) -> None:
        """A first word that is no bundle on disk but close to a subcommand is a typo of it (`deploy statsu`)."""
        import difflib

        if word.startswith("-") or Path(word).exists():
            return
        visible = [name for name, cmd in self.commands.items() if not cmd.hidden]
        close = difflib.get_close_matches(word, visible, n=1)
        if close:
            ctx.fail(f"No such command '{word}'. Did you mean '{close[0]}'?")


def connection_options(f):
    """The SSH group, and where on the device the deploy lives."""
    f = click.option("--remote-python", default="python3", show_default=True,
                     help="Python on the device that builds the venv.")(f)
    f = click.option("--remote-dir", default="edgedl", show_default=True,
                     help="Deploy directory on the device (relative to home).")(f)
    return ssh_options()(f)


def _config(ssh, remote_dir, remote_python, **extra):
    from edgedl.stages.deploy import DeployConfig

    return DeployConfig(target=ssh.target(), remote_dir=remote_dir, remote_python=remote_python, **extra)


@click.group(cls=_DeployGroup, invoke_without_command=True)
@click.option("--list-targets", is_flag=True, help="List the device profiles (deploy/profiles/*.toml and your own).")
@json_option
@debug_option
@click.pass_context
def deploy(ctx, list_targets: bool, as_json: bool, debug: bool) -> None:
    """Deploy a bundle to a device over SSH: `edgedl deploy BUNDLE --host USER@HOST [--port P] [--identity KEY]`
    (see `edgedl deploy BUNDLE --help` for all options), then `edgedl deploy status|rollback|logs|stop --host USER@HOST`.
    Host keys are checked against known_hosts; `--list-targets` shows the device profiles."""
    if ctx.invoked_subcommand is not None:
        return
    if not list_targets:
        click.echo(ctx.get_help())
        return
    from edgedl.stages.deploy import describe_profiles

    profiles = describe_profiles()
    if as_json:
        emit_json(profiles)
        return
    from rich.table import Table

    from edgedl.console import out_console

    table = Table(show_edge=False, pad_edge=False)
    for col in ("target", "arch", "python", "onnxruntime", "providers", "quantize", "memory", "wheel platform"):
        table.add_column(col, no_wrap=col in ("target", "python", "onnxruntime", "wheel platform"))
    for p in profiles:
        notes = [f"{py}: {v}" for py, v in p["onnxruntime_for_python"].items()]
        notes += [f"bad: {', '.join(p['onnxruntime_known_bad'])}"] if p["onnxruntime_known_bad"] else []
        bad = f" ({'; '.join(notes)})" if notes else ""
        table.add_row(p["name"], p["arch"], ",".join(p["python"]), p["onnxruntime"] + bad, ">".join(p["providers"]),
                      p["quantization"], f"{p['memory_mb']} MB", p["platforms"][0])
    console = out_console()
    if not console.is_terminal:
        console.width = max(console.width, 160)  # piped output: don't squeeze the table to 80 columns
    console.print(table)
    console.print("Add your own: a .toml like deploy/profiles/rpi4.toml in ~/.config/edgedl/profiles or $EDGEDL_PROFILE_PATH.")


@deploy.command("push", hidden=True)
@click.argument("bundle", type=click.Path(path_type=Path))
@connection_options
@click.option("--serve-host", default=None, help="Address the server binds on the device (default: the bundle's).")
@click.option("--serve-port", type=int, default=None, help="Port the server listens on (default: the bundle's).")
@click.option("--ready-timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for /v2/health/ready.")
@click.option("--keep", type=int, default=5, show_default=True, help="Installed releases to keep on the device.")
@click.option("--api-key-file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="File holding the bearer token the server will require (kept in service.env, mode 600). "
                   "Default: the device's key; a server beyond loopback without one gets a generated key.")
@click.option("--verify-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="OpenSSH ed25519 public key: deploy only a bundle it signed (`edgedl package --sign`); the device "
                   "keeps it and from then on installs and serves only bundles it signed.")
@click.option("--no-auth", is_flag=True,
              help="Serve WITHOUT an API key, even beyond loopback: anyone who reaches the port can run the models.")
@click.option("--service", type=click.Choice(["auto", "systemd", "process"]), default="auto", show_default=True,
              help="How the server is kept running: a systemd unit (enabled, restarted on failure; needs root or "
                   "passwordless sudo on the device), a supervised process (pid file), or auto: systemd when usable.")
@click.option("--break-lock", is_flag=True,
              help="Take over the device directory's deploy lock (left by a deploy that died; stale after 15 min anyway).")
@json_option
@debug_option
def push(bundle, serve_host, serve_port, ready_timeout, keep, api_key_file, verify_key, no_auth, service, break_lock,
         as_json, debug, **conn) -> None:
    """Deploy BUNDLE: check the device, copy to a new release, install offline, switch, start, wait ready, roll back on failure."""
    from edgedl.stages.deploy import deploy as run_deploy

    api_key = Path(api_key_file).read_text().strip() if api_key_file else None
    config = _config(**conn, serve_host=serve_host, serve_port=serve_port, ready_timeout=ready_timeout, keep=keep,
                     api_key=api_key, verify_key=verify_key, no_auth=no_auth, service=service, break_lock=break_lock,
                     progress=not as_json)
    result = run_deploy(bundle, config)
    if as_json:
        emit_json(result.to_json())
        return
    from rich.markup import escape

    from edgedl.console import err_console, out_console

    for w in result.warnings:
        err_console().print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
    dev = result.device
    console = out_console()
    reach = {"loopback": "the device's loopback only", "all": f"every interface: {result.url}"}.get(result.reach, result.url)
    console.print(f"[bold green]ready[/] release {result.release} on {result.host} ({dev.arch}, Python {dev.python}), "
                  f"listening on {result.bind} ({reach})", soft_wrap=True)
    if result.api_key:
        console.print(f"API key (generated on the device, shown once; `edgedl deploy status --show-key` prints it "
                      f"again): {result.api_key}", soft_wrap=True)
    else:
        console.print("API key: " + ("required (Authorization: Bearer KEY)" if result.auth == "key" else "none"),
                      soft_wrap=True)
    console.print("kept running by " + (f"systemd unit {result.unit} (enabled at boot)" if result.service == "systemd"
                                        else "a supervised process (pid file, log)"), soft_wrap=True)
    console.print(f"previous release: {result.previous or 'none'}; " +
                  ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items()), soft_wrap=True)


@deploy.command()
@connection_options
@click.option("--show-key", is_flag=True, help="Also print the server's API key (e.g. the one the device generated).")
@json_option
@debug_option
def status(show_key, as_json, debug, **conn) -> None:
    """Show the device's current release, whether it runs and is ready, and the installed releases."""
    from edgedl.stages.deploy import status as get_status

    result = get_status(_config(**conn), show_key=show_key)
    if as_json:
        emit_json(result.to_json())
        return
    from rich.table import Table

    from edgedl.console import out_console

    console = out_console()
    st = result.device
    state = "[green]ready[/]" if result.ready else ("[yellow]running, not ready[/]" if st.running else "[red]stopped[/]")
    svc = st.service
    console.print(f"{result.host}: current release {st.current or 'none'} - {state}"
                  + (f" (pid {st.pid}, port {svc.get('EDGEDL_PORT')})" if st.running else ""), soft_wrap=True)
    console.print("service: " + (f"systemd unit {st.unit} ({st.enabled})" if st.manager == "systemd"
                                 else "supervised process"), soft_wrap=True)
    key = svc.get("EDGEDL_API_KEY")
    console.print("API key: " + (key if show_key and key else "set (--show-key prints it)" if key else "none"),
                  soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False)
    for col in ("", "release", "state", "size"):
        table.add_column(col)
    for r in st.releases:
        table.add_row("*" if r.current else "", r.id, r.state, f"{r.size_mb} MB")
    console.print(table)


@deploy.command()
@connection_options
@click.option("--to", "to", default=None, help="Release id to switch to (default: the one active before the current).")
@click.option("--ready-timeout", type=float, default=120.0, show_default=True)
@click.option("--break-lock", is_flag=True, help="Take over the device directory's deploy lock (left by a deploy that died).")
@json_option
@debug_option
def rollback(to, ready_timeout, break_lock, as_json, debug, **conn) -> None:
    """Switch the device back to the previous release, restart it and wait until it is ready."""
    from edgedl.stages.deploy import rollback as do_rollback

    result = do_rollback(_config(**conn, ready_timeout=ready_timeout, break_lock=break_lock), to=to)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"rolled back {result.host} from {result.previous} to {result.release}: ready")


@deploy.command()
@connection_options
@click.option("--release", default=None, help="Release id (default: the current one).")
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@debug_option
def logs(release, lines, debug, **conn) -> None:
    """Print the last lines of a release's server log."""
    from edgedl.stages.deploy import logs as get_logs

    click.echo(get_logs(_config(**conn), release=release, lines=lines), nl=False)


@deploy.command()
@connection_options
@json_option
@debug_option
def stop(as_json, debug, **conn) -> None:
    """Stop the device's server (a systemd unit is also disabled, so it stays stopped after a reboot)."""
    from edgedl.stages.deploy import stop as do_stop

    result = do_stop(_config(**conn))
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"stopped release {result.current or '(none)'} on {result.host}")
