"""The accuracy gate and the speed gate. Both run models only through ``edgedl.runtime.Runner``, and the speed
gate times through ``edgedl.runtime.timing.measure`` (the loop ``edgedl bench`` uses)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedl.recipe import Split
from edgedl.runtime import Runner, RunnerConfig, measure
from edgedl.runtime.tensors import random_inputs

EVAL_BATCH = 64


def runner_config(threads: int, provider: str = "cpu", **extra) -> RunnerConfig:
    """How the gates build sessions (``edgedl debug speed`` profiles with the same settings)."""
    # spinning off: with both models alive in one process, a spinning idle pool would steal the timed core
    return RunnerConfig(providers=(provider,), intra_op_threads=threads, inter_op_threads=1, spinning=False, **extra)


def runner(path: Path, threads: int, provider: str = "cpu") -> Runner:
    return Runner(str(path), runner_config(threads, provider))


def adapt(model: Runner, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast float feeds to the model's float input type (an fp16 model with fp16 inputs gets fp16 data)."""
    out = {}
    for info in model.inputs:
        value = feeds[info.name]
        if value.dtype != info.dtype and value.dtype.kind == "f" and info.dtype.kind == "f":
            value = value.astype(info.dtype)
        out[info.name] = value
    return out


def predict(model: Runner, split: Split) -> dict[str, np.ndarray]:
    outputs: dict[str, list[np.ndarray]] = {}
    for batch in split.batches(EVAL_BATCH):
        for name, value in model.run(adapt(model, batch)).items():
            outputs.setdefault(name, []).append(value)
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10 log10(sum ref^2 / sum (ref - actual)^2); inf when identical."""
    ref = reference.astype(np.float64).ravel()
    noise = float(np.sum((ref - actual.astype(np.float64).ravel()) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((outputs.reshape(len(labels), -1).argmax(axis=1) == labels).mean() * 100.0)


@dataclass
class Evaluation:
    """Accuracy of one model on the labelled split, compared with the fp32 model's outputs."""

    accuracy: float
    agreement: float  # % of samples where top-1 equals the fp32 model's top-1
    outputs: dict  # per output: max_abs_diff, mean_abs_diff, sqnr_db

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "agreement": self.agreement, "outputs": self.outputs}


def evaluate(model: Runner, split: Split, reference: dict[str, np.ndarray] | None) -> tuple[Evaluation, dict]:
    """Top-1 accuracy of the first output (the task metric of classification models) plus agreement/diffs/SQNR
    against ``reference`` (the fp32 model's outputs). Returns the evaluation and this model's outputs."""
    outs = predict(model, split)
    first = model.output_names[0]
    accuracy = top1(outs[first], split.labels)
    per_output, agreement = {}, 100.0
    if reference is not None:
        for name, ref in reference.items():
            got = outs[name].astype(np.float32)
            diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
            per_output[name] = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                                "sqnr_db": sqnr_db(ref, got)}
        ref_top = reference[first].reshape(len(split), -1).argmax(axis=1)
        agreement = float((outs[first].reshape(len(split), -1).argmax(axis=1) == ref_top).mean() * 100.0)
    return Evaluation(accuracy, agreement, per_output), outs


def timing_feeds(model: Runner, data: Split | None, batch: int) -> dict[str, np.ndarray]:
    """Real samples tiled to ``batch`` (dynamic dims other than batch keep the data's size); random inputs with
    other dynamic dims at 1 when there is no data."""
    if data is None:
        return random_inputs(model.inputs, {"batch": batch})
    n = len(data)
    index = np.arange(batch) % n
    return {name: np.ascontiguousarray(arr[index]) for name, arr in data.inputs.items()}


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
