from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option
from edgedl.cli._chosen import config_option
from edgedl.cli._data import data_options
from edgedl.cli._shapes import shape_options


def _split_names(values) -> tuple[str, ...]:
    """NAME[,NAME] values; @FILE reads names from a file, one per line (what --bisect writes)."""
    from edgedl.stages.quantize.debug import node_names

    return tuple(dict.fromkeys(name for v in values for name in node_names(v)))


def _moved(flag: str, instead: str):
    """A removed option that still says where its job went."""

    def fail(ctx, param, value):
        if value:
            from edgedl.errors import EdgeDLError

            raise EdgeDLError(f"{flag} was replaced: {instead}")
        return value

    return fail


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output .onnx file (never the input).")
@click.option("--mode", default="auto", show_default=True, metavar="dynamic|static|fp16|auto",
              help="int8 with runtime activation scales, int8 with calibrated scales, fp16 (GPU targets), or "
                   "auto: the fastest candidate that passes the accuracy gate, else fp32.")
@click.option("--preset", metavar="x86-vnni|x86-avx2|arm64|jetson", help="Static int8 settings for a hardware family.")
@data_options
@shape_options
@click.option("--format", "fmt", metavar="qdq|qoperator", help="Static int8 graph format [default: qdq].")
@click.option("--per-channel/--per-tensor", default=None, help="Weight scales per output channel [default: per-channel].")
@click.option("--calibration-method", metavar="minmax|percentile|entropy", help="[default: minmax]")
@click.option("--calibration-samples", type=int, help="Use the first N calibration samples [default: all].")
@click.option("--activation-type", metavar="uint8|int8", help="[default: uint8, or the preset's]")
@click.option("--weight-type", metavar="int8|uint8", help="[default: int8]")
@click.option("--reduce-range/--full-range", default=None,
              help="Static int8: 7-bit weights, or full 8-bit [default: the preset's, else this CPU's: 7-bit on x86 "
                   "without VNNI (onnxruntime's AVX2 int8 kernels saturate with 8-bit weights), full 8-bit elsewhere; "
                   "the report says which].")
@click.option("--exclude-nodes", multiple=True, metavar="NAME[,NAME]|@FILE",
              help="Keep these nodes in float (@FILE: one name per line, as --bisect writes).")
@click.option("--exclude-op-types", multiple=True, metavar="OP[,OP]", help="Keep these op types in float.")
@click.option("--fp16-io", is_flag=True, help="fp16 mode: make model inputs/outputs fp16 too [default: keep fp32].")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True, metavar="POINTS",
              help="Labelled data: reject when top-1 accuracy drops by more than this many points.")
@click.option("--metric", metavar="FILE.py:FUNCTION",
              help="Task metric fn(outputs, reference, labels) -> float (higher is better), per batch.")
@click.option("--max-metric-drop", type=float, default=1.0, show_default=True,
              help="Reject when --metric drops by more than this (its own units).")
@click.option("--min-agreement", type=float, metavar="PCT", help="Reject below this top-1 agreement with fp32.")
@click.option("--min-top-k-agreement", type=float, metavar="PCT",
              help="Reject below this top-k agreement (fp32's top-1 among the candidate's top k).")
@click.option("--top-k", type=int, default=5, show_default=True, help="k of the top-k agreement.")
@click.option("--min-sqnr", type=float, metavar="DB", help="Reject when an output's SQNR vs fp32 is below this.")
@click.option("--min-cosine", type=float, metavar="C", help="Reject when an output's cosine vs fp32 is below this.")
@click.option("--accuracy-gate/--no-accuracy-gate", default=True, show_default=True,
              help="--no-accuracy-gate: measure accuracy if there is data, never enforce it.")
@click.option("--speed-batch", type=int, default=32, show_default=True,
              help="Batch size timed besides 1; auto and --require-speedup judge speed at this size.")
@click.option("--speed-seconds", type=float, default=0.6, show_default=True,
              help="Timing budget per model and batch size (0 skips the speed gate).")
