"""Tensor metadata and the seeded random input source built from a model's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

# onnxruntime type string -> numpy dtype
ORT_TO_NUMPY: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output. ``shape`` holds ints for fixed dims and names (str) for dynamic ones."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str, ...]
    onnx_type: str
    anonymous: frozenset[int] = frozenset()  # axes the model leaves unnamed (their names here are made up)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{self.name}: {self.dtype.name}[{dims}]"

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}

    @classmethod
    def from_ort(cls, node_arg, index: int = 0) -> "TensorInfo":
        # an unnamed dynamic dim (None, -1, '' or '?') gets a name of its own, so that two unnamed dims are
        # never taken for one
        shape, anonymous = [], set()
        for i, d in enumerate(node_arg.shape or ()):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif isinstance(d, str) and d and d != "?":
                shape.append(d)
            else:
                shape.append(f"dim{index}_{i}")
                anonymous.add(i)
        return cls(node_arg.name, ORT_TO_NUMPY.get(node_arg.type, np.dtype(object)), tuple(shape), node_arg.type,
                   frozenset(anonymous))


def concrete_shape(info: TensorInfo, sizes: Mapping[str, int] | None = None, default: int = 1) -> tuple[int, ...]:
    """Resolve named dims from ``sizes`` (a dim called 'batch' or on axis 0 also answers to 'batch')."""
    sizes = dict(sizes or {})
    out = []
    for axis, dim in enumerate(info.shape):
        if isinstance(dim, int):
            out.append(dim)
        elif dim in sizes:
            out.append(int(sizes[dim]))
        elif axis == 0 and "batch" in sizes:
            out.append(int(sizes["batch"]))
        else:
            out.append(default)
    return tuple(out)


def random_inputs(
    inputs: list[TensorInfo],
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
    int_range: tuple[int, int] = (0, 10),
) -> dict[str, np.ndarray]:
    """Seeded random feeds with the right dtypes; integer inputs get small non-negative values (token ids)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        shape = concrete_shape(info, sizes)
        if info.dtype.kind == "f":
            feeds[info.name] = rng.uniform(*value_range, size=shape).astype(info.dtype)
        elif info.dtype.kind in "iu":
            feeds[info.name] = rng.integers(int_range[0], int_range[1], size=shape).astype(info.dtype)
        elif info.dtype.kind == "b":
            feeds[info.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[info.name] = np.array([f"s{v}" for v in rng.integers(0, 100, size=int(np.prod(shape)))],
                                        dtype=object).reshape(shape)
    return feeds


def iter_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The one data protocol: slice aligned arrays into ``{input_name: ndarray}`` batches."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        yield {name: arr[start:start + batch_size] for name, arr in arrays.items()}
