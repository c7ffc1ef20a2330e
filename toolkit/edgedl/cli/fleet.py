"""`edgedl fleet deploy|status`: Ansible-driven rollouts to many devices (needs the fleet extra: ansible-core)."""

from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option

_OUTCOME_STYLE = {"updated": "green", "unchanged": "dim", "would-update": "cyan", "would-restart": "cyan",
                  "failed": "red", "rolled-back": "yellow", "unreachable": "red", "not-started": "dim",
                  "no-bundle": "dim"}


@click.group()
def fleet() -> None:
    """Roll bundles out to a fleet of devices with Ansible (deploy/ansible/), and show the fleet's state."""


def _common(f):
    f = click.option("--inventory", "-i", required=True, type=click.Path(path_type=Path),
                     help="Ansible inventory (INI or YAML); groups named after device profiles.")(f)
    f = click.option("--limit", multiple=True, help="Only these hosts or groups (repeatable).")(f)
    f = click.option("--playbook-dir", type=click.Path(path_type=Path), default=None,
                     help="Your adapted copy of edgedl's deploy/ansible (rollout.yml, status.yml, roles/).")(f)
    f = click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                     help="Keep this run's ansible log, variables and reports here (default: under the edgedl cache).")(f)
    return f


@fleet.command("deploy")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@_common
@click.option("--serial", default="1", show_default=True, help="Devices per batch: N or N%.")
@click.option("--max-fail", default=0, show_default=True, type=int,
              help="Failed devices tolerated; one more stops the rollout before the next batch.")
@click.option("--check", is_flag=True, help="Dry run (ansible --check): show what would change, change nothing.")
@click.option("--ready-timeout", default=120.0, show_default=True, type=float,
              help="Seconds a device's new release has to become ready.")
@click.option("--forks", default=10, show_default=True, type=int, help="Devices Ansible works on at once.")
@click.option("--keep", type=int, default=None,
              help="Installed releases kept per device (default 5, or edgedl_keep in the inventory).")
@click.option("--service", type=click.Choice(["auto", "systemd", "process"]), default=None,
              help="How servers are kept running (default auto: a systemd unit where usable; or edgedl_service "
                   "in the inventory).")
@click.option("--no-auth", is_flag=True,
              help="Servers WITHOUT an API key even beyond loopback (default: each keeps its key, or generates one).")
@json_option
@debug_option
def deploy_cmd(bundles, inventory, limit, playbook_dir, run_dir, serial, max_fail, check, ready_timeout, forks,
               keep, service, no_auth, as_json, debug) -> None:
    """Roll BUNDLES (one per device profile) out to the inventory: rolling batches, each device health-gated
    (/v2/health/ready + a smoke inference against reference outputs) and rolled back if its new release fails."""
    from edgedl.errors import EdgeDLError
    from edgedl.stages.fleet import FleetConfig, deploy

    result = deploy(FleetConfig(bundles=list(bundles), inventory=inventory, serial=serial, max_fail=max_fail,
                                check=check, limit=list(limit), playbook_dir=playbook_dir, ready_timeout=ready_timeout,
                                forks=forks, keep=keep, service=service, no_auth=no_auth, run_dir=run_dir,
                                progress=not as_json))
    if as_json:
        emit_json(result.to_json())
    else:
        _print_rollout(result)
    if result.failed:
        stop = " - the rollout stopped before the next batch" if result.stopped else ""
        raise EdgeDLError(f"{len(result.failed)} device(s) failed ({', '.join(result.failed)}){stop}; "
                          f"details in the table and in {result.log}")


def _print_rollout(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console

    console = out_console()
    for b in result.bundles.values():
        console.print(f"bundle [bold]{escape(b.name)}[/] -> profile {b.profile} ({b.arch}), release "
                      f"{b.release}; smoke reference: {escape(b.reference_source)}")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("host", "profile", "outcome", "release", "previous", "smoke max|diff|", "note"):
        table.add_column(col)
    for r in result.hosts:
        diff = f"{r.smoke['max_abs_diff']:.2g}" if "max_abs_diff" in (r.smoke or {}) else ""
        style = _OUTCOME_STYLE.get(r.outcome, "")
        note = " ".join(str(r.error or "").split())
        if r.outcome == "rolled-back":
            note = (f"back on {r.previous} " + ("(ready)" if r.rollback_ready else "(NOT ready)") +
                    f" - {r.failed_step or 'failed'}: {note}")
        previous = r.previous or ""
        if r.outcome in ("not-started", "no-bundle") or previous == r.release:
            previous = ""
        table.add_row(r.host, r.profile or "", f"[{style}]{r.outcome}[/]", r.release or "", previous, diff,
                      escape(note[:220]))
    console.print(table)
    for r in result.hosts:
        for warning in r.warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    mode = "check (nothing changed)" if result.check else "rollout"
    console.print(f"{mode}: " + ", ".join(f"{n} {k}" for k, n in result.counts.items()) +
                  f"; serial {result.serial}, max-fail {result.max_fail}" +
                  ("; STOPPED before the next batch" if result.stopped else "") + f"; log: {escape(result.log)}")


@fleet.command("status")
@_common
@click.option("--forks", default=20, show_default=True, type=int, help="Devices queried at once.")
@json_option
@debug_option
def status_cmd(inventory, limit, playbook_dir, run_dir, forks, as_json, debug) -> None:
    """One row per device: reachable, release, model hashes, ready, uptime (gathered in parallel)."""
    from edgedl.stages.fleet import StatusConfig, status

    result = status(StatusConfig(inventory=inventory, limit=list(limit), playbook_dir=playbook_dir, forks=forks,
                                 run_dir=run_dir, progress=not as_json))
    if as_json:
        emit_json(result.to_json())
        return
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console

    table = Table(show_edge=False, pad_edge=False)
    for col in ("host", "reachable", "release", "models (sha256)", "ready", "uptime", "note"):
        table.add_column(col)
    for r in result.hosts:
        models = ", ".join(f"{n}:{(h or '?')[:12]}" for n, h in (r.models or {}).items())
        table.add_row(r.host, "[green]yes[/]" if r.reachable else "[red]no[/]", r.current or "", models,
                      "[green]yes[/]" if r.ready else "[red]no[/]",
                      _duration(r.uptime_s) if r.uptime_s is not None else "",
                      escape(" ".join(str(r.error or "").split())[:120]))
    out_console().print(table)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
