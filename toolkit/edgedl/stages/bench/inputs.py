"""Benchmark inputs: sizes for dynamic dims, seeded random feeds from the model's metadata, or an .npz file.

Inputs are prepared once, before anything is timed. numpy and edgedl.runtime only (runs on a device).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.tensors import TensorInfo, random_inputs


def resolve_sizes(inputs: list[TensorInfo], metadata: Mapping[str, Any], batch: int,
                  shapes: Mapping[str, int]) -> dict[str, int]:
    """A size for every dynamic dim: axis 0 is the batch; others from --shape, else the sizes export validated."""
    dynamic = {}
    for info in inputs:
        for axis, dim in info.dynamic_axes.items():
            dynamic.setdefault(dim, axis)
        if info.shape and isinstance(info.shape[0], int) and info.shape[0] != batch:
            raise EdgeDLError(
                f"input '{info.name}' has a fixed batch of {info.shape[0]}; use --batch {info.shape[0]} for this model"
            )
    unknown = [name for name in shapes if name not in dynamic]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(dynamic), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        known = ", ".join(d for d, a in dynamic.items() if a != 0) or "none besides the batch"
        raise EdgeDLError(f"--shape {unknown[0]}: the model has no dynamic dim of that name; {hint}its dynamic dims: {known}")
    validated = {}
    checked = (metadata.get("validation") or {}).get("checked_sizes") if isinstance(metadata.get("validation"), dict) else None
    if checked and isinstance(checked[0], dict):
        validated = {k: int(v) for k, v in checked[0].items()}
    sizes: dict[str, int] = {}
    missing = []
    for dim, axis in dynamic.items():
        if axis == 0:
            sizes[dim] = batch
        elif dim in shapes:
            sizes[dim] = int(shapes[dim])
        elif dim in validated:
            sizes[dim] = validated[dim]
        else:
            missing.append(dim)
    if missing:
        raise EdgeDLError(f"no size known for dynamic dim(s) {', '.join(missing)}; pass --shape {missing[0]}=N")
    sizes.setdefault("batch", batch)
    return sizes


def _value_ranges(metadata: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    out = {}
    for spec in metadata.get("inputs") or []:
        if isinstance(spec, dict) and spec.get("value_range"):
            lo, hi = spec["value_range"]
            out[spec["name"]] = (lo, hi)
    return out


def make_feeds(inputs: list[TensorInfo], metadata: Mapping[str, Any], sizes: Mapping[str, int], seed: int,
               input_data: str | Path | None = None) -> dict[str, np.ndarray]:
    """The feeds every engine of one configuration gets: from ``input_data`` (.npz) or seeded random values."""
    if input_data is not None:
        return load_npz_feeds(inputs, input_data, sizes.get("batch", 1))
    ranges = _value_ranges(metadata)
    feeds = {}
    for i, info in enumerate(inputs):
        lo, hi = ranges.get(info.name, (0.0, 1.0) if info.dtype.kind == "f" else (0, 9))
        if info.dtype.kind == "f":
            feeds.update(random_inputs([info], sizes, seed + i, value_range=(float(lo), float(hi))))
        else:
            feeds.update(random_inputs([info], sizes, seed + i, int_range=(int(lo), int(hi) + 1)))
    return feeds


def load_npz_feeds(inputs: list[TensorInfo], path: str | Path, batch: int) -> dict[str, np.ndarray]:
    """Arrays named like the model's inputs; the first ``batch`` rows (repeated if the file has fewer)."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise EdgeDLError(f"cannot read {path} as .npz ({exc}); save it with numpy.savez(path, input_name=array)") from exc
    with archive:
        names = list(archive.files)
        feeds = {}
        for info in inputs:
            if info.name not in archive.files:
                raise EdgeDLError(f"{path} has no array '{info.name}' (it has {', '.join(names) or 'none'}); "
                                  f"the model's inputs are {', '.join(i.name for i in inputs)}")
            arr = archive[info.name]
            if arr.ndim == 0:
                raise EdgeDLError(f"array '{info.name}' in {path} is a scalar; it needs a leading batch axis")
            if arr.dtype != info.dtype:
                raise EdgeDLError(f"array '{info.name}' in {path} is {arr.dtype.name}; the model expects {info.dtype.name}")
            reps = -(-batch // arr.shape[0])
            feeds[info.name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:batch] if reps > 1 else arr[:batch])
    return feeds


def inputs_from_json(specs: list[dict[str, Any]]) -> list[TensorInfo]:
    return [TensorInfo(s["name"], np.dtype(s["dtype"]), tuple(s["shape"]), s.get("onnx_type", "")) for s in specs]
