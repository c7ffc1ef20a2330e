"""onnxruntime's ``CalibrationDataReader`` over the one data protocol (``edgedl.stages.data.Dataset.batches``).

Where the data comes from (a folder of images, .npz, a recipe, a user function, synthetic inputs) and which source
serves calibration and which evaluation is ``edgedl.stages.data``'s business, not quantization's.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edgedl._lazy import require
from edgedl.stages.data import Dataset

CALIBRATION_BATCH = 32


def calibration_reader(dataset: Dataset, batch_size: int = CALIBRATION_BATCH):
    """Rewindable batches of ``{input_name: array}``; of exactly the model's batch when it is fixed."""
    quantization = require("onnxruntime.quantization")
    fixed = dataset.signature.fixed_batch
    size, exact = (fixed, True) if fixed is not None else (batch_size, False)

    class DatasetReader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

        @staticmethod
        def _batches():
            return (dict(b.inputs) for b in dataset.batches(size, exact))

        def get_next(self):
            return next(self._iter, None)

        def rewind(self) -> None:
            self._iter = self._batches()

    return DatasetReader()
