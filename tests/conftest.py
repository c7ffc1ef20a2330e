"""Shared fixtures. Helpers live in edgedl_testing.py (import them from there, not from conftest: every test
directory with its own conftest.py would shadow this one)."""

from __future__ import annotations

import pytest

from edgedl_testing import ROOT, ZooModel, build_zoo


@pytest.fixture(scope="session")
def zoo() -> dict[str, ZooModel]:
    """The four trained, exported zoo models: {name: ZooModel}."""
    return build_zoo(ROOT / "build" / "test-zoo")
