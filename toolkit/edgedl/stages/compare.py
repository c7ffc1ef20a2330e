"""Compare outputs of a model against a reference, per output, with tolerances (truthy result objects)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    reference_shape: list[int]
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict:
        return asdict(self)


def compare_arrays(name: str, actual: np.ndarray, reference: np.ndarray, atol: float, rtol: float) -> OutputComparison:
    actual = np.asarray(actual)
    reference = np.asarray(reference)
    if actual.shape != reference.shape:
        return OutputComparison(name, list(actual.shape), list(reference.shape), float("inf"), float("inf"),
                                atol, rtol, False)
    a = actual.astype(np.float64)
    r = reference.astype(np.float64)
    diff = np.abs(a - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(r), 1e-12)).max()) if diff.size else 0.0
    finite = bool(np.isfinite(a).all() == np.isfinite(r).all())
    passed = finite and bool(np.allclose(a, r, atol=atol, rtol=rtol, equal_nan=True))
    return OutputComparison(name, list(actual.shape), list(reference.shape), max_abs, max_rel, atol, rtol, passed)
