"""``edgedl debug``: find why a model is slow (or wrong). Subcommands come from one lazy table, like the top level."""

from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import LazyGroup, debug_option, emit_json, json_option
from edgedl.cli._shapes import shape_options

# subcommand -> (module, attribute, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "speed": ("edgedl.cli.debug", "speed", "Why an int8 model is slower (or faster) than float, per operator."),
}


class DebugGroup(LazyGroup):
    table = SUBCOMMANDS


@click.group(cls=DebugGroup)
def debug() -> None:
    """Find where a model goes slow or wrong, down to the operator."""


REPORT_SUFFIXES = (".html", ".htm", ".png")


def _check_report(path: Path | None) -> None:
    from edgedl.errors import EdgeDLError

    if path is None:
        return
    if path.is_dir():
        raise EdgeDLError(f"--report {path} is a directory; give a file name such as {path / 'speed.html'}")
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise EdgeDLError(f"--report {path}: use a .html (one self-contained file) or .png file name")
    if path.suffix.lower() == ".png":
        from edgedl._lazy import require

        require("matplotlib")


@debug.command()
@click.argument("float_model", metavar="FLOAT.onnx", type=click.Path(path_type=Path))
@click.argument("quant_model", metavar="QUANT.onnx", type=click.Path(path_type=Path))
@click.option("-b", "--batch", type=int, default=None, metavar="N",
              help="Batch size to profile at  [default: the speed gate's, 32].")
@click.option("-t", "--threads", type=int, default=None, metavar="N",
              help="Intra-op threads for both models  [default: the speed gate's, 1].")
@shape_options
@click.option("--runs", type=int, default=300, show_default=True, help="Profiled runs per model.")
@click.option("--seconds", type=float, default=1.0, show_default=True,
              help="Seconds of plain (unprofiled) timing per model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic inputs.")
@click.option("--report", type=click.Path(path_type=Path), metavar="FILE.html|FILE.png",
              help="Write a report a person can look at: one self-contained HTML file, or a PNG chart.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
@debug_option
def speed(float_model, quant_model, batch, threads, shape_options, runs, seconds, seed, report, quiet, as_json,
          debug):
    """Profile FLOAT.onnx and QUANT.onnx (an int8 model made from it) in turns on the same inputs: time per
    operator and the kernel that ran, quantize/dequantize overhead, where int8 loses, and advice for this CPU.

    Per-operator times are corrected for the profiler's own cost and checked against each model's measured
    latency (operators + onnxruntime's executor vs the median)."""
    from edgedl.stages.debug.speed import DEFAULT_BATCH, DEFAULT_THREADS, SpeedConfig, speed as run

    _check_report(report)  # before measuring: a bad path must not cost the run
    config = SpeedConfig(float_model, quant_model, batch=DEFAULT_BATCH if batch is None else batch,
                         threads=DEFAULT_THREADS if threads is None else threads, runs=runs, seconds=seconds,
                         seed=seed, shape_options=shape_options)
    result = run(config, show_progress=not quiet and not as_json)
    if report is not None:
        from edgedl.stages.debug.report import write_report

        write_report(result, report)
    if as_json:
        emit_json(result.to_json())
    else:
        print_speed(result)
    if report is not None:
        click.echo(f"report: {report}", err=True)


def _us(x: float) -> str:
    return f"{x:,.1f}"


def print_speed(report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console

    console = out_console()
    if not console.is_terminal:  # files and pipes: no wrapping of the wide table
        console.width = max(console.width, 150)
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in report.shapes.items())
    console.print(f"[bold]{escape(report.float.path.name)}[/] (float) vs [bold]{escape(report.int8.path.name)}[/] "
                  f"(int8): batch {report.batch} ({escape(shapes)}), {report.threads} thread(s), {report.provider}",
                  soft_wrap=True)
    first, *rest = report.explanation()
    color = {"faster": "green", "slower": "bold red"}.get(report.verdict, "yellow")
    console.print(f"[{color}]{escape(first)}[/]", soft_wrap=True)
    losers = {r.node for r in report.losers[:3]}
    table = Table(show_edge=False, pad_edge=False)
    numbers = ("float µs", "int8 µs", "of it Q/DQ", "int8 − float")
    for col in ("operator", "op", "float kernel", "float µs", "int8 kernel", "int8 µs", "of it Q/DQ", "int8 − float"):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in report.rows:
        style = "red" if r.node in losers and r.delta_us > 0 and report.verdict != "faster" else None
        table.add_row(escape(r.node or "(added by onnxruntime)"), r.op_type, r.describe(r.float_kernels),
                      _us(r.float_us), r.describe(r.int8_kernels), _us(r.int8_us),
                      _us(r.qdq_us) if r.qdq_us else "", f"{r.delta_us:+,.1f}", style=style)
    f, q = report.float.times, report.int8.times
    table.add_section()
    for label, fv, qv in (("operators", f.ops_us, q.ops_us), ("onnxruntime executor", f.executor_us, q.executor_us),
                          ("predicted", f.predicted_us, q.predicted_us), ("measured (median)", f.measured_us,
                                                                          q.measured_us)):
        table.add_row(label, "", "", _us(fv), "", _us(qv), _us(report.int8.qdq_us) if label == "operators" else "",
                      f"{qv - fv:+,.1f}", style="bold" if label.startswith("measured") else None)
    console.print(table)
    console.print(f"check: operators + executor vs measured: float {f.agreement:+.1%}, int8 {q.agreement:+.1%} "
                  f"({f.runs}/{q.runs} profiled runs, {f.samples}/{q.samples} timed, corrected for the profiler's "
                  f"{report.profiler.kernel_us:.1f} µs per kernel)", soft_wrap=True)
    busy = max(f.off_cpu_share, q.off_cpu_share)
    if busy > 0.05:
        console.print(f"[yellow]note:[/] the machine was busy: {busy:.0%} of runs lost the CPU for a while and are "
                      f"left out (all runs: float {f.measured_all_us:,.1f} µs, int8 {q.measured_all_us:,.1f} µs)",
                      soft_wrap=True)
    for line in rest:
        console.print(escape(line), soft_wrap=True)
    console.print("[bold]advice[/]")
    for i, a in enumerate(report.advice, 1):
        console.print(f" {i}. {escape(a.text)}", soft_wrap=True)
        if a.command:
            console.print(f"    [cyan]{escape(a.command_line())}[/]", soft_wrap=True)
