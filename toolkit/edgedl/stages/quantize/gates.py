"""The accuracy gate and the speed gate. Both run models only through ``edgedl.runtime.Runner``, and the speed
gate times through ``edgedl.runtime.timing.measure`` (the loop ``edgedl bench`` uses).

Accuracy is measured batch by batch on a ``Dataset`` (batches may differ in size and outputs may have no known
batch axis, as a recurrent state's), against labels where there are class ids, and against the fp32 model's own
outputs always: top-1 (and top-k) agreement over the first output's last axis, SQNR and cosine per output, and
a user metric. ``checks`` turns that into the gate's verdicts.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime import Runner, measure
from edgedl.runtime.signature import Signature
from edgedl.stages.compare import ErrorSums
from edgedl.stages.data import Dataset
from edgedl.stages.side_by_side import adapt, runner_config

EVAL_BATCH = 64


def runner(path: Path, threads: int, provider: str = "cpu") -> Runner:
    return Runner(str(path), runner_config(threads, provider))


def eval_batches(dataset: Dataset, signature: Signature):
    """The batches a model is evaluated on: of its fixed batch when it has one."""
    fixed = signature.fixed_batch
    return dataset.batches(fixed or EVAL_BATCH, exact=fixed is not None)


# --- the user metric ---------------------------------------------------------------------------------------
Metric = Callable[[dict, dict, "np.ndarray | None"], float]


def load_metric(target: str) -> Metric:
    """``path/to/file.py:function(outputs, reference, labels=None) -> float`` (higher is better), called per batch
    with this model's outputs, the fp32 model's outputs on the same batch, and the batch's labels (if any)."""
    from edgedl.stages.data.python import load_function

    fn = load_function(target, "metric")
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_labels = len(params) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
    if len(params) < 2 and not takes_labels:
        raise EdgeDLError(f"metric {target} must take (outputs, reference[, labels]): dicts of output arrays")

    def metric(outputs: dict, reference: dict, labels) -> float:
        try:
            value = fn(outputs, reference, labels) if takes_labels else fn(outputs, reference)
        except EdgeDLError:
            raise
        except Exception as exc:
            raise EdgeDLError(f"metric {target} failed: {type(exc).__name__}: {exc}") from exc
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise EdgeDLError(f"metric {target} returned {type(value).__name__}; return one number (higher is "
                              "better)") from None
        if not math.isfinite(value):
            raise EdgeDLError(f"metric {target} returned {value}; return a finite number")
        return value

    return metric


# --- evaluation --------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """One model on the evaluation data: against labels (class ids) and against the fp32 model's outputs."""

    samples: int
    accuracy: float | None = None  # top-1 % on integer labels (first output)
    agreement: float | None = None  # % of top-1 positions (first output, last axis) equal to fp32's
    agreement_top_k: float | None = None  # % where fp32's top-1 is among this model's top k
    top_k: int | None = None
    metric: float | None = None  # the user metric, mean over samples
    outputs: dict = field(default_factory=dict)  # per output: max/mean abs diff, sqnr_db, cosine

    def to_json(self) -> dict:
        return {"samples": self.samples, "accuracy": self.accuracy, "agreement": self.agreement,
                "agreement_top_k": self.agreement_top_k, "top_k": self.top_k, "metric": self.metric,
                "outputs": self.outputs}

    @classmethod
    def from_json(cls, data: dict) -> "Evaluation":
        """The inverse of ``to_json`` (non-finite SQNRs stay floats: Python's json reads Infinity)."""
        return cls(**{k: data.get(k) for k in ("samples", "accuracy", "agreement", "agreement_top_k", "top_k",
                                                "metric")}, outputs=dict(data.get("outputs") or {}))


