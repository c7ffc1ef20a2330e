"""Measure ONE configuration in this process and print its result as JSON (the last line of stdout).

    python -m edgedl.stages.bench.worker '{"model": "/path/m.onnx", "threads": 1, "batch": 1}'
    python -m edgedl.stages.bench.worker config.json

``edgedl bench`` starts one worker process per configuration, so the peak resident memory reported is that
configuration's alone. The onnxruntime path needs only numpy, onnxruntime and edgedl.runtime (it can run on a
device); the torch baseline imports torch lazily.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.providers import short_name
from edgedl.runtime.signature import ShapeOptions, Signature
from edgedl.runtime.timing import measure
from edgedl.stages.bench import scenarios
from edgedl.stages.bench.config import WorkerConfig
from edgedl.stages.bench.inputs import feed_sizes, make_feeds
from edgedl.stages.machine import environment
from edgedl.stages.profiling import foreign_nodes, profile_placement

QUANTILES = np.linspace(0, 100, 101)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def once(fn: Callable[[], object]) -> tuple[object, float]:
    """Time a single call (session creation, first inference) through the shared loop; returns (value, ms)."""
    box: list[object] = []
    stats = measure(lambda: box.append(fn()), warmup=0, iterations=1)
    return box[0], stats.min_ms


WARMUP_SECONDS = 0.2


def run_scenario(cfg: WorkerConfig, run_query: Callable[[], object]) -> scenarios.ScenarioResult:
    if cfg.warmup:
        # A few warm-up runs of a 10 us model last 0.1 ms: too short for an idle core to reach full clock and for
        # caches to fill; the first configuration of a run measured ~50 % slow. Warm up for a fixed time as well.
        deadline = time.perf_counter() + WARMUP_SECONDS
        while time.perf_counter() < deadline:
            run_query()
    common = dict(warmup=cfg.warmup, iterations=cfg.iterations, duration_s=cfg.duration_s)
    if cfg.scenario == "single-stream":
        return scenarios.single_stream(run_query, cfg.batch, **common)
    if cfg.scenario == "offline":
        return scenarios.offline(run_query, cfg.batch, **common)
    if cfg.scenario == "server":
        return scenarios.server(run_query, cfg.batch, target_qps=cfg.target_qps, latency_bound_ms=cfg.latency_bound_ms,
                                seed=cfg.seed, **common)
    if cfg.scenario == "multi-stream":
        return scenarios.multi_stream(run_query, cfg.batch, cfg.streams, **common)
    raise EdgeDLError(f"unknown scenario '{cfg.scenario}'")


# providers whose IO binding should keep tensors in device memory: provider -> onnxruntime device type
DEVICE_OF = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "ROCMExecutionProvider": "cuda",
             "MIGraphXExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}


def _ort_run_query(runner, feeds: dict[str, np.ndarray], io_binding: bool, provider: str = "CPUExecutionProvider",
                   provider_options: dict[str, str] | None = None) -> Callable[[], object]:
    if not io_binding:
        # onnxruntime's public InferenceSession.run, so the figure is what a plain session.run loop sees
        # (benchmarks/bench_agreement.py checks it); inputs were validated once, outside the timed region
        run = runner.session.run
        return lambda: run(None, feeds)
    # IO binding: inputs copied to the provider's device once and outputs preallocated there, all outside the
    # timed region, so a run moves no data between host and device (and fixed addresses allow CUDA graphs)
    import onnxruntime as ort

    device = DEVICE_OF.get(provider, "cpu")
    device_id = int((provider_options or {}).get("device_id", 0))
    session = runner.session
    shapes = [o.shape for o in session.run(None, feeds)]  # learn the output shapes with one plain run
    binding = session.io_binding()
    keep = []  # the OrtValues must outlive the binding
    for name, value in feeds.items():
        ov = ort.OrtValue.ortvalue_from_numpy(value, device, device_id)
        keep.append(ov)
        binding.bind_ortvalue_input(name, ov)
    for out, shape in zip(runner.outputs, shapes):
        ov = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), out.dtype.type, device, device_id)
        keep.append(ov)
        binding.bind_ortvalue_output(out.name, ov)
    run_with_iobinding = session.run_with_iobinding

    def run_bound() -> None:
        run_with_iobinding(binding)

    run_bound.keep = keep  # type: ignore[attr-defined]
    return run_bound


def measure_onnxruntime(cfg: WorkerConfig) -> dict[str, Any]:
    import onnxruntime as ort

    from edgedl.runtime import Runner, RunnerConfig

    provider = cfg.provider or "CPUExecutionProvider"

    def runner_config(profile: bool = False) -> RunnerConfig:
        return RunnerConfig(providers=(provider,), provider_options={provider: cfg.provider_options} if cfg.provider_options else {},
                            intra_op_threads=cfg.threads, spinning=cfg.spinning, allow_fallback=cfg.allow_fallback,
                            profile=profile, inter_op_threads=cfg.inter_op_threads, execution_mode=cfg.execution_mode,
                            enable_mem_arena=cfg.memory_arena, graph_optimization=cfg.graph_optimization)

    startup_rss = peak_rss_mib()
    runner, create_ms = once(lambda: Runner(cfg.model, runner_config()))
    signature = Signature.of_runner(runner, ShapeOptions.from_json(cfg.shape_options))
    feeds = runner.check_inputs(make_feeds(signature, cfg.batch, cfg.seed, cfg.input_data))
    sizes = feed_sizes(signature, feeds)
    _first_run(runner, feeds, signature, cfg)
    run_query = _ort_run_query(runner, feeds, cfg.io_binding, provider, cfg.provider_options)
    _, first_ms = once(run_query)
    result = run_scenario(cfg, run_query)
    peak = peak_rss_mib()
    session_providers = [short_name(p) for p in runner.providers]
    fallbacks = [f"{short_name(p)} not enabled by onnxruntime" for p in runner.fallbacks]
    runner.close()

    placement = None
    if cfg.placement or provider != "CPUExecutionProvider":
        placement = profile_placement(lambda: Runner(cfg.model, runner_config(profile=True)),
                                      lambda r: r.run_unchecked(feeds))
        foreign = foreign_nodes(placement, provider)
        if foreign and placement["nodes"]:
            where = ", ".join(f"{n} compute node(s) on {p}" for p, n in foreign.items())
            message = (f"{short_name(provider)} did not execute every node of {Path(cfg.model).name}: "
                       f"{where} (of {placement['nodes']})")
            if not cfg.allow_fallback:
                raise EdgeDLError(message, hint="allow the fallback to accept that", option=("allow_fallback", None))
            fallbacks += [f"{n} compute node(s) of {placement['nodes']} ran on {p}" for p, n in foreign.items()]
    used = list(placement["by_provider"]) if placement and placement["by_provider"] else session_providers[:1]
    return _result(cfg, result, sizes, create_ms, first_ms, startup_rss, peak, {
        "engine_version": f"onnxruntime {ort.__version__}",
        "session": {"inter_op_threads": cfg.inter_op_threads, "execution_mode": cfg.execution_mode,
                    "memory_arena": cfg.memory_arena, "graph_optimization": cfg.graph_optimization},
        "provider_requested": short_name(provider),
        "providers_session": session_providers,
        "providers_used": used,
        "placement": placement,
        "fallback": fallbacks,
        "model_metadata": {k: runner.metadata.get(k) for k in ("recipe", "quantization") if runner.metadata.get(k)},
        "inputs_digest": inputs_digest(feeds),
    })


def _first_run(runner, feeds: dict[str, np.ndarray], signature: Signature, cfg: WorkerConfig) -> None:
    """One checked run before timing: a model that rejects the inputs fails with a one-line reason (which
    inputs, and for synthetic ones, which value ranges) instead of a traceback from the timed loop."""
    try:
        runner.run(feeds)
    except EdgeDLError as exc:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        if cfg.input_data:
            raise EdgeDLError(f"{exc.message} on the inputs of {cfg.input_data} ({shapes})") from exc
        ranges = ", ".join(f"{s.name} {s.value_range[0]:g}..{s.value_range[1]:g}" for s in signature.inputs)
        raise EdgeDLError(f"{exc.message} on synthetic inputs ({shapes}; values {ranges})",
                          hint="give real data (an .npz) or the sizes and value ranges the model accepts",
                          option=("value_range", "INPUT=LO..HI, or --input-data FILE.npz")) from exc


def measure_torch(cfg: WorkerConfig, specs: list[dict[str, Any]], metadata: dict[str, Any],
                  source: dict[str, Any] | None = None, output_specs: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """PyTorch eager on the module the ONNX model was exported from (``source``: a TorchSource, resolved by the
    orchestrator from the model's metadata or --torch-model/--torch-checkpoint), fed the very inputs
    onnxruntime gets: the same Signature (sizes, batch axes, value ranges), seed and data file."""
    from edgedl._lazy import require

    startup_rss = peak_rss_mib()
    torch = require("torch")
    from edgedl.stages.torch_source import TorchSource

    if not source:
        raise EdgeDLError(f"{Path(cfg.model).name}: no torch source to build the baseline from",
                          option=("torch_model", "file.py:Class or RECIPE"))
    torch_source = TorchSource.from_json(source)
    if cfg.threads:  # 0: the library's default, as for onnxruntime
        torch.set_num_threads(cfg.threads)
    try:
        model, create_ms = once(torch_source.build)
    except EdgeDLError as exc:
        if exc.option and exc.option[0] == "init_args":  # bench names them --torch-init-args
            raise EdgeDLError(exc.message, hint=exc.hint, option=("torch_init_args", exc.option[1])) from exc
        raise
    signature = Signature.of(_infos_from_json(specs), _infos_from_json(output_specs or []), metadata,
                             ShapeOptions.from_json(cfg.shape_options))
    feeds = make_feeds(signature, cfg.batch, cfg.seed, cfg.input_data)
    sizes = feed_sizes(signature, feeds)
    order = torch_source.input_names() or [s.name for s in signature.inputs]
    missing = [n for n in order if n not in feeds]
    if missing:
        raise EdgeDLError(f"{torch_source.describe()} takes input(s) {', '.join(missing)} that the ONNX model "
                          f"lacks (it has {', '.join(feeds)})", option=("torch_model", "matching the ONNX model"))
    tensors = [torch.from_numpy(feeds[n]) for n in order]
    with torch.inference_mode():
        run_query = lambda: model(*tensors)  # noqa: E731
        _, first_ms = once(run_query)
        result = run_scenario(cfg, run_query)
    peak = peak_rss_mib()
    return _result(cfg, result, sizes, create_ms, first_ms, startup_rss, peak, {
        "engine_version": f"torch {torch.__version__}",
        "provider_requested": None,
        "providers_session": ["torch-cpu"],
        "providers_used": ["torch-cpu"],
        "placement": None,
        "fallback": [],
        # the ONNX model's own recipe name (not --torch-model's), so ratios pair rows of the same model file
        "model_metadata": {k: metadata[k] for k in ("recipe",) if metadata.get(k)},
        "inputs_digest": inputs_digest(feeds),
        "torch_model": {"kind": torch_source.kind, "recipe": torch_source.target,
                        "checkpoint": torch_source.checkpoint, "threads": torch.get_num_threads()},
    })


def inputs_digest(feeds: dict[str, np.ndarray]) -> str:
    """A short hash of the exact inputs, so a baseline row shows it ran on what onnxruntime ran on."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:16]


def _infos_from_json(specs: list[dict[str, Any]]):
    from edgedl.runtime.tensors import TensorInfo

    return [TensorInfo(s["name"], np.dtype(s["dtype"]), tuple(s["shape"]), s.get("onnx_type", ""),
                       frozenset(s.get("anonymous", ()))) for s in specs]


def _result(cfg: WorkerConfig, result: scenarios.ScenarioResult, sizes: dict[str, int], create_ms: float,
            first_ms: float, startup_rss: float, peak: float, extra: dict[str, Any]) -> dict[str, Any]:
    stats = result.latency
    latency = stats.to_json()
    headline_value = result.samples_per_s if result.headline == "samples/s" else latency[f"{result.headline}_ms"]
    return {
        "model": cfg.model,
        "model_name": Path(cfg.model).stem,
        "model_size_bytes": Path(cfg.model).stat().st_size,
        "engine": cfg.engine,
        **extra,
        "threads": cfg.threads,
        "batch": cfg.batch,
        "sizes": sizes,
        "scenario": result.scenario,
        "io_binding": cfg.io_binding,
        "session_create_ms": create_ms,
        "first_inference_ms": first_ms,
        "latency_ms": latency,
        "latency_quantiles_ms": [round(float(v), 6) for v in np.percentile(stats.samples_ns, QUANTILES) / 1e6],
        "samples_per_query": result.samples_per_query,
        "queries": result.queries,
        "throughput": {"queries_per_s": result.queries_per_s, "samples_per_s": result.samples_per_s},
        "headline": {"metric": result.headline, "value": headline_value},
        "scenario_details": result.extra,
        "startup_rss_mib": startup_rss,
        "peak_rss_mib": peak,
    }


def run_config(cfg: WorkerConfig, torch_inputs: list[dict[str, Any]] | None = None,
               torch_metadata: dict[str, Any] | None = None, torch_source: dict[str, Any] | None = None,
               torch_outputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if cfg.engine == "onnxruntime":
        out = measure_onnxruntime(cfg)
    elif cfg.engine == "torch":
        out = measure_torch(cfg, torch_inputs or [], torch_metadata or {}, torch_source, torch_outputs)
    else:
        raise EdgeDLError(f"unknown engine '{cfg.engine}' (onnxruntime, torch)")
    out["environment"] = environment()
    return out


def main(argv: list[str] | None = None) -> int:
    """CONFIG_JSON is a JSON object or a path to one; extra keys 'torch_inputs', 'torch_outputs',
    'torch_metadata' and 'torch_source' for torch."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m edgedl.stages.bench.worker CONFIG_JSON|config.json", file=sys.stderr)
        return 2
    try:
        text = argv[0]
        data = json.loads(Path(text).read_text() if not text.lstrip().startswith("{") else text)
        torch_inputs = data.pop("torch_inputs", None)
        torch_metadata = data.pop("torch_metadata", None)
        torch_source = data.pop("torch_source", None)
        torch_outputs = data.pop("torch_outputs", None)
        out = run_config(WorkerConfig.from_json(data), torch_inputs, torch_metadata, torch_source, torch_outputs)
    except EdgeDLError as exc:
        print(json.dumps({"error": str(exc), "error_message": exc.message, "error_hint": exc.hint,
                          "error_option": exc.option}))
        return 1
    except Exception as exc:  # a bug: keep the traceback for the report
        traceback.print_exc()
        print(json.dumps({"error": f"worker crashed: {type(exc).__name__}: {exc}", "bug": True}))
        return 2
    sys.stdout.flush()
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
