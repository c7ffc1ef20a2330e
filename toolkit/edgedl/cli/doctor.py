from __future__ import annotations

import sys

import click

from edgedl.cli import debug_option, emit_json, json_option


@click.command()
@click.option("--no-prove", is_flag=True, help="List providers without running the tiny model on each.")
@json_option
@debug_option
def doctor(no_prove: bool, as_json: bool, debug: bool) -> None:
    """Check this machine: Python, OS, CPU features, onnxruntime flavours, providers (each proven by a real
    inference), export-side packages, thread advice, known-bad versions. Exits 1 if something is broken."""
    from rich.markup import escape

    from edgedl.console import out_console
    from edgedl.stages.doctor import STATUS_MARK, run_doctor

    report = run_doctor(prove=not no_prove)
    if as_json:
        emit_json(report.to_json())
    else:
        console = out_console()
        for section, checks in report.sections.items():
            console.print(f"[bold]{section}[/]")
            for c in checks:
                console.print(f"  {STATUS_MARK[c.status]} {escape(c.name)}: {escape(c.detail)}", soft_wrap=True)
        verdict = (f"[bold red]{len(report.failures)} problem(s)[/]" if report.failures else "[green]no problems[/]")
        console.print(f"{verdict}, {len(report.warnings)} warning(s)")
    if report.failures:
        sys.exit(1)  # not click's Exit: the group runs with standalone_mode=False