def _top1_correct(first: np.ndarray, labels: np.ndarray | None, samples: int) -> int | None:
    """Correct top-1 predictions of a classifier output (one row of scores per sample) against one class id per
    sample, else None (integer labels of another shape - token ids, boxes - are for a user metric)."""
    if labels is None or labels.dtype.kind not in "iu" or labels.size != samples or first.ndim < 2 or (
            first.shape[0] != samples or first.size // samples < 2):
        return None
    return int((first.reshape(samples, -1).argmax(axis=1) == labels.reshape(-1)).sum())


def evaluate(model: Runner, dataset: Dataset, signature: Signature, reference: list[dict] | None,
             metric: Metric | None = None, top_k: int = 5, agreement: bool = True) -> tuple[Evaluation, list[dict]]:
    """Run ``model`` over ``dataset``; compare with ``reference`` (the fp32 model's per-batch outputs, None when
    this is the fp32 model). ``agreement``: the first output's last axis holds class scores (top-1/top-k
    agreement mean something). Returns the evaluation and this model's per-batch outputs."""
    first = model.output_names[0]
    produced: list[dict] = []
    sums = {name: ErrorSums() for name in model.output_names} if reference is not None else {}
    samples = correct = 0
    classified = True  # every batch gave one row of class scores per labelled sample
    agree = agree_k = positions = 0
    k_used = None
    metric_sum = 0.0
    for index, batch in enumerate(eval_batches(dataset, signature)):
        outs = model.run(adapt(model, dict(batch.inputs)))
        outs = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in outs.items()}
        produced.append(outs)
        samples += batch.samples
        hit = _top1_correct(outs[first], batch.labels, batch.samples)
        classified = classified and hit is not None
        correct += hit or 0
        ref = reference[index] if reference is not None else outs
        if metric is not None:
            metric_sum += metric(outs, ref, batch.labels) * batch.samples
        if reference is None:
            continue
        for name, value in outs.items():
            sums[name].add(ref[name], value)
        got, want = outs[first], ref[first]
        if agreement and got.ndim >= 1 and got.shape[-1] >= 2:
            classes = got.shape[-1]
            want_top = want.argmax(axis=-1)
            agree += int((got.argmax(axis=-1) == want_top).sum())
            positions += int(want_top.size)
            if classes > top_k:
                k_used = top_k
                top = np.argpartition(-got, top_k - 1, axis=-1)[..., :top_k]
                agree_k += int((top == want_top[..., None]).any(axis=-1).sum())
    ev = Evaluation(samples)
    if classified and dataset.integer_labels and samples:
        ev.accuracy = 100.0 * correct / samples
    if metric is not None and samples:
        ev.metric = metric_sum / samples
    if reference is not None:
        ev.outputs = {name: s.to_json() for name, s in sums.items()}
        if positions:
            ev.agreement = 100.0 * agree / positions
            if k_used is not None:
                ev.agreement_top_k, ev.top_k = 100.0 * agree_k / positions, k_used
    return ev, produced


# --- the gate's verdicts -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One accuracy verdict: ``value`` against ``limit`` (``at_most``: a drop; else a floor)."""

    name: str
    value: float
    limit: float
    unit: str
    at_most: bool

    @property
    def ok(self) -> bool:
        return self.value <= self.limit + 1e-9 if self.at_most else self.value >= self.limit - 1e-9

    def describe(self) -> str:
        rel = "<=" if self.at_most else ">="
        value = "inf" if math.isinf(self.value) else f"{self.value:.4g}" if self.unit == "" else f"{self.value:.2f}"
        return f"{self.name} {value}{(' ' + self.unit) if self.unit else ''} (need {rel} {self.limit:g})"

    def to_json(self) -> dict:
        value = self.value if math.isfinite(self.value) else ("inf" if self.value > 0 else "-inf")
        return {"name": self.name, "value": value, "limit": self.limit, "unit": self.unit,
                "at_most": self.at_most, "ok": self.ok}


def _worst(ev: Evaluation, key: str) -> float:
    return min(o[key] for o in ev.outputs.values())


