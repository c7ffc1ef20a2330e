from __future__ import annotations

from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option
from edgedl.cli._data import data_options
from edgedl.cli._shapes import shape_options
from edgedl.cli._ssh import ssh_options


def _list_knobs(ctx, _param, value) -> None:
    if not value or ctx.resilient_parsing:
        return
    from edgedl.stages.optimize.space import KNOBS

    for k in KNOBS:
        values = ", ".join("all" if v is None else ("-" if v == () else str(v)) for v in k.values)
        click.echo(f"{k.name:20} {k.stage:8} [{values}]  {k.description}")
    ctx.exit()


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-t", "--target", required=True, help="Device profile (rpi5, x86-server, ... or a .toml path).")
@click.option("--objective", default="latency", show_default=True, metavar="latency|throughput|size",
              help="What to minimize: median latency at the scenario's batch, samples/s (batch searched too), or "
                   "file size (among configurations not slower than fp32).")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True, metavar="POINTS",
              help="Labelled data: reject configurations whose top-1 accuracy drops by more (quantize's gate).")
@click.option("--metric", metavar="FILE.py:FUNCTION",
              help="Task metric fn(outputs, reference, labels), higher is better.")
@click.option("--max-metric-drop", type=float, default=1.0, show_default=True, help="Allowed drop of --metric.")
@click.option("--min-agreement", type=float, metavar="PCT", help="Reject below this top-1 agreement with fp32.")
@click.option("--min-sqnr", type=float, metavar="DB", help="Reject when an output's SQNR vs fp32 is below this.")
@click.option("--latency-budget", type=float, metavar="MS", help="Reject configurations whose p90 per query is above.")
@click.option("--budget", default="10m", show_default=True, metavar="TIME",
              help="Time for the search (building, checking and timing): 90s, 10m, 1h.")
@click.option("-b", "--batch", metavar="N[,N...]",
              help="The scenario's batch [default: 1]; the throughput objective searches these sizes "
                   "[default: 1,8,32].")
@click.option("--space", "space", multiple=True, metavar="KNOB=V[,V...]",
              help="Search only these values of a knob (repeatable), e.g. precision=fp32,static, "
                   "intra_op_threads=1,2; --list-knobs shows them all.")
@click.option("--exclude-nodes", multiple=True, metavar="NAME[,NAME]|@FILE",
              help="A set of nodes to try keeping in float (repeatable: one set each; @FILE: the set "
                   "`quantize --bisect` wrote).")
@data_options
@shape_options
@ssh_options("--device", required=False, port=False,
             host_help="Time on this device over SSH (as bench --remote) [default: this machine].")
@click.option("--remote-dir", default="edgedl-optimize", show_default=True, help="--device: working directory there.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Directory to write model.onnx, config.json, report.json and pareto.png into (new or empty).")
@click.option("--package", "make_package", is_flag=True,
              help="Also bundle the chosen model for the target in DIR/bundle.")
@click.option("--seed", default=0, show_default=True, help="Seed of the search order.")
@click.option("--rounds", default=5, show_default=True, help="Interleaved rounds of the final re-measurement.")
@click.option("--cache", "cache", type=click.Path(path_type=Path),
              help="Cache directory [default: $EDGEDL_CACHE/optimize, else ~/.cache/edgedl/optimize].")