@click.option("--threads", type=int, default=1, show_default=True, help="Intra-op threads for both models (0: onnxruntime's default).")
@click.option("--min-speedup", type=float, default=1.05, show_default=True,
              help="What counts as faster (ratio of medians at --speed-batch).")
@click.option("--require-speedup", is_flag=True, help="Exit non-zero unless the result is faster than fp32.")
@click.option("--target-provider", default="cpu", show_default=True,
              help="Execution provider to evaluate and time on; a GPU one lets auto consider fp16.")
@click.option("--bisect", is_flag=True,
              help="When an int8 candidate fails the accuracy gate: find a small set of nodes to keep in float so it "
                   "passes (ranked by per-layer error, then bisection on the gate), report accuracy and speed per "
                   "step, and write the set for --exclude-nodes @FILE.")
@click.option("--bisect-steps", type=int, default=12, show_default=True, metavar="N",
              help="--bisect: models built and judged at most, per candidate.")
@click.option("--bisect-out", type=click.Path(path_type=Path), metavar="FILE",
              help="--bisect: where to write the nodes  [default: OUTPUT with .exclude-nodes.txt].")
@click.option("--debug-layers", is_flag=True, hidden=True, expose_value=False, callback=_moved(
    "--debug-layers", "edgedl debug compare FLOAT.onnx QUANT.onnx --data ... gives the error of every tensor with its "
    "PyTorch source; quantize --bisect finds the nodes to keep in float"))
@click.option("--fallback-worst", type=int, hidden=True, expose_value=False, callback=_moved(
    "--fallback-worst", "--bisect keeps in float only the nodes the accuracy gate needs (ranked by per-layer "
    "error), for any int8 mode"))
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@config_option("quantize")
@json_option
@debug_option
def quantize(model, output, mode, preset, data_options, shape_options, fmt, per_channel, calibration_method,
             calibration_samples, activation_type, weight_type, reduce_range, exclude_nodes, exclude_op_types, fp16_io,
             max_accuracy_drop, metric, max_metric_drop, min_agreement, min_top_k_agreement, top_k, min_sqnr,
             min_cosine, accuracy_gate, speed_batch, speed_seconds, threads, min_speedup, require_speedup,
             target_provider, bisect, bisect_steps, bisect_out, no_progress, chosen, as_json, debug):
    """Quantize MODEL (an fp32 .onnx) to int8 or fp16 behind an accuracy gate and a speed gate.

    Data defaults to the recipe recorded in MODEL's metadata (exported zoo models carry it), else synthetic inputs
    from the declared value ranges (a weaker check, said in the report). Nothing is written at OUTPUT unless the
    result passes its gates, and never without an accuracy check unless --no-accuracy-gate is given.
    """
    from dataclasses import replace

    from edgedl.errors import EdgeDLError
    from edgedl.stages.quantize import GateConfig, QuantizeConfig, StaticConfig, preset as make_preset, quantize as run

    gates = GateConfig(max_accuracy_drop=max_accuracy_drop, accuracy_gate=accuracy_gate, metric=metric,
                       max_metric_drop=max_metric_drop, min_agreement=min_agreement,
                       min_top_k_agreement=min_top_k_agreement, top_k=top_k, min_sqnr=min_sqnr, min_cosine=min_cosine,
                       speed_batch=speed_batch, speed_seconds=speed_seconds, threads=threads,
                       require_speedup=require_speedup, min_speedup=min_speedup, target_provider=target_provider)
    given = {k: v for k, v in dict(format=fmt, per_channel=per_channel, calibration_method=calibration_method,
                                   calibration_samples=calibration_samples, activation_type=activation_type,
                                   weight_type=weight_type, reduce_range=reduce_range).items() if v is not None}
    common = dict(mode=mode, gates=gates, data=data_options, shape_options=shape_options,
                  exclude_nodes=_split_names(exclude_nodes), exclude_op_types=_split_names(exclude_op_types),
                  fp16_keep_io_types=not fp16_io, bisect=bisect, bisect_steps=bisect_steps, bisect_out=bisect_out,
                  progress=not no_progress and not as_json)
    if preset:
        base = make_preset(preset, output, **common)
        config = replace(base, static=replace(base.static, **given))
    else:
        config = QuantizeConfig(output=output, static=StaticConfig(**given), **common)
    report = run(model, config, debug=debug)
    if as_json:
        emit_json(report.to_json())
    else:
        print_report(report)
    if not report.accepted:
        raise EdgeDLError("; ".join(report.reasons) + f" - nothing written at {output}")