def checks(candidate: Evaluation, fp32: Evaluation, gates, class_scores: bool, synthetic: bool) -> list[Check]:
    """What the accuracy gate judges: the labels' top-1 drop and the user metric's drop when there are labels or
    a metric, every floor the user set, and otherwise one default floor: top-1 agreement with fp32 for a
    classifier (first output [batch, classes]) on real data, else the worst output's SQNR (synthetic inputs sit
    near decision boundaries, where top-1 flips say little about real inputs)."""
    out: list[Check] = []
    if fp32.accuracy is not None and candidate.accuracy is not None:
        out.append(Check("top-1 accuracy drop", fp32.accuracy - candidate.accuracy, gates.max_accuracy_drop,
                         "points", True))
    if fp32.metric is not None and candidate.metric is not None:
        out.append(Check("metric drop", fp32.metric - candidate.metric, gates.max_metric_drop, "", True))
    if gates.min_agreement is not None:
        out.append(Check("top-1 agreement", candidate.agreement if candidate.agreement is not None else 0.0,
                         gates.min_agreement, "%", False))
    if gates.min_top_k_agreement is not None:
        value = candidate.agreement_top_k if candidate.agreement_top_k is not None else candidate.agreement
        out.append(Check(f"top-{candidate.top_k or gates.top_k} agreement", value if value is not None else 0.0,
                         gates.min_top_k_agreement, "%", False))
    if gates.min_sqnr is not None and candidate.outputs:
        out.append(Check("SQNR (worst output)", _worst(candidate, "sqnr_db"), gates.min_sqnr, "dB", False))
    if gates.min_cosine is not None and candidate.outputs:
        out.append(Check("cosine (worst output)", _worst(candidate, "cosine"), gates.min_cosine, "", False))
    if not out and candidate.outputs:
        if class_scores and candidate.agreement is not None and not synthetic:
            out.append(Check("top-1 agreement", candidate.agreement, gates.default_min_agreement, "%", False))
        else:
            out.append(Check("SQNR (worst output)", _worst(candidate, "sqnr_db"), gates.default_min_sqnr, "dB", False))
    return out


# --- the speed gate ----------------------------------------------------------------------------------------
def timing_batches(signature: Signature, speed_batch: int) -> list[int]:
    """Batch sizes to time: 1 and ``speed_batch``; only the fixed batch of a fixed-batch model; only 1 for a
    model without a batch axis."""
    if signature.fixed_batch is not None:
        return [signature.fixed_batch]
    if not any(s.batched and isinstance(s.shape[s.batch_axis], str) for s in signature.inputs):
        return [1]
    return sorted({1, speed_batch})


def timing_feeds(signature: Signature, data: Dataset | None, batch: int) -> dict[str, np.ndarray]:
    """Real samples at their real sizes, tiled to ``batch`` along each input's batch axis; synthetic inputs at the
    sizes the signature knows when there is no data (raises naming the size to give)."""
    if data is None:
        return signature.feeds(batch, seed=0)
    return signature.tile(data.arrays(), batch)


def compare_speed(models: dict[str, Runner], feeds: dict[str, np.ndarray], seconds: float,
                  rounds: int = 3) -> dict[str, float]:
    """Median latency (ms) of each model on the same feeds, measured in interleaved rounds so that drift of the
    shared machine hits all models alike."""
    samples: dict[str, list[np.ndarray]] = {name: [] for name in models}
    per_round = seconds / rounds
    prepared = {name: adapt(model, feeds) for name, model in models.items()}
    for r in range(rounds):
        for name, model in models.items():
            fn = lambda m=model, f=prepared[name]: m.run_unchecked(f)  # noqa: E731
            stats = measure(fn, warmup=10 if r == 0 else 3, iterations=None, duration_s=per_round)
            samples[name].append(stats.samples_ns)
    return {name: float(np.median(np.concatenate(parts))) / 1e6 for name, parts in samples.items()}
