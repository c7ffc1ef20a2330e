"""``edgedl debug``: find why a model is slow (or wrong). Subcommands come from one lazy table, like the top level."""

from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import LazyGroup, debug_option, emit_json, json_option
from edgedl.cli._data import data_options
from edgedl.cli._shapes import shape_options
from edgedl.cli._ssh import ssh_options

# subcommand -> (module, attribute, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "compare": ("edgedl.cli.debug", "compare", "Where two versions of a model part ways on real data, per tensor."),
    "speed": ("edgedl.cli.debug", "speed", "Why an int8 model is slower (or faster) than float, per operator."),
}


class DebugGroup(LazyGroup):
    table = SUBCOMMANDS


@click.group(cls=DebugGroup)
def debug() -> None:
    """Find where a model goes slow or wrong, down to the operator.

    To find the nodes an int8 model must keep in float to pass its accuracy gate: edgedl quantize --bisect."""


REPORT_SUFFIXES = (".html", ".htm", ".png")


def _check_report(path: Path | None, example: str = "speed.html") -> None:
    from edgedl.errors import EdgeDLError
    from edgedl.stages.files import writable_output

    if path is None:
        return
    if path.is_dir():
        raise EdgeDLError(f"--report {path} is a directory; give a file name such as {path / example}")
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise EdgeDLError(f"--report {path}: use a .html (one self-contained file) or .png file name")
    if path.suffix.lower() == ".png":
        from edgedl._lazy import require

        require("matplotlib")
    writable_output(path, "--report")


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


@debug.command()
@click.argument("reference")
@click.argument("candidate")
@data_options
@shape_options
@click.option("--samples", type=int, default=32, show_default=True, metavar="N",
              help="Samples to compare on, one run each (so every tensor's error is per sample too).")
@click.option("--min-sqnr", type=float, metavar="DB",
              help="A tensor diverges below this SQNR vs the reference  [default: 60 fp32, 30 fp16, 20 int8].")
@click.option("--atol", type=float, default=1e-6, show_default=True,
              help="...and only when its max abs difference is above this.")
@click.option("--top", type=int, default=10, show_default=True, metavar="N", help="Worst tensors listed.")
@click.option("--reference-provider", default="cpu", show_default=True, help="Execution provider of an ONNX REFERENCE.")
@click.option("--candidate-provider", default="cpu", show_default=True, help="Execution provider of an ONNX CANDIDATE.")
@click.option("--torch-checkpoint", type=click.Path(path_type=Path),
              help="Weights of a PyTorch side given as file.py:Class or a recipe [default: the model's record].")
@click.option("--torch-init-args", metavar="JSON", help="Constructor arguments of a file.py:Class side.")
@click.option("-t", "--threads", type=int, default=1, show_default=True, help="Threads per side (0: the runtime's default).")
@ssh_options("--remote", required=False, port=False,
             host_help="Run CANDIDATE on this device over SSH, with the runtime bench --remote installs there.")
@click.option("--remote-dir", default="edgedl-bench", show_default=True, help="--remote: working directory on the device.")
@click.option("--candidate-python", metavar="COMMAND",
              help="Run CANDIDATE with another Python on this machine: its command line, e.g. a venv's python or "
                   "'qemu-aarch64-static -L ROOT ROOT/usr/bin/python3' (it needs numpy and onnxruntime).")
@click.option("--report", type=click.Path(path_type=Path), metavar="FILE.html|FILE.png",
              help="Write the error per tensor along the graph, first divergence marked: HTML (one file) or PNG.")