@click.option("--no-cache", is_flag=True, help="Measure everything again (read nothing back from the cache).")
@click.option("--list-knobs", is_flag=True, is_eager=True, expose_value=False, callback=_list_knobs,
              help="List the knobs of the search space and exit.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@json_option
@debug_option
def optimize(model, target, objective, max_accuracy_drop, metric, max_metric_drop, min_agreement, min_sqnr,
             latency_budget, budget, batch, space, exclude_nodes, data_options, shape_options, ssh, remote_dir, output,
             make_package, seed, rounds, cache, no_cache, no_progress, as_json, debug):
    """Search quantization, graph optimization, onnxruntime session settings and batch for MODEL (an fp32 .onnx)
    on a device profile: every configuration judged by quantize's accuracy gate and timed by bench's worker
    (here, or on --device), within --budget; the finalists re-measured in interleaved rounds, and the best one
    on the accuracy / speed / size front chosen, with its reason.

    A re-run, or one with a larger budget or space, reuses every cached build, check and timing.
    """
    from edgedl.errors import EdgeDLError
    from edgedl.stages.bench.config import parse_int_list
    from edgedl.stages.optimize import OptimizeConfig, RemoteDevice, optimize as run, parse_budget, parse_space
    from edgedl.stages.quantize.config import GateConfig
    from edgedl.stages.quantize.debug import node_names

    over_ssh = ssh.remote_target()
    remote = RemoteDevice(over_ssh, remote_dir) if over_ssh else None
    gates = GateConfig(max_accuracy_drop=max_accuracy_drop, metric=metric, max_metric_drop=max_metric_drop,
                       min_agreement=min_agreement, min_sqnr=min_sqnr, speed_seconds=0.0)
    sets = tuple(node_names(group) for group in exclude_nodes)
    config = OptimizeConfig(
        target=target, objective=objective, gates=gates, latency_budget_ms=latency_budget,
        budget_s=parse_budget(budget), batches=parse_int_list(batch, "--batch") if batch else None,
        space=parse_space(space), exclude_node_sets=sets, data=data_options, shape_options=shape_options,
        device=remote, output=output, package=make_package, seed=seed, cache_dir=cache, use_cache=not no_cache,
        rounds=rounds, progress=not no_progress and not as_json)
    report = run(model, config, debug=debug)
    if as_json:
        emit_json(report.to_json())
    else:
        print_report(report)


def print_report(report) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgedl.console import out_console
    from edgedl.stages.optimize.front import ALPHA, TIE_MARGIN

    console = out_console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    data = report.to_json()
    chosen = data["chosen"]
    console.print(f"[bold]{escape(report.model.name)}[/] on {escape(report.target)} ({escape(report.device)}), "
                  f"objective {report.objective}: [bold]{escape(chosen['label'])}[/]")
    front = {m["sha256"] + m["label"] for m in data["pareto"]}
    table = Table(show_edge=False, pad_edge=False)
    for col in ("configuration", "size KiB", "acc. drop", "p50 ms", "p90 ms", "samples/s", "vs fp32", "speed-up",
                "front"):
        table.add_column(col, justify="left" if col in ("configuration", "vs fp32", "front") else "right")
    for m in sorted(data["finalists"], key=lambda m: -m["speedup"]):
        mark = " *" if m["label"] == chosen["label"] and m["sha256"] == chosen["sha256"] else ""
        drop = m["accuracy_drop"] if m["accuracy_drop"] is not None else m["accuracy_loss"]
        table.add_row(escape(m["label"]) + mark, f"{m['size_bytes'] / 1024:.1f}",
                      "-" if drop is None else f"{drop:.2f}",
                      f"{m['latency_ms']:.4g}", f"{m['p90_ms']:.4g}", f"{m['throughput']:,.0f}", m["vs_fp32"],
                      f"{m['speedup']:.2f}", "yes" if m["sha256"] + m["label"] in front else "")
    console.print(table)
    lo, hi = min(r for r in _ratios(chosen)), max(r for r in _ratios(chosen))
    console.print(f"re-measured: {len(chosen['rounds'])} interleaved rounds on {escape(report.device)}; faster "
                  f"counts only when a sign test over the rounds gives p <= {ALPHA:g} and the median margin is "
                  f">= {TIE_MARGIN:.0%} (else: tie)", soft_wrap=True)
    console.print(f"chosen: {escape(chosen['label'])} - {escape(report.reason)}", soft_wrap=True)
    if lo != hi:
        console.print(f"  per-round p50 of the chosen: {lo:.4g} to {hi:.4g} ms")
    w = data["work"]
    console.print(f"search: {w['candidates']} of {data['space_size']} configurations in the space; built {w['built']}, "
                  f"checked {w['evaluated']}, timed {w['timed']} in this run (cache: {w['cache_hits']} reused); "
                  f"budget {data['spent_s']:.0f} of {data['budget_s']:.0f} s, wall {report.wall_s:.0f} s")
    for note in data["notes"]:
        console.print(f"note: {escape(note)}", soft_wrap=True)
    for key, path in data["outputs"].items():
        console.print(f"{key}: {escape(path)}", soft_wrap=True)


def _ratios(member: dict) -> list[float]:
    return [r["p50_ms"] for r in member["rounds"]]
