"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand: counters, gauges and
histograms with labels. Small and dependency-free; observation is a bisect and two additions."""

from __future__ import annotations

import bisect
from typing import Iterable

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    inner = ",".join(
        f'{n}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
        for n, v in zip(names, values)
    )
    return "{" + inner + "}"


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, help, labels=()):
        super().__init__(name, help, labels)
        self.values: dict[tuple, float] = {}

    def inc(self, labels: tuple = (), amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in self.values.items()]


class Gauge(Counter):
    kind = "gauge"

    def set(self, labels: tuple, value: float) -> None:
        self.values[labels] = value

    def remove(self, labels: tuple) -> None:
        self.values.pop(labels, None)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help, labels=(), buckets: Iterable[float] = LATENCY_BUCKETS_S):
        super().__init__(name, help, labels)
        self.bounds = tuple(buckets)
        self.series: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, labels: tuple, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self.bounds) + 1) + [0.0, 0]
        series[bisect.bisect_left(self.bounds, value)] += 1
        series[-2] += value
        series[-1] += 1

    def render(self) -> list[str]:
        lines = self.header()
        for key, series in self.series.items():
            running = 0
            for bound, n in zip((*self.bounds, "+Inf"), series):
                running += n
                le = bound if isinstance(bound, str) else _num(bound)
                lines.append(f"{self.name}_bucket{_labels(self.label_names + ('le',), key + (le,))} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(series[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {series[-1]}")
        return lines


class ServerMetrics:
    """Every metric the server exports (Triton's nv_* metrics, renamed edgedl_*)."""

    def __init__(self):
        mv = ("model", "version")
        self.requests = Counter("edgedl_inference_requests_total", "Infer requests by model, version and HTTP status.",
                                mv + ("status",))
        self.failures = Counter("edgedl_inference_failures_total",
                                "Failed infer requests by model and reason (bad_request, not_found, unavailable, "
                                "too_large, internal).", ("model", "reason"))
        self.queue = Histogram("edgedl_inference_queue_duration_seconds", "Time a request waited for compute.", mv)
        self.compute = Histogram("edgedl_inference_compute_duration_seconds",
                                 "onnxruntime time of the (possibly batched) run serving a request.", mv)
        self.total = Histogram("edgedl_inference_request_duration_seconds",
                               "Time from request received to response sent, per model.", mv)
        self.batch = Histogram("edgedl_inference_batch_size", "Rows per onnxruntime run.", mv, BATCH_BUCKETS)
        self.in_flight = Gauge("edgedl_inference_in_flight", "Infer requests being decoded, queued or run now.",
                              ("model",))
        self.load = Gauge("edgedl_model_load_duration_seconds", "Seconds to load and warm up each model version.", mv)
        self.ready = Gauge("edgedl_model_ready", "1 if the model version is loaded and ready.", mv)
        self.http = Counter("edgedl_http_requests_total", "HTTP requests by endpoint kind and status.",
                            ("endpoint", "status"))
        self.connections = Gauge("edgedl_http_connections", "Open client connections.")
        self.dropped = Counter("edgedl_http_connections_closed_total",
                               "Connections the server closed on a client: evicted (the longest-idle, to make room), "
                               "refused (503: every connection busy), timeout (408 or idle), rejected (400/431).",
                               ("reason",))
        self.all = (self.requests, self.failures, self.queue, self.compute, self.total, self.batch, self.in_flight,
                    self.load, self.ready, self.http, self.connections, self.dropped)

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in self.all:
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode()
