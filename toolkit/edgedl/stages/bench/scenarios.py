"""The four load scenarios of MLPerf LoadGen, driven through the one timing loop (edgedl.runtime.timing).

Each scenario gets ``run_query`` - a callable that processes one prepared batch - and returns a ScenarioResult:
latency stats per *query* and the accounting (queries, samples, wall time) that throughput is computed from.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgedl.runtime.timing import LatencyStats, measure, measure_schedule


@dataclass
class ScenarioResult:
    scenario: str
    latency: LatencyStats  # per query, from issue (or scheduled arrival) to completion
    samples_per_query: int
    headline: str  # the percentile (or throughput) this scenario is judged by
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def queries(self) -> int:
        return self.latency.count

    @property
    def samples(self) -> int:
        return self.queries * self.samples_per_query

    @property
    def queries_per_s(self) -> float:
        return self.queries / self.latency.wall_s if self.latency.wall_s > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.latency.wall_s if self.latency.wall_s > 0 else 0.0


def poisson_arrivals(qps: float, count: int, seed: int = 0) -> np.ndarray:
    """Arrival times (ns from start) of a Poisson process with rate ``qps``: exponential gaps of mean 1/qps."""
    if qps <= 0:
        raise ValueError("qps must be > 0")
    rng = np.random.default_rng(seed)
    gaps_s = rng.exponential(1.0 / qps, size=count)
    return np.cumsum(gaps_s * 1e9).astype(np.int64)


def single_stream(run_query: Callable[[], object], batch: int, *, warmup: int, iterations: int | None,
                  duration_s: float | None) -> ScenarioResult:
    stats = measure(run_query, warmup=warmup, iterations=iterations, duration_s=duration_s)
    return ScenarioResult("single-stream", stats, batch, "p90")


def offline(run_query: Callable[[], object], batch: int, *, warmup: int, iterations: int | None,
            duration_s: float | None) -> ScenarioResult:
    """All samples are available up front; the system processes them in batches back to back (samples/s)."""
    stats = measure(run_query, warmup=warmup, iterations=iterations, duration_s=duration_s)
    return ScenarioResult("offline", stats, batch, "samples/s")


def server(run_query: Callable[[], object], batch: int, *, warmup: int, iterations: int | None,
           duration_s: float | None, target_qps: float, latency_bound_ms: float | None,
           seed: int = 0) -> ScenarioResult:
    """Queries arrive as a Poisson process at ``target_qps``; latency counts queueing from the arrival."""
    count = iterations if iterations is not None else max(1, int(round(target_qps * (duration_s or 1.0))))
    arrivals = poisson_arrivals(target_qps, count, seed)
    latency, service = measure_schedule(run_query, arrivals, warmup=warmup)
    p99 = latency.percentile_ms(99)
    span_s = (arrivals[-1] / 1e9) if count > 1 else latency.wall_s
    extra = {
        "target_qps": target_qps,
        "offered_qps": count / span_s if span_s > 0 else None,
        "achieved_qps": count / latency.wall_s if latency.wall_s > 0 else None,
        "service_p50_ms": service.p50_ms,
        "service_p99_ms": service.percentile_ms(99),
        "latency_bound_ms": latency_bound_ms,
        "latency_bound_met": (p99 <= latency_bound_ms) if latency_bound_ms is not None else None,
    }
    return ScenarioResult("server", latency, batch, "p99", extra)


def multi_stream(run_one: Callable[[], object], batch: int, streams: int, *, warmup: int, iterations: int | None,
                 duration_s: float | None) -> ScenarioResult:
    """Each query is ``streams`` inferences issued together (one thread each); it completes when all have."""
    pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="edgedl-stream")

    def run_query() -> None:
        futures = [pool.submit(run_one) for _ in range(streams)]
        for f in futures:
            f.result()

    try:
        stats = measure(run_query, warmup=warmup, iterations=iterations, duration_s=duration_s)
    finally:
        pool.shutdown(wait=True)
    return ScenarioResult("multi-stream", stats, batch * streams, "p99", {"streams": streams})
