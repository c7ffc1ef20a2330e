"""Calibration and evaluation data: the model's recipe (named in its metadata) or .npz files.

An .npz file holds one array per model input, named like the input (first axis = samples), plus an optional
integer array ``labels`` (one class id per sample; required for evaluation, ignored for calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.recipe import Split, load_recipe
from edgedl.runtime.tensors import TensorInfo

CALIBRATION_BATCH = 32


@dataclass
class DataPlan:
    """Where calibration and evaluation data came from (for the report) and the splits themselves."""

    calibration: Split | None
    evaluation: Split | None
    calibration_source: str | None
    evaluation_source: str | None


def load_npz(path: Path, inputs: list[TensorInfo], need_labels: bool, what: str) -> Split:
    path = Path(path)
    if not path.is_file():
        raise EdgeDLError(f"{what} file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise EdgeDLError(f"{path} is not a readable .npz file ({type(exc).__name__}); write one with "
                          "numpy.savez(path, <input name>=array, labels=array)") from exc
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EdgeDLError(f"{what} {path.name} has no array for input(s) {', '.join(missing)} (it holds "
                          f"{', '.join(arrays) or 'nothing'}); save one array per model input, named like the input")
    feeds = {}
    for info in inputs:
        arr = arrays[info.name]
        if arr.dtype != info.dtype:
            if not np.can_cast(arr.dtype, info.dtype, casting="same_kind"):
                raise EdgeDLError(f"{what} {path.name}: array '{info.name}' is {arr.dtype}, the model wants "
                                  f"{info.dtype}; save it as {info.dtype}")
            arr = arr.astype(info.dtype)
        if arr.ndim != len(info.shape):
            raise EdgeDLError(f"{what} {path.name}: array '{info.name}' has shape {list(arr.shape)}, the model "
                              f"wants rank {len(info.shape)} {list(info.shape)} (first axis = samples)")
        feeds[info.name] = np.ascontiguousarray(arr)
    counts = {len(a) for a in feeds.values()}
    labels = arrays.get("labels")
    if need_labels and labels is None:
        raise EdgeDLError(f"{what} {path.name} has no 'labels' array; the accuracy gate needs one class id per sample")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.dtype.kind not in "iu":
            raise EdgeDLError(f"{what} {path.name}: 'labels' must be integer class ids, got {labels.dtype}")
        counts.add(len(labels))
    if len(counts) != 1 or 0 in counts:
        raise EdgeDLError(f"{what} {path.name}: arrays must be non-empty with the same number of samples")
    n = counts.pop()
    return Split(feeds, labels if labels is not None else np.zeros(n, dtype=np.int64))


def plan_data(metadata: dict, inputs: list[TensorInfo], data: str | None, calibration_npz: Path | None,
              eval_npz: Path | None, calibration_samples: int | None) -> DataPlan:
    """Resolve the data: explicit .npz files first, then --data RECIPE, then the recipe named in the model."""
    recipe = None
    recipe_source = data or metadata.get("recipe_source")
    if recipe_source and (calibration_npz is None or eval_npz is None):
        if data is None and not Path(recipe_source).is_file():
            recipe_source = metadata.get("recipe") or recipe_source  # moved checkout: try the zoo name
        recipe = load_recipe(recipe_source)
        if recipe.data is None:
            recipe = None
    calibration = evaluation = None
    cal_src = eval_src = None
    if calibration_npz is not None:
        calibration, cal_src = load_npz(calibration_npz, inputs, False, "calibration data"), str(calibration_npz)
    elif recipe is not None:
        calibration, cal_src = recipe.split("calibration"), f"recipe {recipe.name} calibration split"
    if eval_npz is not None:
        evaluation, eval_src = load_npz(eval_npz, inputs, True, "evaluation data"), str(eval_npz)
    elif recipe is not None:
        evaluation, eval_src = recipe.split("test"), f"recipe {recipe.name} test split"
    if recipe is not None:
        wanted = {i.name for i in inputs}
        for split in (calibration, evaluation):
            if split is not None and set(split.inputs) != wanted:
                raise EdgeDLError(f"recipe {recipe.name} feeds {', '.join(split.inputs)} but the model's inputs are "
                                  f"{', '.join(sorted(wanted))}; pass --data with the model's own recipe or .npz files")
    if calibration is not None and calibration_samples is not None:
        calibration = calibration.head(calibration_samples)
    return DataPlan(calibration, evaluation, cal_src, eval_src)


def calibration_reader(split: Split, batch_size: int = CALIBRATION_BATCH):
    """onnxruntime's CalibrationDataReader over the one data protocol (``Split.batches``); rewindable."""
    quantization = require("onnxruntime.quantization")

    class SplitReader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._iter: Iterator[dict[str, np.ndarray]] = split.batches(batch_size)

        def get_next(self):
            return next(self._iter, None)

        def rewind(self) -> None:
            self._iter = split.batches(batch_size)

    return SplitReader()
