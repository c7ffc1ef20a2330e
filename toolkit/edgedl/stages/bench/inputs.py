"""Benchmark inputs: seeded random feeds shaped by the model's ``Signature`` (sizes, batch axes, value ranges),
or real data from an .npz file taken along each input's batch axis.

Inputs are prepared once, before anything is timed. numpy and edgedl.runtime only (runs on a device).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import Signature


def feed_sizes(signature: Signature, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """The sizes a configuration ran at, for its report: named dims by name, unnamed ones as INPUT[AXIS]."""
    sizes: dict[str, int] = {}
    for s in signature.inputs:
        shape = feeds[s.name].shape
        for axis, dim in enumerate(s.shape):
            if isinstance(dim, str):
                key = "batch" if axis == s.batch_axis else (f"{s.name}[{axis}]" if axis in s.anonymous else dim)
                sizes.setdefault(key, int(shape[axis]))
    return sizes


def make_feeds(signature: Signature, batch: int, seed: int, input_data: str | Path | None = None
               ) -> dict[str, np.ndarray]:
    """The feeds every engine of one configuration gets: from ``input_data`` (.npz) or seeded random values."""
    if input_data is not None:
        return load_npz_feeds(signature, input_data, batch)
    return signature.feeds(batch, seed)


def load_npz_feeds(signature: Signature, path: str | Path, batch: int) -> dict[str, np.ndarray]:
    """Arrays named like the model's inputs; ``batch`` samples along each batched input's batch axis (repeated
    when the file has fewer); an unbatched input (a scalar, a state without batch) is used as it is."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise EdgeDLError(f"cannot read {path} as .npz ({exc}); save it with numpy.savez(path, input_name=array)") from exc
    with archive:
        names = list(archive.files)
        arrays = {}
        for s in signature.inputs:
            if s.name not in archive.files:
                raise EdgeDLError(f"{path} has no array '{s.name}' (it has {', '.join(names) or 'none'}); "
                                  f"the model's inputs are {', '.join(i.name for i in signature.inputs)}")
            arr = archive[s.name]
            if arr.dtype != s.dtype:
                raise EdgeDLError(f"array '{s.name}' in {path} is {arr.dtype.name}; the model expects {s.dtype.name}")
            if arr.ndim != len(s.shape):
                where = f"batch on axis {s.batch_axis}" if s.batched else "not batched"
                raise EdgeDLError(f"array '{s.name}' in {path} has shape {list(arr.shape)}; the model's input is rank "
                                  f"{len(s.shape)} {list(s.shape)} ({where})")
            arrays[s.name] = arr
    return signature.tile(arrays, batch)
