"""Scenario arithmetic: the Poisson arrival process, queueing in the server loop, offline and multi-stream
accounting. Real timing loop (edgedl.runtime.timing), real threads; bounds are statistical, not speed targets."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgedl.runtime.timing import measure_schedule
from edgedl.stages.bench import scenarios


def _busy(ms: float):
    def fn():
        end = time.perf_counter_ns() + int(ms * 1e6)
        while time.perf_counter_ns() < end:
            pass
    return fn


@pytest.mark.parametrize("qps", [50.0, 1000.0])
def test_poisson_arrivals_have_the_requested_rate(qps):
    n = 40_000
    t = scenarios.poisson_arrivals(qps, n, seed=7)
    gaps = np.diff(np.concatenate([[0], t])) / 1e9
    assert np.all(gaps >= 0) and t.dtype == np.int64
    # mean gap 1/qps within 4 standard errors (exponential: sd = mean)
    assert abs(gaps.mean() - 1 / qps) < 4 * (1 / qps) / np.sqrt(n)
    # exponential gaps: coefficient of variation 1, P(gap > mean) = 1/e, memoryless tail P(gap > 2m) = e^-2
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    assert (gaps > 1 / qps).mean() == pytest.approx(np.exp(-1), abs=0.01)
    assert (gaps > 2 / qps).mean() == pytest.approx(np.exp(-2), abs=0.01)
    # Poisson counts: arrivals per unit window have variance == mean (index of dispersion 1)
    window = 20 / qps  # ~20 arrivals per window
    counts = np.bincount((t / 1e9 // window).astype(int))[:-1]
    assert counts.mean() == pytest.approx(20, rel=0.05)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.12)


def test_poisson_arrivals_are_seeded():
    a = scenarios.poisson_arrivals(100, 50, seed=1)
    assert np.array_equal(a, scenarios.poisson_arrivals(100, 50, seed=1))
    assert not np.array_equal(a, scenarios.poisson_arrivals(100, 50, seed=2))
    with pytest.raises(ValueError):
        scenarios.poisson_arrivals(0, 5)


def test_schedule_counts_queueing_from_the_arrival():
    # all 8 queries arrive at t=0 and each takes >= 2 ms: the i-th waits for the i before it
    latency, service = measure_schedule(_busy(2.0), np.zeros(8, dtype=np.int64), warmup=0)
    lat = latency.samples_ns / 1e6
    svc = service.samples_ns / 1e6
    assert np.all(svc >= 2.0)
    assert np.all(np.diff(lat) > 1.9)  # each later query waited one more service time
    assert lat[-1] >= svc.sum() * 0.99
    # spaced far apart: no queue, latency == service time (+ the wake-up jitter of the spin wait)
    latency, service = measure_schedule(_busy(0.2), np.arange(1, 6, dtype=np.int64) * 5_000_000, warmup=0)
    assert np.all(latency.samples_ns >= service.samples_ns)
    # (median: on a shared machine the OS can wake the load generator late once in a while)
    assert np.median(latency.samples_ns - service.samples_ns) < 1_000_000
    assert latency.wall_s >= 0.025  # it really waited for the last arrival at 25 ms


def test_server_scenario_reports_offered_rate_and_latency_bound():
    calls = []
    res = scenarios.server(lambda: calls.append(1), 2, warmup=3, iterations=400, duration_s=None,
                           target_qps=2000.0, latency_bound_ms=1000.0, seed=3)
    assert len(calls) == 403 and res.queries == 400 and res.samples == 800
    d = res.extra
    assert d["offered_qps"] == pytest.approx(2000, rel=0.15)
    assert d["latency_bound_met"] is True and res.headline == "p99"
    tight = scenarios.server(_busy(0.5), 1, warmup=0, iterations=50, duration_s=None, target_qps=5000.0,
                             latency_bound_ms=0.01, seed=3)
    assert tight.extra["latency_bound_met"] is False  # 0.5 ms of work cannot meet a 10 µs bound
    # query count from the duration when no iteration count is given
    by_time = scenarios.server(lambda: None, 1, warmup=0, iterations=None, duration_s=0.05, target_qps=1000.0,
                               latency_bound_ms=None)
    assert by_time.queries == 50 and by_time.extra["latency_bound_met"] is None


def test_offline_throughput_is_samples_over_wall_time():
    res = scenarios.offline(_busy(0.1), 16, warmup=2, iterations=40, duration_s=None)
    assert res.queries == 40 and res.samples == 640 and res.samples_per_query == 16
    assert res.samples_per_s == pytest.approx(640 / res.latency.wall_s)
    assert res.queries_per_s == pytest.approx(40 / res.latency.wall_s)
    assert res.samples_per_s < 16 / 0.1e-3  # cannot beat 16 samples per 0.1 ms of work


def test_multi_stream_runs_streams_concurrently_and_counts_samples():
    streams = 3
    barrier = threading.Barrier(streams, timeout=5)  # only passes if 3 runs are in flight at once
    count = []
    lock = threading.Lock()

    def one():
        barrier.wait()
        with lock:
            count.append(1)

    res = scenarios.multi_stream(one, 4, streams, warmup=2, iterations=20, duration_s=None)
    assert len(count) == (20 + 2) * streams
    assert res.queries == 20 and res.samples_per_query == 12 and res.samples == 240
    assert res.extra["streams"] == 3 and res.headline == "p99"
