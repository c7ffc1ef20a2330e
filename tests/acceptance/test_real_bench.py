"""`edgedl bench` on the shipped models, each configuration in its own process: synthetic inputs at the sizes the
options give (batch 1 and 2), and the real batch from an .npz at its own size (silero's: a scalar sample rate and a state batched
on axis 1). Few iterations: this proves the runs work; benchmarks/real_models.py measures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedl_testing import run_edgedl
from real_tasks import MODELS

QUICK = ("-n", "3", "--warmup", "1", "--no-placement", "--quiet", "--json")


def _bench(*args) -> list[dict]:
    proc = run_edgedl("bench", *args, *QUICK, timeout=240)
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)["results"]


@pytest.mark.parametrize("name", list(MODELS))
def test_bench_synthetic_at_the_given_sizes(name):
    model = MODELS[name]
    results = _bench(model.path, *model.options, "-b", "1,2")
    assert [r["batch"] for r in results] == [1, 2]
    for r in results:
        assert r["latency_ms"]["count"] == 3 and r["latency_ms"]["p50_ms"] > 0, r["latency_ms"]
        assert r["providers_used"] == ["cpu"]


@pytest.mark.parametrize("name", list(MODELS))
def test_bench_real_batch_from_npz(name, real_batches):
    model = MODELS[name]
    with np.load(real_batches[name]) as data:
        rows = data[data.files[0]].shape[0]  # each model's first input is batched on axis 0
    (result,) = _bench(model.path, "--input-data", real_batches[name], "-b", str(rows))
    assert result["batch"] == rows and result["latency_ms"]["p50_ms"] > 0
