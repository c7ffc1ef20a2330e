"""Tensor metadata and the seeded random input source built from a model's metadata."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np


@dataclass(frozen=True)
class DType:
    """One tensor element type in each vocabulary edgedl speaks. Triton's config.pbtxt type is ``TYPE_`` + the v2
    datatype, except BYTES (``TYPE_STRING``)."""

    onnx: str  # onnxruntime's type string
    numpy: np.dtype | None  # None: numpy has no such type (bfloat16)
    datatype: str  # Open Inference Protocol v2 (KServe, Triton) datatype

    @property
    def triton(self) -> str:
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"


# The one table of element types: every other mapping below is derived from it.
DTYPES: tuple[DType, ...] = tuple(DType(onnx, None if numpy is None else np.dtype(numpy), datatype) for onnx, numpy, datatype in (
    ("tensor(float)", np.float32, "FP32"),
    ("tensor(float16)", np.float16, "FP16"),
    ("tensor(double)", np.float64, "FP64"),
    ("tensor(int8)", np.int8, "INT8"),
    ("tensor(int16)", np.int16, "INT16"),
    ("tensor(int32)", np.int32, "INT32"),
    ("tensor(int64)", np.int64, "INT64"),
    ("tensor(uint8)", np.uint8, "UINT8"),
    ("tensor(uint16)", np.uint16, "UINT16"),
    ("tensor(uint32)", np.uint32, "UINT32"),
    ("tensor(uint64)", np.uint64, "UINT64"),
    ("tensor(bool)", np.bool_, "BOOL"),
    ("tensor(string)", object, "BYTES"),  # an object array of str
    ("tensor(bfloat16)", None, "BF16"),
))
ORT_TO_NUMPY: dict[str, np.dtype] = {d.onnx: d.numpy for d in DTYPES if d.numpy is not None}
# v2 datatype -> numpy dtype
DATATYPES: dict[str, np.dtype] = {d.datatype: d.numpy for d in DTYPES if d.numpy is not None}
# numpy dtype names of numbers and booleans (what a JSON list or a synthetic input can hold)
NUMERIC_DTYPES: tuple[str, ...] = tuple(d.numpy.name for d in DTYPES if d.numpy is not None and d.numpy.kind != "O")
_BY_ONNX = {d.onnx: d for d in DTYPES}
_DATATYPE_OF = {d.numpy: d.datatype for d in DTYPES if d.numpy is not None}


def dtype_of_onnx(onnx_type: str) -> DType | None:
    """The table's row for an onnxruntime type string; None for a type it does not know (float8, a sequence)."""
    return _BY_ONNX.get(onnx_type)


def datatype_of(dtype: np.dtype) -> str:
    """The v2 datatype of a numpy dtype (anything else travels as BYTES)."""
    return _DATATYPE_OF.get(dtype, "BYTES")


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


def available_memory() -> int | None:
    """Bytes of memory this machine can give now (Linux MemAvailable, else free physical pages); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, what: str) -> None:
    """Refuse, before allocating, ``nbytes`` for ``what`` that this machine cannot hold (a user's size, not a bug)."""
    available = available_memory()
    if available is not None and nbytes > available:
        from edgedl.errors import EdgeDLError

        raise EdgeDLError(f"{what} need {nbytes / 2**30:.3g} GiB of memory but {available / 2**30:.3g} GiB is available; "
                          "use a smaller batch or smaller sizes")


def check_synthetic(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, np.dtype]) -> None:
    """Refuse synthetic inputs of these shapes that this machine cannot hold, before numpy tries (the draw is
    float64/int64, then cast: 8 bytes + the dtype's per element)."""
    nbytes = sum(math.prod(shape) * (8 + max(np.dtype(dtypes[name]).itemsize, 1)) for name, shape in shapes.items())
    check_memory(nbytes, "inputs of shape " + ", ".join(f"{n}={'x'.join(map(str, s))}" for n, s in shapes.items()))


def random_inputs(
    inputs: list[TensorInfo],
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
    value_range: tuple[float, float] = (0.0, 1.0),
    int_range: tuple[int, int] = (0, 10),
) -> dict[str, np.ndarray]:
    """Seeded random feeds with the right dtypes; integer inputs get small non-negative values (token ids)."""
    rng = np.random.default_rng(seed)
    shapes = {info.name: concrete_shape(info, sizes) for info in inputs}
    check_synthetic(shapes, {info.name: info.dtype for info in inputs})
    feeds = {}
    for info in inputs:
        shape = shapes[info.name]
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
