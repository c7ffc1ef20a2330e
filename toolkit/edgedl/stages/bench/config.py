"""Typed configuration of a benchmark run, and of the single configuration one worker process measures."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedl.errors import EdgeDLError
from edgedl.runtime.providers import resolve_provider
from edgedl.runtime.signature import ShapeOptions

# scenario -> what it reports first (after MLPerf LoadGen)
SCENARIOS: dict[str, str] = {
    "single-stream": "one query at a time; headline p90 latency",
    "offline": "all samples available at once, batched; headline samples/s",
    "server": "Poisson arrivals at --target-qps; headline p99 latency and whether --latency-bound held",
    "multi-stream": "queries of --streams concurrent runs; headline p99 query latency",
}
BASELINES = ("torch",)


def _did_you_mean(value: str, known: list[str], what: str) -> EdgeDLError:
    import difflib

    close = difflib.get_close_matches(value, known, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return EdgeDLError(f"unknown {what} '{value}'; {hint}known: {', '.join(known)}")


def parse_int_list(text: str, what: str, minimum: int = 1) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); every value an integer >= ``minimum`` (threads: 0 = onnxruntime's default)."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < minimum:
            kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
            raise EdgeDLError(f"{what} must be {kind} separated by commas (e.g. 1,2,4), got '{text}'")
        values.append(int(part))
    if not values:
        raise EdgeDLError(f"{what} is empty; give e.g. 1,2,4")
    return tuple(dict.fromkeys(values))


def parse_provider_option(text: str) -> tuple[str, str, str]:
    """'cuda:device_id=0' -> ('CUDAExecutionProvider', 'device_id', '0')."""
    m = re.fullmatch(r"\s*([^:=\s]+)\s*:\s*([^=\s]+)\s*=\s*(.*?)\s*", text)
    if not m:
        raise EdgeDLError(
            f"--provider-option takes PROVIDER:KEY=VALUE (e.g. cuda:device_id=0, tensorrt:trt_fp16_enable=1), got '{text}'"
        )
    return resolve_provider(m.group(1)), m.group(2), m.group(3)


def parse_percent(text: str) -> float:
    """'5%' or '5' or '0.05x'... -> 5.0 (percent)."""
    t = str(text).strip().rstrip("%")
    try:
        value = float(t)
    except ValueError:
        raise EdgeDLError(f"--threshold takes a percentage such as 5% , got '{text}'") from None
    if value < 0:
        raise EdgeDLError(f"--threshold must be >= 0, got '{text}'")
    return value


@dataclass
class BenchConfig:
    """A whole benchmark: the cross product models x engines x threads x batches, in one scenario."""

    models: list[Path]
    providers: tuple[str, ...] = ("cpu",)
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    threads: tuple[int, ...] = (1,)
    batches: tuple[int, ...] = (1,)
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)
    warmup: int = 10
    iterations: int | None = None
    duration_s: float | None = 1.0
    input_data: Path | None = None
    seed: int = 0
    io_binding: bool = False
    spinning: bool | None = None
    scenario: str = "single-stream"
    target_qps: float | None = None
    latency_bound_ms: float | None = None
    streams: int = 4
    allow_fallback: bool = False
    baseline: str | None = None
    torch_model: str | None = None  # a recipe (file or zoo name) for models that carry no recipe metadata
    torch_checkpoint: Path | None = None
    torch_init_args: dict[str, Any] | list[Any] | None = None  # constructor arguments of a file.py:Class torch_model
    placement: bool = True  # profile one extra session to see which provider ran each node
    # the rest of onnxruntime's session settings (`edgedl optimize` searches them; `bench --config` applies them)
    inter_op_threads: int = 0
    execution_mode: str = "sequential"
    memory_arena: bool = True
    graph_optimization: str = "all"

    def __post_init__(self) -> None:
        if not self.models:
            raise EdgeDLError("give at least one model file: edgedl bench model.onnx")
        self.models = [Path(m) for m in self.models]
        for m in self.models:
            if not m.is_file():
                raise EdgeDLError(f"model file not found: {m}; pass the path to an .onnx file")
        self.providers = tuple(dict.fromkeys(resolve_provider(p) for p in self.providers)) or ("CPUExecutionProvider",)
        self.provider_options = {resolve_provider(k): dict(v) for k, v in self.provider_options.items()}
        for name in self.provider_options:
            if name not in self.providers:
                raise EdgeDLError(f"--provider-option given for {name}, which is not benchmarked; add --provider for it")
        for name, opts in self.provider_options.items():
            if str(opts.get("enable_cuda_graph", "0")).lower() in ("1", "true") and not self.io_binding:
                raise EdgeDLError("CUDA graphs (enable_cuda_graph=1) replay fixed device buffers; add --io-binding")
        if self.scenario not in SCENARIOS:
            raise _did_you_mean(self.scenario, list(SCENARIOS), "scenario")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise _did_you_mean(self.baseline, list(BASELINES), "baseline")
        if self.warmup < 0:
            raise EdgeDLError("--warmup must be >= 0")
        if self.iterations is not None and self.iterations < 1:
            raise EdgeDLError("--iterations must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise EdgeDLError("--duration must be > 0 seconds")
        if self.iterations is None and self.duration_s is None:
            self.duration_s = 1.0
        if self.scenario == "server":
            if not self.target_qps or self.target_qps <= 0:
                raise EdgeDLError("the server scenario needs --target-qps > 0 (try the single-stream throughput)")
        elif self.target_qps is not None:
            raise EdgeDLError("--target-qps applies to --scenario server only")
        if self.latency_bound_ms is not None and self.latency_bound_ms <= 0:
            raise EdgeDLError("--latency-bound must be > 0 ms")
        if self.streams < 1:
            raise EdgeDLError("--streams must be >= 1")
        if self.input_data is not None and not Path(self.input_data).is_file():
            raise EdgeDLError(f"input data file not found: {self.input_data}; pass an .npz with one array per input")
        if self.baseline is None and (self.torch_model is not None or self.torch_checkpoint is not None
                                      or self.torch_init_args is not None):
            self.baseline = "torch"

    @classmethod
    def quick(cls, models: list[Path], **kw: Any) -> "BenchConfig":
        """A smoke-test preset: few iterations, no placement profile."""
        return cls(models, **{"warmup": 3, "iterations": 50, "duration_s": None, "placement": False, **kw})

    def configurations(self) -> list["WorkerConfig"]:
        """Expand into one WorkerConfig per (model, engine, threads, batch); a baseline is one more engine."""
        engines: list[tuple[str, str | None]] = [("onnxruntime", p) for p in self.providers]
        if self.baseline == "torch":
            engines.append(("torch", None))
        out = []
        # engines innermost, so a model's ort and torch rows for the same threads/batch sit together
        for model in self.models:
            for threads in self.threads:
                for batch in self.batches:
                    for engine, provider in engines:
                        out.append(WorkerConfig(
                            model=str(model.resolve()), engine=engine,
                            provider=provider, provider_options=self.provider_options.get(provider or "", {}),
                            threads=threads, batch=batch, shape_options=self.shape_options.to_json(),
                            warmup=self.warmup,
                            iterations=self.iterations, duration_s=self.duration_s,
                            input_data=str(self.input_data) if self.input_data else None, seed=self.seed,
                            io_binding=self.io_binding and engine == "onnxruntime", spinning=self.spinning,
                            scenario=self.scenario, target_qps=self.target_qps,
                            latency_bound_ms=self.latency_bound_ms, streams=self.streams,
                            allow_fallback=self.allow_fallback, torch_model=self.torch_model,
                            torch_checkpoint=str(self.torch_checkpoint) if self.torch_checkpoint else None,
                            placement=self.placement and engine == "onnxruntime",
                            inter_op_threads=self.inter_op_threads, execution_mode=self.execution_mode,
                            memory_arena=self.memory_arena, graph_optimization=self.graph_optimization,
                        ))
        return out

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = [str(m) for m in self.models]
        d["input_data"] = str(self.input_data) if self.input_data else None
        d["torch_checkpoint"] = str(self.torch_checkpoint) if self.torch_checkpoint else None
        d["providers"] = list(self.providers)
        d["threads"] = list(self.threads)
        d["batches"] = list(self.batches)
        d["shape_options"] = self.shape_options.to_json()
        return d


@dataclass
class WorkerConfig:
    """Everything one worker process needs to measure one configuration (JSON round-trips exactly)."""

    model: str
    engine: str = "onnxruntime"  # or "torch"
    provider: str | None = "CPUExecutionProvider"
    provider_options: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    batch: int = 1
    shape_options: dict[str, Any] = field(default_factory=dict)  # ShapeOptions.to_json()
    warmup: int = 10
    iterations: int | None = None
    duration_s: float | None = 1.0
    input_data: str | None = None
    seed: int = 0
    io_binding: bool = False
    spinning: bool | None = None
    scenario: str = "single-stream"
    target_qps: float | None = None
    latency_bound_ms: float | None = None
    streams: int = 4
    allow_fallback: bool = False
    torch_model: str | None = None
    torch_checkpoint: str | None = None
    placement: bool = True
    inter_op_threads: int = 0
    execution_mode: str = "sequential"
    memory_arena: bool = True
    graph_optimization: str = "all"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WorkerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise EdgeDLError(f"unknown worker config key(s) {', '.join(sorted(unknown))}")
        return cls(**data)
