"""What a stage needs to know about a model's inputs beyond their ONNX types, in one place:

- which axis of each input (and output) is the batch, or none (a recurrent state batched on axis 1, a scalar
  sample rate, a fixed lookup table);
- a concrete size for every dim: explicit sizes (by dim name or as a whole input shape), else the sizes export
  validated at (model metadata), else hints from a repository (config.pbtxt dims, Triton's model_warmup);
- the value range of synthetic inputs.

bench, quantize data, export validation data, the server's warm-up and its dynamic batcher all read a
``Signature``, so that a model is timed, calibrated, warmed up and batched along the same axes.
numpy and the standard library only (runs on a device).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.tensors import TensorInfo, check_memory, check_synthetic

DEFAULT_FLOAT_RANGE = (0.0, 1.0)
DEFAULT_INT_RANGE = (0.0, 9.0)  # inclusive; small non-negative ids are valid for most embedding inputs


@dataclass(frozen=True)
class ShapeOptions:
    """What the user said about sizes, batch axes and value ranges (all optional).

    ``dims``: named dynamic dim -> size. ``input_shapes``: input -> whole shape (batch included; covers dims the
    model leaves unnamed). ``batch_axes``: input or output -> batch axis, or None for "not batched".
    ``value_ranges``: input -> (low, high), inclusive, for synthetic data.
    """

    dims: Mapping[str, int] = field(default_factory=dict)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    batch_axes: Mapping[str, int | None] = field(default_factory=dict)
    value_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, size in self.dims.items():
            if not isinstance(size, int) or size < 1:
                raise EdgeDLError(f"size of dim '{name}' must be an integer >= 1, got {size!r}")
        for name, shape in self.input_shapes.items():
            if any(not isinstance(d, int) or d < 0 for d in shape):
                raise EdgeDLError(f"shape of input '{name}' must be non-negative integers, got {list(shape)}")
        for name, (lo, hi) in self.value_ranges.items():
            if not lo <= hi:
                raise EdgeDLError(f"value range of input '{name}' is empty: {lo} > {hi}")

    def __bool__(self) -> bool:
        return bool(self.dims or self.input_shapes or self.batch_axes or self.value_ranges)

    def only_for(self, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> "ShapeOptions":
        """The part that concerns one model: the dims it names, its own inputs and outputs."""
        dims, tensors = _named_dims(inputs), {t.name for t in (*inputs, *outputs)}
        return ShapeOptions(dims={k: v for k, v in self.dims.items() if k in dims},
                            input_shapes={k: v for k, v in self.input_shapes.items() if k in tensors},
                            batch_axes={k: v for k, v in self.batch_axes.items() if k in tensors},
                            value_ranges={k: v for k, v in self.value_ranges.items() if k in tensors})

    def to_json(self) -> dict[str, Any]:
        return {"dims": dict(self.dims), "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "batch_axes": dict(self.batch_axes),
                "value_ranges": {k: list(v) for k, v in self.value_ranges.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "ShapeOptions":
        data = data or {}
        return cls(dims={k: int(v) for k, v in (data.get("dims") or {}).items()},
                   input_shapes={k: tuple(int(d) for d in v) for k, v in (data.get("input_shapes") or {}).items()},
                   batch_axes={k: (None if v is None else int(v)) for k, v in (data.get("batch_axes") or {}).items()},
                   value_ranges={k: (float(v[0]), float(v[1])) for k, v in (data.get("value_ranges") or {}).items()})


def _named_dims(inputs: list[TensorInfo]) -> set[str]:
    return {d for i in inputs for a, d in i.dynamic_axes.items() if a not in i.anonymous}


def options_per_model(options: ShapeOptions,
                      models: list[tuple[list[TensorInfo], list[TensorInfo]]]) -> list[ShapeOptions]:
    """One set of options given for several models at once (bench, package, a served repository), as
    ``(inputs, outputs)`` per model: each model gets the sizes of the dims it names and the shapes, batch axes
    and ranges of its own inputs and outputs. A name no model has is a typo (said with the nearest name)."""
    import difflib

    names = [(_named_dims(inputs), {t.name for t in (*inputs, *outputs)}) for inputs, outputs in models]
    all_dims = set().union(*(d for d, _ in names)) if names else set()
    all_tensors = set().union(*(t for _, t in names)) if names else set()

    def typo(kind: str, name: str, known: set[str]) -> EdgeDLError:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return EdgeDLError(f"no model has a {kind} named '{name}'; {hint}their {kind}s: {', '.join(sorted(known)) or 'none'}")

    for name in options.dims:
        if name not in all_dims:
            raise typo("dynamic dim", name, all_dims)
    for group in (options.input_shapes, options.batch_axes, options.value_ranges):
        for name in group:
            if name not in all_tensors:
                raise typo("input or output", name, all_tensors)
    return [options.only_for(inputs, outputs) for inputs, outputs in models]


@dataclass(frozen=True)
class TensorSignature:
    """One input or output: its ONNX facts plus its batch axis (None: not batched, or unknown for an output)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str, ...]
    batch_axis: int | None
    value_range: tuple[float, float] = DEFAULT_FLOAT_RANGE
    anonymous: frozenset[int] = frozenset()  # axes the model leaves unnamed

    @property
    def batched(self) -> bool:
        return self.batch_axis is not None

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        where = f"batch on axis {self.batch_axis}" if self.batched else "not batched"
        return f"{self.name}: {self.dtype.name}[{dims}] ({where})"


