"""Shared fixtures. Helpers live in edgedl_testing.py (import them from there, not from conftest: every test
directory with its own conftest.py would shadow this one)."""

from __future__ import annotations

import pytest

import real_models
from edgedl_testing import ROOT, ZooModel, build_zoo


def _skip_when_unavailable(item):
    """A real model or input this machine cannot have (tests/real_models.py: no package index, no espeak-ng, no
    DejaVu font) skips the test with what to install; CI installs them all."""
    try:
        return (yield)
    except real_models.Unavailable as exc:
        pytest.skip(str(exc))


# in fixtures (setup) and in tests (call)
pytest_runtest_setup = pytest.hookimpl(wrapper=True)(_skip_when_unavailable)
pytest_runtest_call = pytest.hookimpl(wrapper=True)(_skip_when_unavailable)


@pytest.fixture(scope="session")
def zoo() -> dict[str, ZooModel]:
    """The four trained, exported zoo models: {name: ZooModel}."""
    return build_zoo(ROOT / "build" / "test-zoo")
