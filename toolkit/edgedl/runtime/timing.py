"""The one latency-measurement loop: ``time.perf_counter_ns``, warm-up outside the timed region, percentiles.

``edgedl bench``, the quantization speed gate and the benchmark scripts all time through ``measure`` so their
numbers are comparable. Inputs must be prepared by the caller before calling ``measure``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

PERCENTILES = (50, 90, 95, 99, 99.9)


@dataclass(frozen=True)
class LatencyStats:
    """Latency samples in nanoseconds with the summary every report shows (milliseconds)."""

    samples_ns: np.ndarray
    wall_s: float
    # per call, the CPU time this process spent (all threads), when asked for: tells runs that kept the CPU from
    # runs that other work on a busy machine pushed off it for a while
    cpu_ns: np.ndarray | None = None

    def cpu_share(self) -> np.ndarray:
        """Per call, CPU time / wall time (1 for every call without cpu_ns)."""
        if self.cpu_ns is None:
            return np.ones(self.samples_ns.size)
        return self.cpu_ns / np.maximum(self.samples_ns, 1)

    def on_cpu(self, share: float = 0.9) -> np.ndarray:
        """Mask of the calls that ran on a CPU for at least ``share`` of their wall time (all, without cpu_ns)."""
        return self.cpu_share() >= share

    @property
    def count(self) -> int:
        return int(self.samples_ns.size)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.samples_ns, q)) / 1e6

    @property
    def mean_ms(self) -> float:
        return float(self.samples_ns.mean()) / 1e6

    @property
    def std_ms(self) -> float:
        return float(self.samples_ns.std()) / 1e6

    @property
    def min_ms(self) -> float:
        return float(self.samples_ns.min()) / 1e6

    @property
    def max_ms(self) -> float:
        return float(self.samples_ns.max()) / 1e6

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    def to_json(self) -> dict[str, float]:
        out = {"count": self.count, "mean_ms": self.mean_ms, "std_ms": self.std_ms, "min_ms": self.min_ms}
        for q in PERCENTILES:
            out[f"p{q:g}_ms".replace(".", "")] = self.percentile_ms(q)
        out["max_ms"] = self.max_ms
        out["wall_s"] = self.wall_s
        return out


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 10,
    iterations: int | None = 200,
    duration_s: float | None = None,
    max_iterations: int = 1_000_000,
    cpu_time: bool = False,
) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then time each call until ``iterations`` calls or ``duration_s``
    seconds (whichever is given; with both, whichever ends first) have passed. ``cpu_time`` also records the
    process's CPU time per call, read outside the wall-clock interval so that it does not lengthen it."""
    if iterations is None and duration_s is None:
        raise ValueError("give iterations or duration_s")
    for _ in range(warmup):
        fn()
    limit = iterations if iterations is not None else max_iterations
    deadline = time.perf_counter_ns() + int(duration_s * 1e9) if duration_s is not None else None
    samples = np.empty(limit, dtype=np.int64)
    cpu = np.empty(limit, dtype=np.int64) if cpu_time else None
    clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    start = clock()
    n = 0
    while n < limit:
        if cpu is not None:
            c0 = cpu_clock()
        t0 = clock()
        fn()
        t1 = clock()
        if cpu is not None:
            cpu[n] = cpu_clock() - c0
        samples[n] = t1 - t0
        n += 1
        if deadline is not None and t1 >= deadline:
            break
    return LatencyStats(samples[:n].copy(), (clock() - start) / 1e9, None if cpu is None else cpu[:n].copy())


def measure_schedule(
    fn: Callable[[], object],
    arrivals_ns: np.ndarray,
    *,
    warmup: int = 10,
) -> tuple[LatencyStats, LatencyStats]:
    """Issue ``fn`` at the given arrival times (ns offsets from the start, ascending), one at a time, FIFO.

    A query that arrives while the previous one runs waits in the queue; its latency counts from its scheduled
    arrival, as in MLPerf LoadGen's server scenario. Returns (latency incl. queueing, service time) stats.
    """
    for _ in range(warmup):
        fn()
    arrivals = np.asarray(arrivals_ns, dtype=np.int64)
    n = int(arrivals.size)
    latency = np.empty(n, dtype=np.int64)
    service = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        due = start + int(arrivals[i])
        now = clock()
        if due - now > 2_000_000:  # sleep most of a long gap, spin the last ~1 ms for precision
            time.sleep((due - now - 1_000_000) / 1e9)
        while clock() < due:
            pass
        t0 = clock()
        fn()
        t1 = clock()
        latency[i] = t1 - due
        service[i] = t1 - t0
    wall = (clock() - start) / 1e9
    return LatencyStats(latency, wall), LatencyStats(service, wall)
