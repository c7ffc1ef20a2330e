"""``.npz`` / ``.npy`` files: one array per model input, named like the input, samples along each input's batch
axis (axis 1 of a recurrent state, none for a scalar sample rate), and an optional ``labels`` array (one label per
sample: class ids, or anything a user metric reads). A ``.npy`` file holds the one input of a one-input model.
numpy and edgedl.runtime only (runs on a device).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import Signature
from edgedl.stages.data.dataset import Dataset
from edgedl.stages.data.spec import DataSpec

LABELS = "labels"


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise EdgeDLError(f"data file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise EdgeDLError(f"{path} is not a readable .npz/.npy file ({type(exc).__name__}); write one with "
                          "numpy.savez(path, <input name>=array, labels=array)") from exc
    if isinstance(loaded, np.ndarray):
        return {"": loaded}
    with loaded:
        return {k: loaded[k] for k in loaded.files}


def load_arrays(spec: DataSpec, signature: Signature, max_samples: int | None) -> Dataset:
    path = Path(spec.location)
    arrays = read_arrays(path)
    names = [s.name for s in signature.inputs]
    if "" in arrays:  # .npy: the one input
        if len(names) != 1:
            raise EdgeDLError(f"{path.name} holds one array, the model has {len(names)} inputs ({', '.join(names)}); "
                              "save them together with numpy.savez(path, <input name>=array, ...)")
        arrays = {names[0]: arrays[""]}
    labels = arrays.pop(LABELS, None) if LABELS not in names else None
    if labels is not None and labels.dtype.kind not in "iubfUS":
        raise EdgeDLError(f"{path.name}: 'labels' is {labels.dtype}; give class ids, numbers or strings")
    dataset = Dataset.from_arrays(signature, arrays, labels, "arrays", str(path))
    return dataset.head(max_samples) if max_samples is not None and len(dataset) > max_samples else dataset
