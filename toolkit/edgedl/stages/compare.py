"""Compare outputs of a model against a reference, per output, with tolerances (truthy result objects), and say
when a reference is too weak for the comparison to prove anything."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    reference_shape: list[int]
    max_abs_diff: float
    rel_diff: float  # max abs diff / max |reference|: the error at the output's own scale
    atol: float
    rtol: float
    passed: bool
    reference_scale: float = 0.0  # max |reference| over its finite values

    def __bool__(self) -> bool:
        return self.passed

    def to_json(self) -> dict:
        return asdict(self)


def _scale(reference: np.ndarray) -> float:
    finite = np.abs(reference[np.isfinite(reference)])
    return float(finite.max()) if finite.size else 0.0


def compare_arrays(name: str, actual: np.ndarray, reference: np.ndarray, atol: float, rtol: float) -> OutputComparison:
    actual = np.asarray(actual)
    reference = np.asarray(reference)
    if actual.shape != reference.shape:
        return OutputComparison(name, list(actual.shape), list(reference.shape), float("inf"), float("inf"),
                                atol, rtol, False, _scale(reference.astype(np.float64)) if reference.size else 0.0)
    a = actual.astype(np.float64)
    r = reference.astype(np.float64)
    same_nonfinite = bool(np.array_equal(np.isfinite(a), np.isfinite(r)))
    diff = np.abs(np.where(np.isfinite(a) & np.isfinite(r), a - r, 0.0))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = _scale(r)
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = same_nonfinite and bool(np.allclose(a, r, atol=atol, rtol=rtol, equal_nan=True))
    return OutputComparison(name, list(actual.shape), list(reference.shape), max_abs, rel, atol, rtol, passed, scale)


def near_zero_reason(references: list[np.ndarray], atol: float, rtol: float) -> str | None:
    """Why comparing against these reference values proves nothing, or None: they are empty, not finite, or so
    close to 0 that an all-zero output would pass the tolerance (|r| <= atol + rtol * |r| for every value)."""
    values = [np.asarray(r, dtype=np.float64).ravel() for r in references]
    flat = np.concatenate(values) if values else np.zeros(0)
    if flat.size == 0:
        return "it is empty"
    if not np.isfinite(flat).any():
        return "every value is NaN or infinite"
    peak = _scale(flat)
    if peak == 0:
        return "every value is exactly 0: an all-zero output passes"
    if rtol < 1 and peak <= atol / (1 - rtol):
        return (f"every value is within {peak:.2g} of 0, inside the tolerance (atol {atol:g}): an all-zero "
                "output passes")
    return None


def constant_reason(first: np.ndarray, second: np.ndarray, atol: float, rtol: float) -> str | None:
    """Why a reference that does not change with the inputs proves little (a model ignoring them passes)."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape == second.shape and np.allclose(first.astype(np.float64), second.astype(np.float64),
                                                  atol=atol, rtol=rtol, equal_nan=True):
        return "it is the same for different inputs: a model that ignores its inputs passes"
    return None
