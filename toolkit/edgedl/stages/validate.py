"""Prove an exported ONNX model faithful to its PyTorch source, in a fixed order:
output names -> dynamic axes still dynamic -> shapes -> values (per-output atol/rtol, max diffs reported).
Every check runs the ONNX model through ``edgedl.runtime`` (the code that ships)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.recipe import Recipe
from edgedl.runtime import Runner, RunnerConfig
from edgedl.stages.compare import OutputComparison, compare_arrays


@dataclass
class ValidationReport:
    passed: bool = True
    failure: str | None = None
    stage: str | None = None  # which check failed: names | dynamic_axes | shapes | values
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        diffs = [o["max_abs_diff"] for c in self.checks for o in c["outputs"].values()]
        return max(diffs) if diffs else 0.0

    def fail(self, stage: str, message: str) -> "ValidationReport":
        self.passed, self.stage, self.failure = False, stage, message
        return self

    def summary(self) -> dict[str, Any]:
        """What later stages read from the model's metadata: the sizes validated at, the first as whole shapes
        (the default sizes of bench, quantize and the server's warm-up)."""
        return {"passed": self.passed, "max_abs_diff": self.max_abs_diff,
                "checked_sizes": [c["sizes"] for c in self.checks],
                "example_shapes": self.checks[0]["input_shapes"] if self.checks else {}}

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "failure": self.failure, "stage": self.stage,
                "max_abs_diff": self.max_abs_diff, "checks": self.checks}


def _torch_outputs(model, recipe: Recipe, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    torch = require("torch")
    with torch.no_grad():
        out = model(*[torch.from_numpy(feeds[n]) for n in recipe.input_names])
    if isinstance(out, torch.Tensor):
        out = (out,)
    elif isinstance(out, dict):
        out = tuple(out.values())
    return [t.detach().cpu().numpy() for t in out]


def validate(model, recipe: Recipe, onnx_path: Path) -> ValidationReport:
    report = ValidationReport()
    with Runner(onnx_path, RunnerConfig(providers=("cpu",))) as runner:
        expected_names = recipe.output_names
        if expected_names and runner.output_names != expected_names:
            return report.fail("names", f"output names {runner.output_names} differ from the declared {expected_names}")
        infos = {i.name: i for i in runner.inputs + runner.outputs}
        for spec in recipe.inputs + [o for o in recipe.outputs if o.shape]:
            info = infos.get(spec.name)
            if info is None:
                return report.fail("names", f"'{spec.name}' is missing from the exported graph")
            for axis, label in spec.dynamic_axes.items():
                if axis >= len(info.shape) or not isinstance(info.shape[axis], str):
                    got = info.shape[axis] if axis < len(info.shape) else "missing"
                    return report.fail(
                        "dynamic_axes",
                        f"'{spec.name}' axis {axis} ({label}) was exported as fixed size {got}, not dynamic "
                        "(the exporter specializes example sizes of 1; export with example sizes >= 2)",
                    )
        for index, sizes in enumerate(recipe.validation_sizes()):
            feeds = recipe.make_inputs(sizes, seed=100 + index)
            reference = _torch_outputs(model, recipe, feeds)
            try:
                actual = runner.run(feeds)
            except EdgeDLError as exc:
                return report.fail("shapes", f"onnxruntime failed at sizes {sizes}: {exc}")
            if len(reference) != len(actual):
                return report.fail("names", f"PyTorch returns {len(reference)} outputs, the ONNX model {len(actual)}")
            outputs: dict[str, OutputComparison] = {}
            for (name, value), ref in zip(actual.items(), reference):
                tol = recipe.tolerance_for(name)
                outputs[name] = compare_arrays(name, value, ref, tol.atol, tol.rtol)
            report.checks.append({"sizes": sizes, "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
                                  "outputs": {k: v.to_json() for k, v in outputs.items()}})
            for cmp in outputs.values():
                if cmp.shape != cmp.reference_shape:
                    return report.fail("shapes", f"output '{cmp.name}' at sizes {sizes}: shape {cmp.shape}, "
                                                 f"PyTorch gives {cmp.reference_shape}")
            for cmp in outputs.values():
                if not cmp:
                    return report.fail(
                        "values",
                        f"output '{cmp.name}' shape {cmp.shape} at sizes {sizes}: max abs diff {cmp.max_abs_diff:.3g} "
                        f"(max rel {cmp.max_rel_diff:.3g}) exceeds atol {cmp.atol:g} / rtol {cmp.rtol:g}",
                    )
    return report
