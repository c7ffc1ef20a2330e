"""Where candidates are timed: this machine or a device over SSH, both through the bench worker - each timing a
fresh ``python -m edgedl.stages.bench.worker`` process running ``edgedl.runtime.timing.measure`` in a bench
scenario - so a figure ``optimize`` reports is one ``edgedl bench`` (``--remote``) would measure."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedl.errors import EdgeDLError
from edgedl.stages.optimize.space import Candidate, digest

WARMUP = 5


@dataclass(frozen=True)
class Timing:
    """One timing of one candidate (one bench worker result)."""

    p50_ms: float
    p90_ms: float
    samples_per_s: float
    queries: int
    duration_s: float
    load_ms: float  # session creation
    peak_rss_mib: float
    cost_s: float  # wall seconds the measurement took, process start and transfer included

    @classmethod
    def from_result(cls, result: dict[str, Any], duration_s: float, cost_s: float) -> "Timing":
        lat = result["latency_ms"]
        return cls(lat["p50_ms"], lat["p90_ms"], result["throughput"]["samples_per_s"], result["queries"],
                   duration_s, result["session_create_ms"], result["peak_rss_mib"], cost_s)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Timing":
        return cls(**data)


@dataclass(frozen=True)
class Request:
    """Time ``candidate``'s model file at ``model`` for ``duration_s`` seconds."""

    candidate: Candidate
    model: Path
    duration_s: float


@dataclass(frozen=True)
class Scenario:
    """What every timing shares: the bench scenario, provider, sizes and the input data."""

    name: str  # a bench scenario
    provider: str
    shape_options: dict[str, Any]  # ShapeOptions.to_json()
    input_data: Path | None  # .npz of real samples (None: seeded synthetic inputs)
    seed: int

    def worker_config(self, request: Request) -> dict[str, Any]:
        c = request.candidate
        return {"model": str(Path(request.model).resolve()), "provider": self.provider, "threads": c.intra_op_threads,
                "batch": c.batch, "shape_options": self.shape_options, "warmup": WARMUP, "iterations": None,
                "duration_s": request.duration_s, "input_data": str(self.input_data) if self.input_data else None,
                "seed": self.seed, "spinning": c.spinning, "scenario": self.name, "placement": False,
                "inter_op_threads": c.inter_op_threads, "execution_mode": c.execution_mode,
                "memory_arena": c.memory_arena,
                "graph_optimization": "disable" if c.saved_optimized else c.graph_optimization}


class LocalDevice:
    """This machine: each timing in its own worker process, one after the other."""

    kind = "local"

    def __init__(self) -> None:
        from edgedl.stages.machine import cpu_info

        cpu = cpu_info()
        self.cores = int(cpu.get("usable_cores") or os.cpu_count() or 1)
        self.arch = platform.machine()
        self.label = f"this machine ({cpu.get('model') or self.arch})"
        import onnxruntime

        self.fingerprint = digest(["local", platform.node(), cpu.get("model"), self.cores, self.arch,
                                   onnxruntime.__version__, platform.python_version()])

    def measure(self, scenario: Scenario, requests: list[Request]) -> list[Timing | EdgeDLError]:
        from edgedl.stages.bench.config import WorkerConfig
        from edgedl.stages.bench.orchestrate import run_worker

        out: list[Timing | EdgeDLError] = []
        for request in requests:
            start = time.perf_counter()
            try:
                result = run_worker(WorkerConfig.from_json(scenario.worker_config(request)))
            except EdgeDLError as exc:
                out.append(exc)
                continue
            out.append(Timing.from_result(result, request.duration_s, time.perf_counter() - start))
        return out


class SSHDevice:
    """A device over SSH: the runtime and the models are pushed as ``bench --remote`` pushes them, and each
    timing runs in its own worker process there; one call times a whole list."""

    kind = "ssh"

    def __init__(self, target, remote_dir: str, profile) -> None:
        self.target, self.remote_dir, self.profile = target, remote_dir, profile
        self.cores = max(1, profile.threads or 4)
        self.arch = profile.arch
        self.label = f"{target.label} (profile {profile.name})"
        self.fingerprint = digest(["ssh", target.label, profile.name, profile.onnxruntime])

    def measure(self, scenario: Scenario, requests: list[Request]) -> list[Timing | EdgeDLError]:
        from edgedl.stages.bench.remote import remote_bench

        if not requests:
            return []
        configs = [scenario.worker_config(r) for r in requests]
        models = list(dict.fromkeys(Path(r.model).resolve() for r in requests))
        start = time.perf_counter()
        try:
            out = remote_bench(self.target, models, configs, remote_dir=self.remote_dir, profile=self.profile.name,
                               progress=False)
        except EdgeDLError as exc:
            if len(requests) == 1:
                return [exc]
            # one configuration failed on the device: time them one by one to tell which
            return [r for request in requests for r in self.measure(scenario, [request])]
        cost = (time.perf_counter() - start) / len(requests)
        return [Timing.from_result(res, req.duration_s, cost) for res, req in zip(out.results, requests)]


def thread_counts(cores: int) -> tuple[int, ...]:
    """Intra-op thread counts worth trying on ``cores`` cores: 1, 2, 4, ... and all of them."""
    counts = {1, cores}
    n = 2
    while n < cores:
        counts.add(n)
        n *= 2
    return tuple(sorted(counts))