def _named(info: TensorInfo, axis: int) -> str | None:
    dim = info.shape[axis]
    return dim if isinstance(dim, str) and axis not in info.anonymous else None


def _batch_dim_name(inputs: list[TensorInfo]) -> str | None:
    """The dim name most inputs carry on axis 0 (e.g. 'batch'), when there is one."""
    names = Counter(n for i in inputs if i.shape for n in [_named(i, 0)] if n)
    return names.most_common(1)[0][0] if names else None


def _fixed_batch_guess(inputs: list[TensorInfo]) -> int | None:
    """For fully fixed models: the fixed size on axis 0 of the first input that has one."""
    for info in inputs:
        if info.shape and isinstance(info.shape[0], int):
            return info.shape[0]
    return None


def _infer_input_axis(info: TensorInfo, batch_name: str | None, fixed_batch: int | None) -> int | None:
    if not info.shape:
        return None  # a scalar (a sample rate, a flag) is never batched
    if batch_name is not None:
        for axis in range(len(info.shape)):
            if _named(info, axis) == batch_name:
                return axis
    if isinstance(info.shape[0], str):
        return 0
    for axis, dim in enumerate(info.shape):
        if isinstance(dim, str):
            return axis  # e.g. a recurrent state [2, batch, 128] with the batch unnamed
    # fully fixed: the first axis of the model's fixed batch size (a state [2, 1, 128] beside an input [1, 576])
    return next((a for a, d in enumerate(info.shape) if d == fixed_batch), 0)


def _infer_output_axis(info: TensorInfo, batch_name: str | None, input_axes: list[int | None]) -> int | None:
    if batch_name is not None:
        for axis in range(len(info.shape)):
            if _named(info, axis) == batch_name:
                return axis
    # unnamed dims: only the common case (every input batched on axis 0, output axis 0 dynamic) is safe to assume
    if info.shape and isinstance(info.shape[0], str) and input_axes and all(a == 0 for a in input_axes):
        return 0
    return None


def check_shape(name: str, declared: tuple[int | str, ...], given: tuple[int, ...]) -> None:
    """A whole shape given for an input fits its declared one: same rank, the same size on every fixed axis."""
    if len(given) != len(declared):
        raise EdgeDLError(f"shape {'x'.join(map(str, given)) or 'scalar'} for input '{name}' has rank "
                          f"{len(given)}; the model's is rank {len(declared)} {list(declared)}")
    for axis, (want, got) in enumerate(zip(declared, given)):
        if isinstance(want, int) and want != got:
            raise EdgeDLError(f"shape for input '{name}' gives {got} on axis {axis}, which the model "
                              f"fixes at {want} {list(declared)}")


def _meta_entries(metadata: Mapping[str, Any], key: str) -> dict[str, Mapping[str, Any]]:
    entries = metadata.get(key) if isinstance(metadata, Mapping) else None
    return {e["name"]: e for e in entries or [] if isinstance(e, Mapping) and isinstance(e.get("name"), str)}


