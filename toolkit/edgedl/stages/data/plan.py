"""Which data serves calibration and which evaluation: ``DataOptions`` (what the user said) -> ``DataPlan``.

Per role: its own source (``calibration`` / ``evaluation``), else the shared ``data``, else the recipe the model's
metadata names (zoo models), else the other role's source, else synthetic inputs. One real source given for both roles is split in two seeded
halves (calibrated on one, judged on the other) when it holds at least ``MIN_SPLIT`` samples; a smaller one is
used for both, and the plan says the check is then optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import Signature
from edgedl.stages.data.dataset import Dataset
from edgedl.stages.data.images import ImagePreprocessing
from edgedl.stages.data.load import load_data
from edgedl.stages.data.spec import DataSpec

MIN_SPLIT = 8


@dataclass(frozen=True)
class DataOptions:
    """Data sources per role, image preprocessing over the model's own, and how many samples to read."""

    data: DataSpec | None = None  # both roles
    calibration: DataSpec | None = None
    evaluation: DataSpec | None = None
    preprocessing: ImagePreprocessing = field(default_factory=ImagePreprocessing)
    max_samples: int | None = None  # None: each kind's default (load.DEFAULT_SAMPLES)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise EdgeDLError(f"max samples must be >= 1, got {self.max_samples}", option=("max_samples", "N"))

    @property
    def given(self) -> bool:
        return any(s is not None for s in (self.data, self.calibration, self.evaluation))

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data and self.data.to_json(), "calibration": self.calibration and self.calibration.to_json(),
                "evaluation": self.evaluation and self.evaluation.to_json(),
                "preprocessing": self.preprocessing.to_json(), "max_samples": self.max_samples, "seed": self.seed}


@dataclass(frozen=True)
class DataPlan:
    calibration: Dataset | None
    evaluation: Dataset | None
    notes: tuple[str, ...] = ()

    @property
    def weak(self) -> bool:
        """Judged on synthetic inputs only."""
        return self.evaluation is not None and self.evaluation.synthetic

    def to_json(self) -> dict[str, Any]:
        return {"calibration": self.calibration.to_json() if self.calibration is not None else None,
                "evaluation": self.evaluation.to_json() if self.evaluation is not None else None,
                "weak": self.weak, "notes": list(self.notes)}


def model_recipe(metadata: Mapping[str, Any]) -> DataSpec | None:
    """The recipe whose data a model's metadata names: zoo exports carry it; a ``file.py:Class`` export (task
    None) or a foreign model has none."""
    from edgedl.recipe import resolve_recipe_path

    if "task" in metadata and metadata.get("task") is None:
        return None
    source, name = metadata.get("recipe_source"), metadata.get("recipe")
    if isinstance(source, str) and Path(source).is_file() and Path(source).suffix == ".py":
        return DataSpec("recipe", source)
    if not isinstance(name, str) or not name:
        return None
    try:
        resolve_recipe_path(name)  # a moved checkout: the zoo name still finds it
    except EdgeDLError:
        if metadata.get("task"):
            raise EdgeDLError(f"the model takes its data from recipe '{name}' ({source}), which is not here",
                              hint="give the data", option=("data", "SOURCE")) from None
        return None
    return DataSpec("recipe", name)


def plan_data(options: DataOptions, signature: Signature, metadata: Mapping[str, Any] | None = None,
              calibration: bool = True, evaluation: bool = True, synthetic_fallback: bool = True) -> DataPlan:
    """Load the data for the roles asked for (``calibration``, ``evaluation``). Without any source for a role,
    synthetic inputs serve it (``synthetic_fallback``) or the role stays empty."""
    metadata = metadata or {}
    recipe = model_recipe(metadata) if not (options.data or (options.calibration and options.evaluation)) else None
    fallback = DataSpec("synthetic") if synthetic_fallback else None
    # a role without a source of its own takes the other role's before synthetic inputs
    cal_spec = (options.calibration or options.data or recipe or options.evaluation or fallback) if calibration else None
    eval_spec = (options.evaluation or options.data or recipe or options.calibration or fallback) if evaluation else None
    notes: list[str] = []

    def load(spec: DataSpec | None, role: str, seed: int) -> Dataset | None:
        if spec is None:
            return None
        return load_data(spec, signature, metadata, options.preprocessing, options.max_samples, seed, role)

    if cal_spec is not None and cal_spec == eval_spec and cal_spec.kind not in ("recipe", "synthetic"):
        whole = load(eval_spec, "evaluation", options.seed)
        if len(whole) >= MIN_SPLIT:
            cal_set, eval_set = whole.split(options.seed)
            notes.append(f"one data source for both roles: calibrated on {len(cal_set)} of its samples and evaluated "
                         f"on the other {len(eval_set)} (give separate calibration and evaluation data to choose)")
        else:
            cal_set = eval_set = whole
            notes.append(f"one data source of only {len(whole)} sample(s) for both roles: calibrated and evaluated on "
                         "the same samples, so the accuracy check is optimistic; give more or separate data")
    else:
        # synthetic calibration and evaluation draw different values
        cal_set = load(cal_spec, "calibration", options.seed)
        eval_set = load(eval_spec, "evaluation", options.seed + 1)
    if eval_set is not None and eval_set.synthetic:
        notes.append("evaluated on synthetic inputs (seeded, uniform in each input's value range): a weaker check "
                     "than real data; give real data to judge accuracy")
    if cal_set is not None and cal_set.synthetic:
        notes.append("calibrated on synthetic inputs: scales fitted to uniform values, not to real inputs; give real "
                     "calibration data")
    return DataPlan(cal_set, eval_set, tuple(notes))
