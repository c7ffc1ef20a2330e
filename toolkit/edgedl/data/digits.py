"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no download), fixed seeded split."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.recipe import Split

SPLITS = ("train", "val", "test", "calibration")


@lru_cache(maxsize=4)
def _arrays(seed: int, test_fraction: float, val_fraction: float):
    datasets = require("sklearn.datasets")
    model_selection = require("sklearn.model_selection")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixels 0..16 -> 0..1, recorded as preprocessing
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = model_selection.train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=y_rest
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


@dataclass(frozen=True)
class Digits:
    """The digits set reshaped to a model's input layout: (64,), (1, 8, 8) or (8, 8) rows-as-sequence."""

    shape: tuple[int, ...] = (64,)
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    calibration_size: int = 256

    PREPROCESSING = {"input": "8x8 grayscale digit", "scale": 1 / 16, "source_range": [0, 16], "range": [0, 1]}

    def split(self, name: str, input_names: list[str]) -> Split:
        if name not in SPLITS:
            raise EdgeDLError(f"unknown split '{name}'; choose one of {', '.join(SPLITS)}")
        if len(input_names) != 1:
            raise EdgeDLError("the digits data feeds exactly one model input")
        arrays = _arrays(self.seed, self.test_fraction, self.val_fraction)
        # the calibration subset is drawn from train, never from the test split it is judged on
        x, y = arrays["train"] if name == "calibration" else arrays[name]
        if name == "calibration":
            x, y = x[: self.calibration_size], y[: self.calibration_size]
        return Split({input_names[0]: np.ascontiguousarray(x.reshape(-1, *self.shape))}, y)

    def describe(self) -> dict[str, Any]:
        arrays = _arrays(self.seed, self.test_fraction, self.val_fraction)
        sizes = {k: len(v[1]) for k, v in arrays.items()}
        return {"name": "sklearn digits", "seed": self.seed, "sizes": sizes, "shape": list(self.shape)}