@click.option("--check", is_flag=True, help="Exit with status 1 when a tensor diverges.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
@debug_option
def compare(reference, candidate, data_options, shape_options, samples, min_sqnr, atol, top, reference_provider,
            candidate_provider, torch_checkpoint, torch_init_args, threads, ssh, remote_dir, candidate_python, report,
            check, quiet, as_json, debug):
    """Run REFERENCE and CANDIDATE on the same real data, capture every intermediate tensor, and report the
    first one whose error exceeds the tolerance (in graph order), the worst ones and the samples that diverge
    most: ONNX node, op type, PyTorch module and source line.

    Each side is an .onnx model (fp32, int8 or fp16; on --*-provider, another Python, or a device), or a PyTorch
    module: a recipe, file.py:Class (--torch-checkpoint, --torch-init-args), a TorchScript file, or 'torch' for
    the module the ONNX side's metadata records. Data: --data (default: the model's recipe, else synthetic
    inputs, a weaker check)."""
    import shlex

    from edgedl.errors import EdgeDLError
    from edgedl.stages.layerwise.compare import CompareConfig, compare as run
    from edgedl.stages.layerwise.sides import Placement, SideSpec
    from edgedl.stages.torch_source import parse_init_args

    _check_report(report, "compare.html")
    if ssh.host and candidate_python:
        raise EdgeDLError("--remote and --candidate-python both say where CANDIDATE runs; give one")
    target = ssh.remote_target()
    placement = Placement()
    if target:
        placement = Placement("device", target=target, remote_dir=remote_dir)
    elif candidate_python:
        placement = Placement("python", command=tuple(shlex.split(candidate_python)))
    torch_side = dict(torch_checkpoint=str(torch_checkpoint) if torch_checkpoint else None,
                      torch_init_args=parse_init_args(torch_init_args, "torch_init_args"))
    ref = SideSpec(reference, reference_provider, **torch_side)
    cand = SideSpec(candidate, candidate_provider, placement, **torch_side)
    if cand.kind == "torch" and placement.kind != "local":
        raise EdgeDLError(f"CANDIDATE {candidate} is a PyTorch module: only an .onnx model runs on a device or "
                          "another Python")
    config = CompareConfig(ref, cand, data=data_options, shape_options=shape_options, samples=samples,
                           min_sqnr=min_sqnr, atol=atol, top=top, threads=threads)
    result = run(config, show_progress=not quiet and not as_json)
    if report is not None:
        from edgedl.stages.debug.layers_report import write_layers_report

        write_layers_report(result, report)
    if as_json:
        emit_json(result.to_json())
    else:
        print_compare(result)
    if report is not None:
        click.echo(f"report: {report}", err=True)
    if check and result.first_divergence is not None:
        raise EdgeDLError(f"{result.divergent} tensor(s) diverge, the first at {result.first_divergence.node}")


def _db(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.1f}"


def print_compare(report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console

    console = out_console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    tol = report.tolerance
    def where(side) -> str:
        """Where an off-host side ran, as its worker reported it."""
        env = side.environment
        if "machine" not in env:
            return ""
        return (f"; ran on {escape(str(env['machine']))}, Python {escape(str(env.get('python', '?')))}, "
                f"onnxruntime {escape(str(env.get('onnxruntime', '?')))}")

    console.print("\n".join(f"[bold]{name}[/] {escape(side.label)} ({side.precision}){where(side)}"
                            for name, side in (("reference", report.reference), ("candidate", report.candidate))),
                  soft_wrap=True)
    console.print(f"{report.samples} sample(s) of {escape(report.data.get('source', '?'))}; {len(report.layers)} "
                  f"tensors compared; a tensor diverges below SQNR {tol.min_sqnr_db:g} dB"
                  f"{'' if tol.given else f' (the default for {tol.precision})'} with max abs diff > {tol.atol:g}",
                  soft_wrap=True)
    first = report.first_divergence
    if first is None:
        console.print("[green]no tensor diverges[/]")
    else:
        computed = (f", computed by {escape(first.other_node)} ({first.other_op_type})"
                    if first.other_node and first.other_node != first.node else "")
        console.print(f"[bold red]first divergence:[/] [bold]{escape(first.node)}[/] ({first.op_type}{computed}) "
                      f"tensor {escape(first.tensor)}, {escape(first.where())}", soft_wrap=True)
        console.print(f"  SQNR {_db(first.sqnr_db)} dB, cosine {first.cosine:.5f}, max abs {first.max_abs:.3g}, "
                      f"relative {first.relative:.3g} (adds {first.added:+.3g}); {report.divergent} tensor(s) "
                      "diverge from here on", soft_wrap=True)
        if len(first.nodes) > 1:
            console.print(f"  nodes since the last tensor compared: {escape(', '.join(first.nodes))}", soft_wrap=True)
        if first.worst_samples:
            console.print("  diverges most on sample(s) " + ", ".join(
                f"#{i} ({r:.3g})" for i, r in first.worst_samples), soft_wrap=True)
    table = Table(show_edge=False, pad_edge=False, title="worst tensors", title_justify="left")
    for col in ("#", "node", "op", "module", "source", "SQNR dB", "cosine", "max abs", "relative", "added"):
        table.add_column(col, justify="right" if col in ("#", "SQNR dB", "cosine", "max abs", "relative", "added")
                         else "left")
    for layer in report.worst:
        op = layer.op_type + (f"/{layer.other_op_type}" if layer.other_op_type and layer.other_op_type != layer.op_type
                              else "")
        style = "bold red" if layer is first else ("red" if layer.divergent else None)
        table.add_row(str(layer.index), escape(layer.node), op, escape(layer.module or "-"),
                      escape(layer.source.rsplit("/", 1)[-1] if layer.source else "-"), _db(layer.sqnr_db),
                      f"{layer.cosine:.5f}", f"{layer.max_abs:.3g}", f"{layer.relative:.3g}", f"{layer.added:+.3g}",
                      style=style)
    console.print(table)
    for layer in report.outputs:
        console.print(f"output {escape(layer.tensor)}: SQNR {_db(layer.sqnr_db)} dB, cosine {layer.cosine:.6f}, "
                      f"max abs {layer.max_abs:.3g}", soft_wrap=True)
    if report.samples_worst:
        console.print("samples that diverge most (worst output, relative): " + ", ".join(
            f"#{s.sample}" + (f" (label {s.label})" if s.label is not None else "") + f" {s.relative:.3g}"
            for s in report.samples_worst), soft_wrap=True)
    if report.weights and report.weights[0].sqnr_db < tol.min_sqnr_db + 10:
        w = report.weights[0]
        console.print(f"worst quantized weight: {escape(w.weight)} of {escape(w.node)}, SQNR {_db(w.sqnr_db)} dB",
                      soft_wrap=True)
    for line in report.unmapped:
        console.print(f"[yellow]not compared:[/] {escape(line)}", soft_wrap=True)
    for line in report.notes:
        console.print(f"note: {escape(line)}", soft_wrap=True)


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
