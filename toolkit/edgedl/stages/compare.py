"""Compare outputs of a model against a reference, per output, with tolerances (truthy result objects), and say
when a reference is too weak for the comparison to prove anything; and the running error sums (SQNR, cosine, max
and mean absolute difference over many batches) that the accuracy gate and ``edgedl debug compare`` both keep."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from edgedl.errors import EdgeDLError


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


def json_number(x):
    """A float for JSON: inf/-inf as strings, NaN as null (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _sqnr(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio from sums: 10 log10(sum ref^2 / sum (ref - actual)^2); inf when equal."""
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


@dataclass
class ErrorSums:
    """Running sums of how far ``got`` is from ``ref`` (any shapes, equal): enough for SQNR, cosine, max and mean
    absolute difference over many batches. The accuracy gate keeps one per output; ``edgedl debug compare`` one
    per intermediate tensor (and one per sample)."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    actual_sq: float = 0.0
    max_abs: float = 0.0
    abs_sum: float = 0.0
    count: int = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        if r.shape != g.shape:
            raise EdgeDLError(f"output shapes differ from the fp32 model's ({list(got.shape)} vs {list(ref.shape)})")
        d = np.abs(r - g)
        self.signal += float(r @ r)
        self.noise += float(d @ d)
        self.dot += float(r @ g)
        self.actual_sq += float(g @ g)
        self.max_abs = max(self.max_abs, float(d.max()) if d.size else 0.0)
        self.abs_sum += float(d.sum())
        self.count += d.size

    def merge(self, other: "ErrorSums") -> None:
        self.signal += other.signal
        self.noise += other.noise
        self.dot += other.dot
        self.actual_sq += other.actual_sq
        self.max_abs = max(self.max_abs, other.max_abs)
        self.abs_sum += other.abs_sum
        self.count += other.count

    @property
    def sqnr_db(self) -> float:
        return _sqnr(self.signal, self.noise)

    @property
    def cosine(self) -> float:
        denominator = math.sqrt(self.signal * self.actual_sq)
        return self.dot / denominator if denominator > 0 else (1.0 if self.noise == 0 else 0.0)

    @property
    def relative(self) -> float:
        """Relative L2 error, ||ref - got|| / ||ref|| (inf when ref is all zeros and got is not)."""
        if self.noise == 0.0:
            return 0.0
        return math.sqrt(self.noise / self.signal) if self.signal > 0 else math.inf

    def to_json(self) -> dict:
        return {"max_abs_diff": self.max_abs, "mean_abs_diff": self.abs_sum / max(self.count, 1),
                "sqnr_db": self.sqnr_db, "cosine": self.cosine}
