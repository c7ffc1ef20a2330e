"""Fixtures for the Triton-compatibility tests: the cached real Triton 2.51 install, and import paths for the
ported QA modules (tests/triton_qa/qa, which import each other by bare name as in Triton's qa/common) and the
server test helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
for path in (HERE / "qa", HERE.parent / "serve"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# Triton's QA files run through the wrappers in test_triton_qa.py, never on their own (they expect a server
# at localhost:8000 that nobody started)
collect_ignore = ["qa"]


def _installed(install, what: str):
    from real_triton import TritonUnavailable

    try:
        return install()
    except TritonUnavailable as exc:
        pytest.skip(f"{what} cannot be installed here ({exc}); it needs PyPI")


@pytest.fixture(scope="session")
def triton_install():
    """The real tritonserver from the nvidia-pytriton wheel (downloaded once into build/triton-2.51)."""
    from real_triton import triton_install as install

    return _installed(install, "the real Triton (nvidia-pytriton)")


@pytest.fixture(scope="session")
def perf_analyzer():
    """Triton's perf_analyzer from the tritonclient 2.40 wheel (downloaded once into build/perf-analyzer-2.40)."""
    from real_triton import perf_analyzer_install

    return _installed(perf_analyzer_install, "perf_analyzer (tritonclient 2.40)")


@pytest.fixture(scope="session")
def triton_reaper():
    """Triton servers stopped without waiting (``stop(wait=False)``); waited for when the session ends."""
    stopping = []
    yield stopping
    for server in stopping:
        server.stop()