def _check_axis(kind: str, info: TensorInfo, axis: int | None) -> int | None:
    if axis is not None and not 0 <= axis < len(info.shape):
        raise EdgeDLError(f"batch axis {axis} of {kind} '{info.name}' is out of range for its rank "
                          f"{len(info.shape)} {list(info.shape)}; give an axis in 0..{max(len(info.shape) - 1, 0)} "
                          "or none")
    return axis


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs with batch axes, and every size known for them."""

    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    dim_sizes: Mapping[str, int] = field(default_factory=dict)  # named dims
    known_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # whole input shapes
    sources: tuple[str, ...] = ()  # where the sizes came from, for messages

    # --- building ----------------------------------------------------------------------------------------
    @classmethod
    def of(cls, inputs: list[TensorInfo], outputs: list[TensorInfo], metadata: Mapping[str, Any] | None = None,
           options: ShapeOptions | None = None,
           hints: Mapping[str, tuple[int, ...]] | None = None, hints_source: str = "repository") -> "Signature":
        """Batch axes: options, else the model's metadata, else inferred. Sizes: options, else the sizes export
        validated at, else ``hints`` (whole input shapes, e.g. from config.pbtxt or model_warmup)."""
        metadata = metadata or {}
        options = options or ShapeOptions()
        known = {i.name for i in inputs} | {o.name for o in outputs}
        for what, names in (("batch axis", options.batch_axes), ("shape", options.input_shapes),
                            ("value range", options.value_ranges)):
            for name in names:
                if name not in known:
                    raise EdgeDLError(f"{what} given for '{name}', which is not an input or output of the model; "
                                      f"its inputs are {', '.join(i.name for i in inputs)}")
        meta_in, meta_out = _meta_entries(metadata, "inputs"), _meta_entries(metadata, "outputs")
        batch_name = _batch_dim_name(inputs)
        fixed_guess = _fixed_batch_guess(inputs)

        def axis_of(info: TensorInfo, kind: str, meta: Mapping[str, Mapping[str, Any]], infer) -> int | None:
            if info.name in options.batch_axes:
                return _check_axis(kind, info, options.batch_axes[info.name])
            entry = meta.get(info.name)
            if entry is not None and "batch_axis" in entry:
                value = entry["batch_axis"]
                return _check_axis(kind, info, None if value is None else int(value))
            return infer()

        sig_inputs = []
        for info in inputs:
            axis = axis_of(info, "input", meta_in, lambda i=info: _infer_input_axis(i, batch_name, fixed_guess))
            vr = options.value_ranges.get(info.name)
            if vr is None and (meta_in.get(info.name) or {}).get("value_range"):
                lo, hi = meta_in[info.name]["value_range"]
                vr = (float(lo), float(hi))
            if vr is None:
                vr = DEFAULT_FLOAT_RANGE if info.dtype.kind == "f" else DEFAULT_INT_RANGE
            sig_inputs.append(TensorSignature(info.name, info.dtype, info.shape, axis, vr, info.anonymous))
        input_axes = [s.batch_axis for s in sig_inputs]
        sig_outputs = [
            TensorSignature(o.name, o.dtype, o.shape,
                            axis_of(o, "output", meta_out, lambda o=o: _infer_output_axis(o, batch_name, input_axes)),
                            DEFAULT_FLOAT_RANGE, o.anonymous)
            for o in outputs
        ]

        sources = []
        shapes: dict[str, tuple[int, ...]] = {}
        dims: dict[str, int] = {}
        for info in inputs:
            given = options.input_shapes.get(info.name)
            if given is not None:
                check_shape(info.name, info.shape, given)
                shapes[info.name] = tuple(given)
        if options.input_shapes or options.dims:
            sources.append("options")
        validation = metadata.get("validation") if isinstance(metadata.get("validation"), Mapping) else {}
        example = validation.get("example_shapes") if isinstance(validation.get("example_shapes"), Mapping) else {}
        checked = validation.get("checked_sizes") or []
        meta_dims = checked[0] if checked and isinstance(checked[0], Mapping) else {}
        if example or meta_dims:
            sources.append("the sizes export validated at")
        for name, shape in example.items():
            shapes.setdefault(name, tuple(int(d) for d in shape))
        for name, shape in (hints or {}).items():
            if name in {i.name for i in inputs} and len(shape) == len(next(i for i in inputs if i.name == name).shape):
                if name not in shapes:
                    sources.append(hints_source)
                shapes.setdefault(name, tuple(int(d) for d in shape))
        dims.update({k: int(v) for k, v in meta_dims.items() if isinstance(v, (int, float))})
        dims.update(options.dims)
        # a size for a named dim, learnt from any whole shape, also sizes that dim in the other inputs
        for info in inputs:
            for axis, dim in enumerate(info.shape):
                name = _named(info, axis)
                if name and info.name in options.input_shapes:
                    dims[name] = options.input_shapes[info.name][axis]
        named_dims = {n for i in inputs for a in range(len(i.shape)) for n in [_named(i, a)] if n}
        unknown = [d for d in options.dims if d not in named_dims]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], sorted(named_dims), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise EdgeDLError(f"the model has no dynamic dim named '{unknown[0]}'; {hint}its named dims: "
                              f"{', '.join(sorted(named_dims)) or 'none (give whole input shapes instead)'}")
        return cls(tuple(sig_inputs), tuple(sig_outputs), dims, shapes, tuple(dict.fromkeys(sources)))

    @classmethod
    def of_runner(cls, runner, options: ShapeOptions | None = None,
                  hints: Mapping[str, tuple[int, ...]] | None = None) -> "Signature":
        return cls.of(runner.inputs, runner.outputs, runner.metadata, options, hints)

    # --- questions ---------------------------------------------------------------------------------------
    def input(self, name: str) -> TensorSignature:
        for s in self.inputs:
            if s.name == name:
                return s
        raise EdgeDLError(f"model has no input '{name}'; its inputs are {', '.join(s.name for s in self.inputs)}")

    @property
    def batchable(self) -> bool:
        """Requests can be stacked: some input has a dynamic batch axis, every batched input's batch axis is
        dynamic, and every output's batch axis is known (so results can be split back per request)."""
        batched = [s for s in self.inputs if s.batched]
        return bool(batched) and all(isinstance(s.shape[s.batch_axis], str) for s in batched) and all(
            o.batched and isinstance(o.shape[o.batch_axis], str) for o in self.outputs)

    @property
    def fixed_batch(self) -> int | None:
        """The batch a model is fixed at (every batched input has a fixed size there), else None."""
        sizes = {s.shape[s.batch_axis] for s in self.inputs if s.batched}
        if sizes and all(isinstance(d, int) for d in sizes):
            return min(sizes) if len(sizes) == 1 else None
        return None

    @property
    def default_batch(self) -> int:
        """The batch of the known example shapes (what export validated at), else 1."""
        for s in self.inputs:
            if s.batched:
                shape = self.known_shapes.get(s.name)
                if shape is not None:
                    return int(shape[s.batch_axis])
                dim = s.shape[s.batch_axis]
                if isinstance(dim, int):
                    return dim
                if isinstance(dim, str) and dim in self.dim_sizes and s.batch_axis not in s.anonymous:
                    return int(self.dim_sizes[dim])
        return 1

    def batch_rows(self, feeds: Mapping[str, np.ndarray]) -> int | None:
        """Rows of a request: the size of every batched input's batch axis (None when they disagree)."""
        rows = {feeds[s.name].shape[s.batch_axis] for s in self.inputs
                if s.batched and s.name in feeds and feeds[s.name].ndim > s.batch_axis}
        return rows.pop() if len(rows) == 1 else None

    def missing(self, batch: int | None = None) -> list[str]:
        """Human descriptions of dims without a known size (empty when ``shapes`` can answer)."""
        try:
            self.shapes(batch)
        except EdgeDLError as exc:
            return [str(exc)]
        return []

    def shapes(self, batch: int | None = None) -> dict[str, tuple[int, ...]]:
        """A concrete shape for every input at ``batch`` (None: the example batch); raises naming the first dim
        whose size is unknown and how to give it."""
        batch = self.default_batch if batch is None else batch
        out = {}
        for s in self.inputs:
            known = self.known_shapes.get(s.name)
            dims = []
            for axis, dim in enumerate(s.shape):
                if isinstance(dim, int) and axis != s.batch_axis:
                    dims.append(dim)
                elif axis == s.batch_axis:
                    if isinstance(dim, int) and dim != batch:
                        raise EdgeDLError(f"input '{s.name}' has a fixed batch of {dim} (axis {axis})",
                                          hint=f"run the model at batch {dim} (or give '{s.name}' another batch axis, "
                                               f"or none, if axis {axis} is not its batch)",
                                          option=("batch", str(dim)))
                    dims.append(batch)
                elif known is not None:
                    dims.append(int(known[axis]))
                elif axis not in s.anonymous and dim in self.dim_sizes:
                    dims.append(int(self.dim_sizes[dim]))
                else:
                    example = "x".join(str(d) if isinstance(d, int) else ("B" if a == s.batch_axis else "N")
                                       for a, d in enumerate(s.shape))
                    where = f"no size known for input '{s.name}' axis {axis}"
                    if axis in s.anonymous:
                        raise EdgeDLError(f"{where} (an unnamed dim, shape {list(s.shape)})",
                                          hint=f"give the input's whole shape with real sizes ({s.name}={example})",
                                          option=("input_shape", f"{s.name}={example} (with real sizes)"))
                    raise EdgeDLError(f"{where} (dim '{dim}', shape {list(s.shape)})",
                                      hint=f"give the dim's size ({dim}=N) or the input's whole shape ({s.name}={example})",
                                      option=("dim", f"{dim}=N"))
            out[s.name] = tuple(dims)
        return out

    def feeds(self, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded synthetic inputs at ``batch`` within each input's value range (inclusive)."""
        shapes = self.shapes(batch)
        check_synthetic(shapes, {s.name: s.dtype for s in self.inputs})
        feeds = {}
        for index, s in enumerate(self.inputs):
            rng = np.random.default_rng(seed + index)
            shape = shapes[s.name]
            lo, hi = s.value_range
            if s.dtype.kind == "f":
                value = rng.uniform(lo, hi, size=shape)
            elif s.dtype.kind in "iu":
                value = rng.integers(int(lo), int(hi) + 1, size=shape)
            elif s.dtype.kind == "b":
                value = rng.integers(0, 2, size=shape)
            else:
                count = int(np.prod(shape)) if shape else 1
                value = np.array([f"s{v}" for v in rng.integers(0, 100, size=count)], dtype=object).reshape(shape)
            feeds[s.name] = np.asarray(value).astype(s.dtype)
        return feeds

    def describe(self) -> list[str]:
        return [s.describe() for s in self.inputs]

    # --- data along the batch axes -----------------------------------------------------------------------
    def samples(self, arrays: Mapping[str, np.ndarray]) -> int:
        """How many samples aligned arrays hold (the batch axis of batched inputs); raises when they disagree."""
        counts = {}
        for s in self.inputs:
            if s.batched and s.name in arrays:
                arr = arrays[s.name]
                if arr.ndim <= s.batch_axis:
                    raise EdgeDLError(f"array '{s.name}' has shape {list(arr.shape)}, without the batch axis "
                                      f"{s.batch_axis} that the model's input {list(s.shape)} has")
                counts[s.name] = arr.shape[s.batch_axis]
        if not counts:
            return 1  # nothing is batched: one sample
        if len(set(counts.values())) != 1:
            raise EdgeDLError("arrays hold different numbers of samples along their batch axes ("
                              + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "); give each the same count")
        return next(iter(counts.values()))

    def take(self, arrays: Mapping[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Select samples along each batched input's batch axis; unbatched inputs pass through whole."""
        out = {}
        for name, arr in arrays.items():
            spec = next((s for s in self.inputs if s.name == name), None)
            if spec is None or not spec.batched:
                out[name] = arr
            else:
                where = (slice(None),) * spec.batch_axis + (index,)
                out[name] = np.ascontiguousarray(arr[where])
        return out

    def tile(self, arrays: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """``batch`` samples: the first ones, repeated when the arrays hold fewer."""
        n = self.samples(arrays)
        if batch > n:  # refuse, before allocating, a tiling this machine cannot hold (a --max-batch-size warm-up)
            shapes = {name: self._tiled_shape(name, arr.shape, batch) for name, arr in arrays.items()}
            check_memory(sum(int(np.prod(s, dtype=np.float64)) * np.asarray(arrays[k]).itemsize
                             for k, s in shapes.items()) + 8 * batch,
                         "inputs of shape " + ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in shapes.items()))
        return self.take(arrays, np.arange(batch) % n if batch > n else slice(0, batch))

    def _tiled_shape(self, name: str, shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
        spec = next((s for s in self.inputs if s.name == name), None)
        if spec is None or not spec.batched:
            return tuple(shape)
        return tuple(batch if axis == spec.batch_axis else d for axis, d in enumerate(shape))

    def batches(self, arrays: Mapping[str, np.ndarray], batch_size: int):
        """The one data protocol, batch-axis aware: ``{input_name: ndarray}`` batches of ``batch_size`` samples."""
        n = self.samples(arrays)
        for start in range(0, n, batch_size):
            yield self.take(arrays, slice(start, start + batch_size))

    def concat(self, parts: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Stack requests along each input's batch axis (unbatched inputs must be equal; the first is kept)."""
        out = {}
        for s in self.inputs:
            if s.name not in parts[0]:
                continue
            values = [p[s.name] for p in parts]
            out[s.name] = np.concatenate(values, axis=s.batch_axis) if s.batched else values[0]
        return out

    def split_outputs(self, outputs: Mapping[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
        """Inverse of ``concat`` for the outputs: one dict per request with its ``rows`` samples."""
        axes = {o.name: o.batch_axis for o in self.outputs}
        parts: list[dict[str, np.ndarray]] = [{} for _ in rows]
        for name, value in outputs.items():
            axis = axes.get(name, 0) or 0
            start = 0
            for i, r in enumerate(rows):
                where = (slice(None),) * axis + (slice(start, start + r),)
                parts[i][name] = value[where]
                start += r
        return parts