# op types whose float compute dominates run time: name their nodes when they stay float
_COMPUTE_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Attention", "Einsum"}


def _fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def print_report(report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console

    console = out_console()
    if not console.is_terminal:  # files and pipes: no wrapping of the wide table
        console.width = max(console.width, 170)
    data = report.to_json()
    verdict = "[green]accepted[/]" if report.accepted else "[red]REJECTED[/]"
    where = (escape(str(report.output_path)) if report.output_path else
             f"kept {escape(str(report.input_path))}, nothing written" if report.accepted else "nothing written")
    console.print(f"[bold]{escape(report.input_path.name)}[/]: mode {report.requested_mode} -> "
                  f"[bold]{report.mode}[/], {verdict} ({where})")
    batches = data["speed"]["batch_sizes"]
    evals = [c.evaluation for c in [report.fp32, *report.candidates] if c.evaluation is not None]
    has = {key: any(getattr(e, key) is not None for e in evals) for key in ("accuracy", "metric", "agreement_top_k")}
    k = next((e.top_k for e in evals if e.top_k), None)
    columns = ["model", "size KiB", *(["top-1 %"] if has["accuracy"] else []), *(["metric"] if has["metric"] else []),
               "agree %", *([f"top-{k} %"] if has["agreement_top_k"] else []), "SQNR dB", "cosine",
               *[f"ms b{b}" for b in batches], *[f"speed-up b{b}" for b in batches], "gate"]
    table = Table(show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "gate") else "right")
    fp32 = report.fp32
    for cand in [fp32, *report.candidates]:
        ev = cand.evaluation
        vs = ev if ev is not None and cand is not fp32 else None  # comparisons with fp32
        worst = {m: min((o[m] for o in vs.outputs.values()), default=None) if vs else None for m in ("sqnr_db", "cosine")}
        gate = "" if cand is fp32 else " ".join(filter(None, [
            {True: "acc ok", False: "acc FAIL", None: ""}[cand.accuracy_ok],
            {True: "faster", False: "not faster", None: ""}[cand.faster]]))
        mark = " *" if report.chosen is cand or (cand is fp32 and report.chosen and report.chosen.mode == "fp32") else ""
        table.add_row(cand.mode + mark, f"{cand.size_bytes / 1024:.1f}",
                      *([_fmt(ev.accuracy if ev else None)] if has["accuracy"] else []),
                      *([_fmt(ev.metric if ev else None, ".4g")] if has["metric"] else []),
                      _fmt(vs.agreement if vs else None, ".1f"),
                      *([_fmt(vs.agreement_top_k if vs else None, ".1f")] if has["agreement_top_k"] else []),
                      _fmt(worst["sqnr_db"], ".1f"), _fmt(worst["cosine"], ".5f"),
                      *[_fmt(cand.latency_ms.get(b), ".4f") for b in batches],
                      *[_fmt(1.0 if cand is fp32 and cand.latency_ms else cand.speedup.get(b), ".2f") for b in batches],
                      gate)
    console.print(table)
    shapes = data["speed"]["shapes"].get(str(report.speed_batch), {})
    at = ", ".join(f"{k} {'x'.join(map(str, v)) or 'scalar'}" for k, v in shapes.items())
    console.print(f"timed: median of interleaved runs, {report.threads} thread(s), provider {report.provider}; "
                  f"auto/--require-speedup judge batch {report.speed_batch} ({escape(at)})" if batches
                  else "speed gate skipped")
    for role in ("evaluation", "calibration"):
        used = data["data"].get(role)
        if used:
            weak = " - synthetic: a weaker check" if used["kind"] == "synthetic" else ""
            console.print(f"{role}: {escape(used['source'])}{' (labelled)' if used['labelled'] else ''}{weak}")
    shown = report.chosen if report.chosen is not None and report.chosen.checks else (
        report.candidates[0] if len(report.candidates) == 1 else None)
    if shown is not None and shown.checks:
        console.print(f"gate ({shown.mode}): " + "; ".join(
            f"{escape(c.describe())} {'ok' if c.ok else 'FAIL'}" for c in shown.checks))
    console.print("ops before: " + ", ".join(f"{k}×{v}" for k, v in data["op_types"]["before"].items()))
    if data["op_types"]["after"]:
        console.print("ops after:  " + ", ".join(f"{k}×{v}" for k, v in data["op_types"]["after"].items()))
    if report.chosen is not None and report.chosen.mode != "fp32":
        q = ", ".join(f"{k}×{v}" for k, v in data["ops_quantized"].items()) or "none"
        f = ", ".join(f"{k}×{len(v)}" + (f" ({', '.join(v)})" if k in _COMPUTE_OPS else "")
                      for k, v in data["ops_left_float"].items()) or "none"
        console.print(f"{'fp16' if report.chosen.mode == 'fp16' else 'int8'} (incl. folded into quantized ops): {q}")
        console.print(f"left float: {f}")
    for cand in report.candidates:
        if cand.bisection is not None:
            print_bisection(console, cand.bisection)
    for note in data["notes"]:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    for reason in report.reasons:
        console.print(f"[red]rejected:[/] {escape(reason)}", soft_wrap=True)


