"""Fixtures for the `edgedl serve` tests: a Triton-layout repository of zoo and hand-built models, served by a
real `python -m edgedl serve` process for the whole module."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_helpers import Reference, ServerProcess, gemm_model, place, slow_model, strings_model

BATCHED = 'max_batch_size: 8\ndynamic_batching {{ max_queue_delay_microseconds: {delay} }}\n'


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "gemm_a": gemm_model(d / "gemm_a.onnx", seed=1),
        "gemm_b": gemm_model(d / "gemm_b.onnx", seed=2),
        "slow": slow_model(d / "slow.onnx"),
        "strings": strings_model(d / "strings.onnx"),
    }


@pytest.fixture(scope="session")
def repository(zoo, built, tmp_path_factory) -> Path:
    """cnn (batched), mlp v1 = zoo MLP and v2 = a Gemm with the same signature, lstm (batched, mixed seq
    lengths), transformer, strings (BYTES in and out)."""
    repo = tmp_path_factory.mktemp("repo")
    place(repo, "cnn", 1, zoo["cnn"].onnx, 'name: "cnn"\nplatform: "onnxruntime_onnx"\n' + BATCHED.format(delay=2000))
    place(repo, "mlp", 1, zoo["mlp"].onnx)
    place(repo, "mlp", 2, built["gemm_b"])
    place(repo, "lstm", 1, zoo["lstm"].onnx, BATCHED.format(delay=1000))
    place(repo, "transformer", 1, zoo["transformer"].onnx)
    place(repo, "strings", 1, built["strings"])
    return repo


@pytest.fixture(scope="module")
def server(repository):
    with ServerProcess("--model-repository", repository) as proc:
        yield proc


@pytest.fixture(scope="session")
def reference():
    return Reference()
