"""Triton's own `perf_analyzer` (the binary from the tritonclient 2.40 wheel), unmodified, against `edgedl serve`
over HTTP and gRPC, through two concurrency levels each. perf_analyzer reads the statistics extension between
measurement windows and aborts when its counts are missing or disagree (compute_input / compute_infer /
compute_output, queue, one execution per batch), so a run that reaches its last level checks them too."""

from __future__ import annotations

import csv
import subprocess

import numpy as np
import pytest

import qa_models
from serve_helpers import ServerProcess, free_port

BATCHED = "dynamic_batching { max_queue_delay_microseconds: 500 }"
LEVELS = (1, 4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("perf-analyzer")
    models = [qa_models.example_models()[0], qa_models.identity("batched", np.float32, (16,), extra_config=BATCHED)]
    root = qa_models.write_repository(d / "models", models, "edgedl")
    grpc_port = free_port()
    with ServerProcess("--model-repository", root, "--grpc-port", grpc_port) as s:
        s.grpc = f"127.0.0.1:{grpc_port}"
        yield s


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["simple", "batched"])
def test_perf_analyzer_runs_to_the_end(perf_analyzer, server, tmp_path, protocol, model):
    report = tmp_path / "perf.csv"
    url = server.url if protocol == "http" else server.grpc
    # stability is not what this checks (the machine is shared): any window counts, up to 10 of them per level
    args = [str(perf_analyzer.binary), "-m", model, "-u", url, "-i", protocol,
            "--concurrency-range", f"{LEVELS[0]}:{LEVELS[-1]}:{LEVELS[-1] - LEVELS[0]}",
            "--measurement-mode", "count_windows", "--measurement-request-count", "100",
            "--stability-percentage", "1000", "--max-trials", "10", "--input-data", "zero", "-f", str(report)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=perf_analyzer.env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    rows = list(csv.DictReader(report.open()))
    assert sorted(int(r["Concurrency"]) for r in rows) == list(LEVELS), rows  # rows come sorted by throughput
    assert all(float(r["Inferences/Second"]) > 0 for r in rows), rows
    # the server-side figures it read from the statistics extension: a queue and a compute time per request
    assert all(int(r["Server Compute Infer"]) > 0 for r in rows), rows