def print_bisection(console, bisection) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]bisect ({bisection.mode})[/]: {len(bisection.ranked)} group(s) of nodes ranked by the "
                  "error they add (debug compare on calibration data), worst first: " + ", ".join(
                      f"{escape('+'.join(g.nodes))} (+{g.added:.2g})" for g in bisection.ranked[:6])
                  + (" ..." if len(bisection.ranked) > 6 else ""), soft_wrap=True)
    steps = bisection.steps
    # the figures the gate had: top-1 and agreement for a classifier with labels, the task metric when one was given
    figures = [(name, attr, fmt) for name, attr, fmt in (("top-1 %", "accuracy", ".2f"), ("agree %", "agreement", ".1f"),
                                                         ("metric", "metric", ".2f"))
               if any(getattr(s, attr) is not None for s in steps)]
    table = Table(show_edge=False, pad_edge=False)
    for col in ("step", "kept in float", "gate", *(f[0] for f in figures), "SQNR dB",
                f"ms b{bisection.speed_batch}" if bisection.speed_batch else "ms", "speed-up", "tried"):
        table.add_column(col, justify="right" if col not in ("kept in float", "gate", "tried") else "left")
    for s in steps:
        kept = ", ".join(s.kept_float) or "-"
        table.add_row(str(s.step), escape(kept if len(kept) <= 60 else f"{len(s.kept_float)} nodes"),
                      "[green]pass[/]" if s.passed else "[red]fail[/]",
                      *(_fmt(getattr(s, attr), fmt) for _, attr, fmt in figures),
                      _fmt(s.sqnr_db, ".1f"), _fmt(s.latency_ms, ".4f"), _fmt(s.speedup, ".2f"), escape(s.why))
    console.print(table)
    if bisection.fix is not None:
        console.print(f"[green]kept in float:[/] {escape(', '.join(bisection.fix))} -> {escape(str(bisection.file))} "
                      f"(use: --exclude-nodes @{escape(str(bisection.file))})", soft_wrap=True)
    for note in bisection.notes:
        console.print(f"note: {escape(note)}", soft_wrap=True)
