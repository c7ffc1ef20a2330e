"""Model recipes: everything the pipeline needs to know about a model, declared in one place.

A recipe file (``models/cnn.py``) builds a ``Recipe`` and assigns it to a module-level ``recipe``. The trainer,
the exporter, the validator, quantization and benchmarks read it; there are no per-model special cases.
This module does not import torch: a recipe's ``build`` does, when called.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import numpy as np

from edgedl.errors import EdgeDLError

ZOO_DIR = Path(__file__).resolve().parents[2] / "models"
AUTO = "auto"


@dataclass(frozen=True)
class TensorSpec:
    """A named model input or output. ``shape`` mixes ints (fixed) and names of dynamic dims (str)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 1.0)  # for generated example inputs (inclusive)
    # which axis is the batch: AUTO = the dim named 'batch', else axis 0 (none for a scalar); None = not batched
    batch_axis: int | None | str = "auto"

    def __post_init__(self) -> None:
        if self.batch_axis != AUTO and self.batch_axis is not None and not (
                isinstance(self.batch_axis, int) and 0 <= self.batch_axis < len(self.shape or ())):
            raise EdgeDLError(f"TensorSpec '{self.name}': batch_axis must be 'auto', None or an axis of its shape "
                              f"{list(self.shape or ())}, got {self.batch_axis!r}")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape or ()) if isinstance(d, str)}

    @property
    def resolved_batch_axis(self) -> int | None:
        if self.batch_axis != AUTO:
            return self.batch_axis
        if not self.shape:
            return None
        return next((i for i, d in enumerate(self.shape) if d == "batch"), 0)

    def concrete(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class Tolerance:
    """Per-output agreement required between onnxruntime and PyTorch (fp32 defaults)."""

    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    label_smoothing: float = 0.0
    keep: str = "last"  # 'last' epoch (cosine schedule ends low) or 'best' validation accuracy

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise EdgeDLError("training config needs epochs >= 1, batch_size >= 1 and lr > 0")
        if self.keep not in ("last", "best"):
            raise EdgeDLError(f"training config keep must be 'last' or 'best', got '{self.keep}'")


@dataclass(frozen=True)
class Split:
    """A labelled split: ``inputs`` maps input names to arrays aligned with ``labels``."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        from edgedl.runtime.tensors import iter_batches

        return iter_batches(self.inputs, batch_size)

    def head(self, n: int) -> "Split":
        return Split({k: v[:n] for k, v in self.inputs.items()}, self.labels[:n])


class DataSource(Protocol):
    """What a recipe's ``data`` provides: named splits ('train', 'val', 'test', 'calibration')."""

    def split(self, name: str, input_names: list[str]) -> Split: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class Recipe:
    name: str
    build: Callable[[], Any]  # () -> torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # two distinct sizes (>= 2, see PITFALLS: size-1 examples get specialized) for every dynamic dim;
    # the first is the export example, the second proves the axis stayed dynamic.
    dim_examples: dict[str, tuple[int, int]]
    data: DataSource | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    tolerance: Tolerance = field(default_factory=Tolerance)
    output_tolerances: dict[str, Tolerance] = field(default_factory=dict)
    labels: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    task: str = "classification"
    example_inputs: Callable[[Mapping[str, int], int], dict[str, np.ndarray]] | None = None
    # reads published weights `edgedl train` did not write (path -> the build()'s state dict); default: the
    # safetensors file as it is
    load_checkpoint: Callable[[Path], Mapping[str, Any]] | None = None
    source: str = ""  # the file it was loaded from (filled by load_recipe)

    def __post_init__(self) -> None:
        named = {d for spec in self.inputs + self.outputs for d in spec.dynamic_axes.values()}
        missing = named - set(self.dim_examples)
        if missing:
            raise EdgeDLError(f"recipe '{self.name}' needs dim_examples for dynamic dim(s) {sorted(missing)}")
        for dim, sizes in self.dim_examples.items():
            if len(sizes) != 2 or sizes[0] == sizes[1] or min(sizes) < 2:
                raise EdgeDLError(
                    f"recipe '{self.name}': dim_examples['{dim}'] must be two different sizes >= 2, got {sizes}"
                )

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def tolerance_for(self, output: str) -> Tolerance:
        return self.output_tolerances.get(output, self.tolerance)

    def validation_sizes(self) -> list[dict[str, int]]:
        """All dims at their first example, then each dynamic dim moved to its second example in turn."""
        base = {d: s[0] for d, s in self.dim_examples.items()}
        checks = [base]
        for dim, sizes in self.dim_examples.items():
            checks.append({**base, dim: sizes[1]})
        return checks

    def make_inputs(self, sizes: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Example inputs for the given dim sizes (the recipe's own generator, or seeded uniform values)."""
        if self.example_inputs is not None:
            return self.example_inputs(sizes, seed)
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            shape = spec.concrete(sizes)
            lo, hi = spec.value_range
            if np.dtype(spec.dtype).kind == "f":
                value = rng.uniform(lo, hi, size=shape)
            elif np.dtype(spec.dtype).kind == "b":
                value = rng.integers(0, 2, size=shape)
            else:
                value = rng.integers(int(lo), int(hi) + 1, size=shape)
            out[spec.name] = np.asarray(value).astype(spec.dtype)  # asarray: a scalar input is a 0-d array
        return out

    def split(self, name: str) -> Split:
        if self.data is None:
            raise EdgeDLError(f"recipe '{self.name}' declares no data; it cannot train or evaluate")
        return self.data.split(name, self.input_names)


def resolve_recipe_path(spec: str) -> Path:
    """A recipe file path, or the name of a zoo model ('cnn' -> models/cnn.py)."""
    path = Path(spec)
    if path.suffix == ".py" or path.is_file():  # a folder named like a recipe (an unpacked wheel) is no recipe
        if not path.is_file():
            raise EdgeDLError(f"recipe file not found: {path}")
        return path.resolve()
    for base in (Path.cwd() / "models", ZOO_DIR):
        candidate = base / f"{spec}.py"
        if candidate.is_file():
            return candidate.resolve()
    zoo = sorted(p.stem for p in ZOO_DIR.glob("*.py") if not p.stem.startswith("_")) if ZOO_DIR.is_dir() else []
    import difflib

    close = difflib.get_close_matches(spec, zoo, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise EdgeDLError(f"no recipe '{spec}': {hint}pass a recipe file (models/cnn.py) or a zoo name ({', '.join(zoo)})")


# modules whose pip package has another name (what to install when a model file imports them)
_PACKAGE_OF = {"cv2": "opencv-python", "PIL": "Pillow", "yaml": "PyYAML", "sklearn": "scikit-learn",
               "skimage": "scikit-image", "google.protobuf": "protobuf"}


def import_file(path: Path, module_name: str | None = None):
    """Import a Python file as a module (user recipes and user model files). Its folder is on the module path
    while it is imported, so it can import the modules next to it (``from layers import Block``)."""
    name = module_name or f"edgedl_user_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EdgeDLError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(Path(path).resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except EdgeDLError:
        sys.modules.pop(name, None)
        raise
    except ModuleNotFoundError as exc:
        sys.modules.pop(name, None)
        missing = exc.name or ""
        from edgedl._lazy import extra_of, require

        if extra_of(missing):
            require(missing)  # one of edgedl's own extras: raises naming the extra to install
        package = _PACKAGE_OF.get(missing) or _PACKAGE_OF.get(missing.split(".")[0]) or missing.split(".")[0]
        raise EdgeDLError(f"importing {path} failed: {exc}; install the package it needs: {package}") from exc
    except Exception as exc:
        sys.modules.pop(name, None)
        raise EdgeDLError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def load_recipe(spec: str | Path) -> Recipe:
    path = resolve_recipe_path(str(spec))
    module = import_file(path)
    recipe = getattr(module, "recipe", None)
    if not isinstance(recipe, Recipe):
        raise EdgeDLError(f"{path} defines no module-level `recipe = Recipe(...)`; see models/cnn.py for the form")
    recipe.source = str(path)
    return recipe
