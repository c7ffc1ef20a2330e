from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from edgedl.cli import debug_option, emit_json, json_option
from edgedl.cli._chosen import config_option
from edgedl.cli._groups import option_group
from edgedl.cli._shapes import shape_options
from edgedl.cli._ssh import ssh_options


class BenchCommand(click.Command):
    """`edgedl bench MODEL...` measures; `edgedl bench compare OLD NEW` compares. A positional MODEL list and a
    subcommand do not mix in a click.Group, so the first argument picks."""

    def make_context(self, info_name, args, parent=None, **extra):
        if args and args[0] == "compare":
            return compare.make_context(f"{info_name} compare", list(args[1:]), parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def _providers(providers, provider_options, allow_fallback, no_placement) -> dict:
    from edgedl.stages.bench.config import parse_provider_option

    options: dict[str, dict[str, str]] = {}
    for text in provider_options:
        name, key, value = parse_provider_option(text)
        options.setdefault(name, {})[key] = value
    return dict(providers=tuple(_split(providers)) or ("cpu",), provider_options=options, allow_fallback=allow_fallback,
                placement=not no_placement)


provider_options = option_group("providers", [
    click.option("-p", "--provider", "providers", multiple=True, metavar="NAME",
                 help="Execution provider (repeatable or comma-separated): cpu, cuda, tensorrt, openvino, xnnpack, "
                      "coreml, qnn, dnnl, acl ... or onnxruntime's full name.  [default: cpu]"),
    click.option("--provider-option", "provider_options", multiple=True, metavar="PROVIDER:KEY=VALUE",
                 help="e.g. cuda:device_id=0, tensorrt:trt_fp16_enable=1, tensorrt:trt_engine_cache_enable=1, "
                      "cuda:enable_cuda_graph=1 (with --io-binding)."),
    click.option("--allow-fallback", is_flag=True, help="Accept a provider that is missing or left nodes to another."),
    click.option("--no-placement", is_flag=True, help="Skip the profiling pass that shows which provider ran each node "
                                                       "(always done for non-CPU providers)."),
], _providers)


def _measurement(threads, batch, warmup, iterations, duration, input_data, seed, io_binding, spinning) -> dict:
    from edgedl.stages.bench.config import parse_int_list

    return dict(threads=parse_int_list(threads, "--threads", minimum=0), batches=parse_int_list(batch, "--batch"),
                warmup=warmup, iterations=iterations,
                duration_s=duration if duration is not None else (None if iterations else 1.0), input_data=input_data,
                seed=seed, io_binding=io_binding, spinning=spinning)


measurement_options = option_group("measurement", [
    click.option("-t", "--threads", default="1", show_default=True, metavar="N[,N...]",
                 help="Intra-op thread counts (0: onnxruntime's default)."),
    click.option("-b", "--batch", default="1", show_default=True, metavar="N[,N...]", help="Batch sizes."),
    click.option("--warmup", default=10, show_default=True, help="Untimed runs before measuring."),
    click.option("-n", "--iterations", type=int, help="Timed queries (default: as many as fit in --duration)."),
    click.option("-d", "--duration", type=float, help="Seconds to measure each configuration.  [default: 1]"),
    click.option("--input-data", type=click.Path(path_type=Path), help=".npz with one array per input name."),
    click.option("--seed", default=0, show_default=True, help="Seed of the random inputs."),
    click.option("--io-binding", is_flag=True, help="Bind inputs once and run through onnxruntime's IO binding."),
    click.option("--spinning/--no-spinning", default=None, help="Let idle intra-op threads spin (onnxruntime default)."),
], _measurement)

scenario_options = option_group("scenario", [
    click.option("-s", "--scenario", default="single-stream", show_default=True,
                 help="single-stream, offline, server (Poisson arrivals) or multi-stream."),
    click.option("--target-qps", type=float, help="Server scenario: mean query arrival rate."),
    click.option("--latency-bound", type=float, metavar="MS", help="Server scenario: p99 latency the run must hold."),
    click.option("--streams", default=4, show_default=True, help="Multi-stream scenario: concurrent inferences per query."),
], lambda scenario, target_qps, latency_bound, streams: dict(scenario=scenario, target_qps=target_qps,
                                                             latency_bound_ms=latency_bound, streams=streams))

def _baseline(baseline, torch_model, torch_checkpoint, torch_init_args) -> dict:
    from edgedl.stages.torch_source import parse_init_args

    return dict(baseline=baseline, torch_model=torch_model, torch_checkpoint=torch_checkpoint,
                torch_init_args=parse_init_args(torch_init_args, "torch_init_args"))


baseline_options = option_group("baseline", [
    click.option("--baseline", type=str, help="'torch': PyTorch eager on the same inputs and threads, side by side."),
    click.option("--torch-model", help="The PyTorch module for --baseline torch: a recipe, file.py:Class or a TorchScript "
                                       "file (default: the one the model was exported from, recorded in its metadata)."),
    click.option("--torch-checkpoint", type=click.Path(path_type=Path),
                 help="Its weights: .safetensors, a torch.save'd state_dict, a train --out dir, or a TorchScript file."),
    click.option("--torch-init-args", metavar="JSON",
                 help="""Constructor arguments of a file.py:Class --torch-model, e.g. '{"width": 64}'."""),
], _baseline)


@dataclass(frozen=True)
class BenchOutput:
    quiet: bool
    markdown: bool
    save: Path | None
    plot: Path | None


output_options = option_group("output", [
    click.option("--quiet", is_flag=True, help="No progress bar."),
    click.option("--markdown", is_flag=True, help="Print a markdown table instead of the terminal table."),
    click.option("--save", type=click.Path(path_type=Path), help="Write the full report (JSON) here."),
    click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG of latency distributions and throughput."),
], BenchOutput)


@click.command(cls=BenchCommand, epilog="Compare two saved runs: edgedl bench compare OLD.json NEW.json --threshold 5%")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@provider_options
@measurement_options
@shape_options
@scenario_options
@baseline_options
@ssh_options("--remote", required=False, port=False)
@click.option("--remote-dir", default="edgedl-bench", show_default=True, help="--remote: working directory on the device.")
@output_options
@config_option("bench")
@json_option
@debug_option
def bench(models, providers, measurement, shape_options, scenario, baseline, ssh, remote_dir, output, chosen, as_json,
          debug):
    """Benchmark MODEL.onnx files on execution providers, each configuration in its own process.

    Reports latency percentiles, throughput, peak memory and the providers that actually ran the nodes; a
    requested provider that is missing or fell back to the CPU fails the run unless --allow-fallback.
    """
    from edgedl.stages.bench import BenchConfig, run_bench

    # a configuration `edgedl optimize` chose (--config): its session settings
    session = ({k: v for k, v in chosen.session_for(models).items()
                if k in ("inter_op_threads", "execution_mode", "memory_arena", "graph_optimization")} if chosen else {})
    config = BenchConfig(models=list(models), shape_options=shape_options, **providers, **measurement, **scenario,
                         **baseline, **session)
    _check_outputs(output.save, output.plot)  # before measuring: a bad path must not cost the run
    target = ssh.remote_target()
    show_progress = not output.quiet and not as_json
    if target:
        from edgedl.stages.bench.orchestrate import run_bench_remote

        report = run_bench_remote(config, target, remote_dir=remote_dir, show_progress=show_progress)
    else:
        report = run_bench(config, show_progress=show_progress)
    if output.save:
        report.save(output.save)
    if output.plot:
        from edgedl.stages.bench.plot import plot_report

        plot_report(report, output.plot)
    for line in report.fallbacks():
        click.secho(f"warning: FALLBACK {line}", fg="red", bold=True, err=True)
    if as_json:
        emit_json(report.to_json())
        return
    if output.markdown:
        click.echo(report.markdown(), nl=False)
    else:
        from edgedl.console import out_console

        console = out_console()
        table = report.rich_table(console.width if console.is_terminal else None)
        # a file or a pipe gets the whole table at its own width, and a terminal too narrow even for the fitted
        # table lets its lines wrap: numbers are never squeezed into "…"
        from rich.console import Console

        console.width = max(console.width, Console(width=10_000).measure(table).maximum)
        console.print(table)
        console.print(f"measured on {report.environment_line()}", soft_wrap=True)
        for line in report.scenario_lines():
            console.print(line)
    if output.save:
        click.echo(f"saved {output.save}", err=True)
    if output.plot:
        click.echo(f"plotted {output.plot}", err=True)


def _check_outputs(save: Path | None, plot: Path | None) -> None:
    from edgedl.errors import EdgeDLError
    from edgedl.stages.files import writable_output

    for option, path in (("--save", save), ("--plot", plot)):
        if path is not None and path.is_dir():
            raise EdgeDLError(f"{option} {path} is a directory; give a file name such as {path / 'bench'}"
                              f"{'.json' if option == '--save' else '.png'}")
        if path is not None:
            writable_output(path, option)
    if plot is not None:
        if plot.suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
            raise EdgeDLError(f"--plot {plot}: use a .png, .svg, .pdf or .jpg file name")
        from edgedl._lazy import require

        require("matplotlib")


@click.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--threshold", default="5%", show_default=True, help="Change beyond which a metric counts as changed.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="p50, p90, p99, mean, throughput, memory (repeatable).  [default: p50, throughput]")
@json_option
@debug_option
def compare(old, new, threshold, metrics, as_json, debug):
    """Compare two `edgedl bench --save` reports; exit 3 if any metric regressed beyond --threshold."""
    from edgedl.stages.bench.compare import REGRESSION_EXIT_CODE, compare_reports, verdict
    from edgedl.stages.bench.config import parse_percent
    from edgedl.stages.bench.report import BenchReport

    threshold_pct = parse_percent(threshold)
    result = compare_reports(BenchReport.load(old), BenchReport.load(new), threshold_pct,
                             tuple(_split(metrics)) or ("p50", "throughput"))
    if as_json:
        emit_json(result.to_json())
    else:
        from rich.table import Table

        from edgedl.console import out_console

        table = Table(title=f"{old.name} → {new.name} (threshold {threshold_pct:g}%)", show_edge=False, pad_edge=False)
        for col in ("configuration", "metric", "old", "new", "change", "verdict"):
            table.add_column(col, justify="left" if col in ("configuration", "metric", "verdict") else "right")
        for c in result.changes:
            v = verdict(c, threshold_pct)
            table.add_row(c.key, c.metric, f"{c.old:.4g}", f"{c.new:.4g}", f"{c.change_pct:+.1f}%", v,
                          style="bold red" if v == "REGRESSION" else ("green" if v == "improved" else None))
        console = out_console()
        if not console.is_terminal:
            console.width = max(console.width, 150)
        console.print(table)
        for key in result.only_old:
            console.print(f"only in {old.name}: {key}")
        for key in result.only_new:
            console.print(f"only in {new.name}: {key}")
        n = len(result.regressions)
        console.print(f"{n} regression(s) beyond {threshold_pct:g}%" if n else f"no regression beyond {threshold_pct:g}%")
    if not result:
        # sys.exit, not click's Exit: with standalone_mode=False click would turn Exit into a return value
        sys.exit(REGRESSION_EXIT_CODE)
