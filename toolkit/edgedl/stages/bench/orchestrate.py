"""Run a BenchConfig: one worker subprocess per configuration, collected into a BenchReport."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from edgedl.console import progress
from edgedl.errors import EdgeDLError
from edgedl.runtime.providers import short_name
from edgedl.stages.bench.config import BenchConfig, WorkerConfig
from edgedl.stages.bench.report import BenchReport

WORKER = [sys.executable, "-m", "edgedl.stages.bench.worker"]


def _torch_context(model: str, config: BenchConfig) -> dict[str, Any]:
    """What the torch worker needs, read here so the torch process loads no onnxruntime: the ONNX model's inputs
    and outputs and metadata (the Signature onnxruntime's feeds come from) and the module to build."""
    from edgedl.runtime import Runner
    from edgedl.stages.torch_source import source_for

    def specs(infos):
        return [{**i.to_json(), "onnx_type": i.onnx_type, "anonymous": sorted(i.anonymous)} for i in infos]

    with Runner(model) as runner:
        metadata = runner.metadata
        context = {"torch_inputs": specs(runner.inputs), "torch_outputs": specs(runner.outputs),
                   "torch_metadata": metadata}
    checkpoint = str(config.torch_checkpoint) if config.torch_checkpoint else None
    try:
        source = source_for(config.torch_model, checkpoint, metadata, config.torch_init_args)
    except EdgeDLError as exc:
        raise EdgeDLError(f"{Path(model).name}: {exc.message}", hint=exc.hint, option=exc.option) from exc
    return {**context, "torch_source": source.to_json()}


def _label(cfg: WorkerConfig) -> str:
    engine = "torch" if cfg.engine == "torch" else short_name(cfg.provider or "cpu")
    return f"{Path(cfg.model).stem} {engine} t{cfg.threads} b{cfg.batch}"


def run_worker(cfg: WorkerConfig, extra: dict[str, Any] | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Measure one configuration in a fresh Python process; returns its result dict or raises EdgeDLError."""
    payload = json.dumps({**cfg.to_json(), **(extra or {})})
    budget = timeout_s or 120 + 20 * (cfg.duration_s or 0) + 0.5 * (cfg.iterations or 0)
    try:
        proc = subprocess.run([*WORKER, payload], capture_output=True, text=True, timeout=budget,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        raise EdgeDLError(f"{_label(cfg)}: the measurement did not finish within {budget:.0f} s; "
                          "lower --iterations/--duration") from None
    return worker_result(_label(cfg), proc.returncode, proc.stdout, proc.stderr)


def worker_result(label: str, returncode: int, stdout: str, stderr: str, where: str = "") -> dict[str, Any]:
    """The result a worker printed (the last JSON line of its stdout), or the error it reported, as one
    EdgeDLError (a crash: the signal; a bug of ours: RuntimeError). The one reader of a worker's output, for
    local runs and for runs on a device (``where``: " on DEVICE")."""
    result = None
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                pass
            break
    if returncode == 0 and isinstance(result, dict) and "error" not in result:
        return result
    if isinstance(result, dict) and "error" in result and not result.get("bug"):
        if result.get("error_message"):
            option = result.get("error_option")
            raise EdgeDLError(f"{label}{where}: {result['error_message']}", hint=result.get("error_hint"),
                              option=tuple(option) if option else None)
        raise EdgeDLError(f"{label}{where}: {result['error']}")
    illegal = returncode in (-4, 132) or "Illegal instruction" in stderr
    cpu_hint = (" (Illegal instruction: this onnxruntime build does not suit the CPU - run `edgedl doctor` there, and "
                "check the profile's known-bad versions)" if illegal else "")
    if where:  # on a device, whatever failed there is told here in one line, never as our traceback
        why = (result or {}).get("error") or " | ".join(stderr.strip().splitlines()[-3:]) or f"exit {returncode}, no output"
        raise EdgeDLError(f"benchmark of {label}{where} failed: {why}{cpu_hint}")
    if returncode < 0:
        raise EdgeDLError(f"{label}: the worker process was killed by {signal.Signals(-returncode).name}{cpu_hint}")
    tail = "\n".join(stderr.strip().splitlines()[-15:])
    raise RuntimeError(f"bench worker failed for {label} (exit {returncode}):\n{tail}")


def _apply_shapes(config: BenchConfig, configs: list[WorkerConfig]) -> None:
    """Sizes, batch axes and ranges apply to the models that have that dim, input or output; a name that no
    model has is a typo."""
    if not config.shape_options:
        return
    from edgedl.runtime import Runner
    from edgedl.runtime.signature import options_per_model

    models = sorted({c.model for c in configs}, key=str)
    tensors = []
    for model in models:
        with Runner(model) as runner:
            tensors.append((runner.inputs, runner.outputs))
    per_model = dict(zip(models, options_per_model(config.shape_options, tensors)))
    for c in configs:
        c.shape_options = per_model[c.model].to_json()


def run_bench(config: BenchConfig, show_progress: bool = True,
              on_result: Callable[[dict[str, Any]], None] | None = None) -> BenchReport:
    configs = config.configurations()
    _apply_shapes(config, configs)
    torch_extra: dict[str, dict[str, Any]] = {}
    if config.baseline == "torch":
        for model in {c.model for c in configs}:
            torch_extra[model] = _torch_context(model, config)
    results = []
    environment: dict[str, Any] = {}
    with progress("benchmarking", total=len(configs), enabled=show_progress, lines=True) as advance:
        for cfg in configs:
            advance(0, info=_label(cfg))
            result = run_worker(cfg, torch_extra.get(cfg.model) if cfg.engine == "torch" else None)
            environment = result.pop("environment", None) or environment
            results.append(result)
            if on_result:
                on_result(result)
            advance(1)
    return BenchReport(config.to_json(), environment, results)


def run_bench_remote(config: BenchConfig, target, *, remote_dir: str = "edgedl-bench", show_progress: bool = True,
                     cache_dir: Path | None = None) -> BenchReport:
    """The same configurations, measured by the same worker, but on a device over SSH (``--remote``).

    The device gets the models and the edgedl runtime only (no torch), so a torch baseline cannot run there.
    """
    from edgedl.stages.bench.remote import remote_bench

    if config.baseline:
        raise EdgeDLError("--baseline torch cannot run with --remote: the device gets the runtime, never torch; "
                          "benchmark the baseline locally in a separate run")
    configs = config.configurations()
    _apply_shapes(config, configs)
    models = list(dict.fromkeys(c.model for c in configs))  # the configurations' (resolved) paths, in order
    out = remote_bench(target, [Path(m) for m in models], [c.to_json() for c in configs],
                       remote_dir=remote_dir, cache_dir=cache_dir, progress=show_progress)
    results = [{k: v for k, v in r.items() if k != "environment"} for r in out.results]
    environment = {**(out.environment or {}), "device": out.host, "profile": out.profile}
    return BenchReport({**config.to_json(), "remote": out.host}, environment, results)
