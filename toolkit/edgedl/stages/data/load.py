"""``load_data``: one source -> a ``Dataset``, dispatched through ``SOURCES`` (one loader per kind)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from edgedl.runtime.signature import Signature
from edgedl.stages.data.dataset import Dataset
from edgedl.stages.data.images import ImagePreprocessing
from edgedl.stages.data.spec import DataSpec

ROLES = ("calibration", "evaluation")
# samples read from a source unless told: all of a file or a recipe; images cost a decode each; a function may
# yield forever; synthetic data proves little beyond a few batches
DEFAULT_SAMPLES: dict[str, int | None] = {"images": 256, "arrays": None, "recipe": None, "python": 1024,
                                          "synthetic": 64}


@dataclass(frozen=True)
class LoadContext:
    """What every loader may need besides the spec."""

    signature: Signature
    metadata: Mapping[str, Any]
    preprocessing: ImagePreprocessing
    max_samples: int | None  # None: all
    seed: int
    role: str


def _images(spec: DataSpec, ctx: LoadContext) -> Dataset:
    from edgedl.stages.data.images import load_images

    return load_images(spec, ctx.signature, ctx.metadata, ctx.preprocessing, ctx.max_samples, ctx.seed)


def _arrays(spec: DataSpec, ctx: LoadContext) -> Dataset:
    from edgedl.stages.data.arrays import load_arrays

    return load_arrays(spec, ctx.signature, ctx.max_samples)


def _recipe(spec: DataSpec, ctx: LoadContext) -> Dataset:
    from edgedl.stages.data.recipe import load_recipe_data

    return load_recipe_data(spec, ctx.signature, ctx.role, ctx.max_samples)


def _python(spec: DataSpec, ctx: LoadContext) -> Dataset:
    from edgedl.stages.data.python import load_python

    return load_python(spec, ctx.signature, ctx.max_samples)


def _synthetic(spec: DataSpec, ctx: LoadContext) -> Dataset:
    from edgedl.stages.data.synthetic import load_synthetic

    return load_synthetic(ctx.signature, ctx.max_samples, ctx.seed)


SOURCES: dict[str, Callable[[DataSpec, LoadContext], Dataset]] = {
    "images": _images,
    "arrays": _arrays,
    "recipe": _recipe,
    "python": _python,
    "synthetic": _synthetic,
}


def load_data(spec: DataSpec, signature: Signature, metadata: Mapping[str, Any] | None = None,
              preprocessing: ImagePreprocessing | None = None, max_samples: int | None = None, seed: int = 0,
              role: str = "evaluation") -> Dataset:
    """Read one source for a model described by ``signature`` (and its ``metadata``: preprocessing, labels);
    ``max_samples`` None: the kind's default (``DEFAULT_SAMPLES``)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    limit = DEFAULT_SAMPLES[spec.kind] if max_samples is None else max_samples
    ctx = LoadContext(signature, metadata or {}, preprocessing or ImagePreprocessing(), limit, seed, role)
    return SOURCES[spec.kind](spec, ctx)
