"""A recipe's data (the zoo's: scikit-learn's digits): its calibration split for calibration, its test split for
evaluation, so that the data a model is judged on is never the data it was calibrated on."""

from __future__ import annotations

from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import Signature
from edgedl.stages.data.dataset import Dataset
from edgedl.stages.data.spec import FORMS, DataSpec

# data role -> the recipe split that serves it
SPLIT_OF_ROLE = {"calibration": "calibration", "evaluation": "test"}


def load_recipe_data(spec: DataSpec, signature: Signature, role: str, max_samples: int | None) -> Dataset:
    from edgedl.recipe import load_recipe, resolve_recipe_path

    try:
        resolve_recipe_path(spec.location)
    except EdgeDLError as exc:
        if Path(spec.location).suffix == ".py":
            raise
        raise EdgeDLError(f"'{spec.location}' is no folder, file or recipe ({exc}); pass {FORMS}") from exc
    recipe = load_recipe(spec.location)
    if recipe.data is None:
        raise EdgeDLError(f"recipe {recipe.name} declares no data; pass {FORMS}")
    split_name = SPLIT_OF_ROLE[role]
    split = recipe.split(split_name)
    where = f"recipe {recipe.name} {split_name} split"
    dataset = Dataset.from_arrays(signature, split.inputs, split.labels, "recipe", where,
                                  {"recipe": recipe.name, "split": split_name})
    return dataset.head(max_samples) if max_samples is not None and len(dataset) > max_samples else dataset
