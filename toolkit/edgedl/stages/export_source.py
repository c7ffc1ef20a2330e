"""What export exports: a recipe, ``path/to/file.py:Class``, or a TorchScript file, as a ``Recipe`` (inputs,
dynamic dims, example sizes, batch axes, value ranges) plus the ``TorchSource`` that builds its module.

Input specs for a module without a recipe, one per ``forward()`` argument::

    NAME=DIMS[:DTYPE][:LOW..HIGH]     x=2x3x32x32   ids=2x16:int64:0..30521   sr=scalar:int64:16000..16000

The shared size options (``edgedl.cli._shapes``) apply to every source: ``--shape DIM=SIZE`` and
``--input-shape INPUT=D0x...`` set the example size export traces at (every dynamic dim is then validated at that
size and at a second one), ``--batch-axis NAME=AXIS|none`` says which axis is the batch (stored in the model),
``--input-range INPUT=LO..HI`` the values validation feeds.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.recipe import Recipe, TensorSpec, load_recipe
from edgedl.runtime.signature import DEFAULT_FLOAT_RANGE, DEFAULT_INT_RANGE, ShapeOptions, check_shape
from edgedl.runtime.tensors import NUMERIC_DTYPES
from edgedl.stages.torch_source import (TORCHSCRIPT_SUFFIXES, TorchSource, construct, is_torchscript, module_class,
                                        parse_init_args, split_target)

# the runtime's element types an example input may have: torch computes on no unsigned type but uint8
DTYPES = {n for n in NUMERIC_DTYPES if n not in ("uint16", "uint32", "uint64")}
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_INPUT_FORM = "NAME=DIMS[:DTYPE][:LOW..HIGH], e.g. x=2x3x32x32, ids=2x16:int64:0..30521 or sr=scalar:int64:16000..16000"


@dataclass(frozen=True)
class ModelSource:
    recipe: Recipe
    torch: TorchSource

    @property
    def kind(self) -> str:
        return self.torch.kind


# --- specs -------------------------------------------------------------------------------------------------
def parse_input_spec(text: str) -> TensorSpec:
    """'x=2x3x32x32', 'ids=2x16:int64:0..30521' or 'sr=scalar:int64:16000..16000' -> TensorSpec."""
    m = re.fullmatch(rf"\s*([A-Za-z_][\w.]*)\s*=\s*(scalar|\d+(?:x\d+)*)\s*(?::\s*([A-Za-z]\w*))?"
                     rf"\s*(?::\s*({_NUMBER})\s*\.\.\s*({_NUMBER}))?\s*", text)
    if not m:
        raise EdgeDLError(f"malformed --input '{text}'; use {_INPUT_FORM}")
    name = m.group(1)
    dims = () if m.group(2) == "scalar" else tuple(int(d) for d in m.group(2).split("x"))
    dtype = m.group(3) or "float32"
    if dtype not in DTYPES:
        close = difflib.get_close_matches(dtype, sorted(DTYPES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise EdgeDLError(f"--input {name}: unknown dtype '{dtype}'; {hint}use one of {', '.join(sorted(DTYPES))}")
    if any(d < 1 for d in dims):
        raise EdgeDLError(f"--input {name}: every dim must be >= 1, got {m.group(2)} (a rank-0 input is 'scalar')")
    integer = np.dtype(dtype).kind in "iu"
    if m.group(4) is not None:
        lo, hi = float(m.group(4)), float(m.group(5))
        if lo > hi:
            raise EdgeDLError(f"--input {name}: value range {m.group(4)}..{m.group(5)} is empty; give LOW..HIGH")
        if integer and (lo != int(lo) or hi != int(hi)):
            raise EdgeDLError(f"--input {name}: {dtype} values need an integer range, got {m.group(4)}..{m.group(5)}")
        value_range = (lo, hi)
    else:
        value_range = DEFAULT_INT_RANGE if integer else DEFAULT_FLOAT_RANGE
    return TensorSpec(name, dims, dtype, value_range)


def parse_dynamic_spec(text: str) -> tuple[str, dict[int, str]]:
    """'x=0:batch,2:seq' -> ('x', {0: 'batch', 2: 'seq'})."""
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*=\s*(.+)", text)
    axes: dict[int, str] = {}
    if m:
        for part in m.group(2).split(","):
            am = re.fullmatch(r"\s*(\d+)\s*:\s*([A-Za-z_]\w*)\s*", part)
            if not am:
                m = None
                break
            axes[int(am.group(1))] = am.group(2)
    if not m or not axes:
        raise EdgeDLError(f"malformed --dynamic '{text}'; use NAME=AXIS:label[,AXIS:label], e.g. x=0:batch,2:seq")
    return m.group(1), axes


def recipe_from_specs(name: str, build, input_specs: list[str], dynamic_specs: list[str], output_names: list[str],
                      source: str) -> Recipe:
    """An ad-hoc recipe from --input / --dynamic / --output-name (a module without a recipe)."""
    if not input_specs:
        raise EdgeDLError(f"{name} has no recipe: give --input {_INPUT_FORM.split(', e.g.')[0]} for each forward() "
                          "argument, in order")
    specs = [parse_input_spec(s) for s in input_specs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EdgeDLError(f"duplicate --input names: {names}")
    if len(set(output_names)) != len(output_names):
        raise EdgeDLError(f"duplicate --output-name names: {list(output_names)}")
    dynamic: dict[str, dict[int, str]] = {}
    for text in dynamic_specs:
        tensor, axes = parse_dynamic_spec(text)
        if tensor not in names and tensor not in output_names:
            raise EdgeDLError(f"--dynamic names '{tensor}', which is neither an --input nor an --output-name")
        dynamic.setdefault(tensor, {}).update(axes)
    dim_examples: dict[str, tuple[int, int]] = {}
    inputs = []
    for spec in specs:
        shape: list[int | str] = list(spec.shape)
        for axis, label in dynamic.get(spec.name, {}).items():
            if axis >= len(shape):
                raise EdgeDLError(f"--dynamic {spec.name}: axis {axis} out of range for rank {len(shape)}")
            # size-1 examples are silently specialized by the exporter: export at >= 2, check at another size
            first = max(2, int(shape[axis]))
            if label in dim_examples and dim_examples[label][0] != first:
                raise EdgeDLError(f"--input sizes disagree on dynamic dim '{label}' ({dim_examples[label][0]} vs "
                                  f"{shape[axis]} in {spec.name}); give every input the same example size for it")
            dim_examples.setdefault(label, (first, first + 3))
            shape[axis] = label
        inputs.append(dataclasses.replace(spec, shape=tuple(shape)))
    outputs = []
    for out in output_names:
        axes = dynamic.get(out, {})
        for label in axes.values():
            if label not in dim_examples:
                raise EdgeDLError(f"--dynamic {out}: '{label}' is not a dynamic dim of any input")
        outputs.append(TensorSpec(out, None, "float32") if not axes else
                       TensorSpec(out, tuple(axes.get(i, -1) for i in range(max(axes) + 1)), "float32"))
    return Recipe(name=name, build=build, inputs=inputs, outputs=outputs, dim_examples=dim_examples, source=source)


# --- the shared size options -------------------------------------------------------------------------------
def apply_shape_options(recipe: Recipe, options: ShapeOptions) -> Recipe:
    """Example sizes, batch axes and value ranges the user gave, applied to any recipe (a new one is returned)."""
    if not options:
        return recipe
    inputs = {s.name: s for s in recipe.inputs}
    outputs = {s.name: s for s in recipe.outputs}

    def unknown(kind: str, name: str, known: list[str]) -> EdgeDLError:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return EdgeDLError(f"{recipe.name} has no {kind} '{name}'; {hint}its {kind}s: {', '.join(known) or 'none'}")

    examples = dict(recipe.dim_examples)
    chosen: dict[str, tuple[int, str]] = {}

    def set_example(dim: str, size: int, why: str) -> None:
        if dim in chosen and chosen[dim][0] != size:
            raise EdgeDLError(f"dynamic dim '{dim}' gets two example sizes: {chosen[dim][0]} ({chosen[dim][1]}) and "
                              f"{size} ({why}); give one")
        if size < 2:
            raise EdgeDLError(f"example size {size} for dynamic dim '{dim}' ({why}): torch exports a size-1 example as "
                              "a fixed dim; give a size >= 2 (validation also checks a second size)")
        chosen[dim] = (size, why)
        first, second = examples[dim]
        examples[dim] = (size, second if second != size else first)

    for dim, size in options.dims.items():
        if dim not in examples:
            raise unknown("dynamic dim", dim, sorted(examples))
        set_example(dim, size, f"{dim}={size}")
    for name, shape in options.input_shapes.items():
        spec = inputs.get(name)
        if spec is None:
            raise unknown("input", name, list(inputs))
        check_shape(name, spec.shape, shape)
        for want, got in zip(spec.shape, shape):
            if isinstance(want, str):
                set_example(want, int(got), f"{name}={'x'.join(map(str, shape))}")
    for name, axis in options.batch_axes.items():
        spec = inputs.get(name) or outputs.get(name)
        if spec is None:
            raise unknown("input or output", name, list(inputs) + list(outputs))
        if spec.shape is None:
            raise EdgeDLError(f"output '{name}' has no declared shape, so no batch axis can be set on it; declare its "
                              f"dynamic axes ({name}=0:batch) first")
        if axis is not None and not 0 <= axis < len(spec.shape):
            raise EdgeDLError(f"batch axis {axis} of '{name}' is out of range for its shape {list(spec.shape)}; give "
                              f"0..{max(len(spec.shape) - 1, 0)} or none", option=("batch_axis", f"{name}=none"))
        replaced = dataclasses.replace(spec, batch_axis=axis)
        (inputs if name in inputs else outputs)[name] = replaced
    for name, (lo, hi) in options.value_ranges.items():
        spec = inputs.get(name)
        if spec is None:
            raise unknown("input", name, list(inputs))
        if np.dtype(spec.dtype).kind in "iu" and (lo != int(lo) or hi != int(hi)):
            raise EdgeDLError(f"input '{name}' is {spec.dtype}: give an integer value range, got {lo:g}..{hi:g}")
        inputs[name] = dataclasses.replace(spec, value_range=(lo, hi))
    return dataclasses.replace(recipe, inputs=list(inputs.values()), outputs=list(outputs.values()),
                               dim_examples=examples)


# --- sources -----------------------------------------------------------------------------------------------
def _looks_like_torchscript(path: Path) -> bool:
    return path.suffix in TORCHSCRIPT_SUFFIXES


def resolve_source(target: str, input_specs: list[str], dynamic_specs: list[str], output_names: list[str],
                   options: ShapeOptions | None = None, init_args: str | None = None,
                   checkpoint: Path | None = None) -> ModelSource:
    """The recipe and torch source for ``target``: a recipe (file or zoo name), ``file.py:Class``, or a
    TorchScript file (``model.jit``, optionally ``model.jit:submodule``)."""
    options = options or ShapeOptions()
    path, attr = split_target(target)
    whole = Path(target)
    if (whole.is_file() and _looks_like_torchscript(whole)) or (attr and _looks_like_torchscript(path)):
        script = whole if whole.is_file() else path
        if not script.is_file():
            raise EdgeDLError(f"TorchScript file not found: {script}")
        if not is_torchscript(script):
            raise EdgeDLError(f"{script} is not a TorchScript file (torch.jit.save); a state_dict needs its class: "
                              f"pass path/to/file.py:ClassName --checkpoint {script}")
        if init_args:
            raise EdgeDLError("--init-args is for path/to/file.py:ClassName; a TorchScript file is built already")
        if checkpoint is not None:
            raise EdgeDLError(f"{script} is a TorchScript file, which carries its own weights; drop --checkpoint")
        source = TorchSource("torchscript", f"{script.resolve()}{':' + attr if not whole.is_file() else ''}")
        recipe = recipe_from_specs(script.stem + (f".{attr}" if not whole.is_file() else ""), source.build,
                                   input_specs, dynamic_specs, output_names, source.target)
        return ModelSource(apply_shape_options(recipe, options), source)
    if attr and not whole.exists() and path.suffix == ".py":
        if not path.is_file():
            raise EdgeDLError(f"model file not found: {path}; pass path/to/file.py:ClassName")
        cls = module_class(path, attr)
        args = parse_init_args(init_args)
        target_text = f"{path.resolve()}:{attr}"
        source = TorchSource("module", target_text, args)
        recipe = recipe_from_specs(attr, lambda: construct(cls, args), input_specs, dynamic_specs, output_names, target_text)
        return ModelSource(apply_shape_options(recipe, options), source)
    if attr and not whole.exists():
        raise EdgeDLError(f"'{target}' is neither a recipe, path/to/file.py:ClassName nor a TorchScript file "
                          f"({', '.join(TORCHSCRIPT_SUFFIXES)})")
    if input_specs or dynamic_specs or output_names:
        raise EdgeDLError("--input/--dynamic/--output-name are for path/to/file.py:ClassName or a TorchScript file; "
                          "a recipe declares its own inputs (change sizes with --shape)")
    if init_args:
        raise EdgeDLError("--init-args is for path/to/file.py:ClassName; a recipe builds its own model")
    if whole.is_file() and whole.suffix != ".py":
        raise EdgeDLError(f"{whole} is neither a recipe (.py), path/to/file.py:ClassName nor a TorchScript file "
                          f"({', '.join(TORCHSCRIPT_SUFFIXES)})")
    recipe = load_recipe(target)
    return ModelSource(apply_shape_options(recipe, options), TorchSource("recipe", recipe.source))
