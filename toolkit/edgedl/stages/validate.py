"""Prove an exported ONNX model faithful to its PyTorch source, in a fixed order:
output names -> dynamic axes still dynamic -> shapes -> values (per-output atol/rtol, max abs and relative diffs
reported) -> whether the reference could reveal a wrong model at all (``degenerate``: outputs that are empty,
all ~0 within the tolerance, or the same for different inputs prove nothing; the caller warns or refuses).
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
from edgedl.stages.compare import OutputComparison, compare_arrays, constant_reason, near_zero_reason

SEED = 100  # check i feeds seed SEED + i; the constant-output probe uses SEED - 1 at the first sizes


@dataclass
class ValidationReport:
    passed: bool = True
    failure: str | None = None
    stage: str | None = None  # which check failed: names | dynamic_axes | shapes | values
    checks: list[dict[str, Any]] = field(default_factory=list)
    degenerate: dict[str, str] = field(default_factory=dict)  # output -> why its comparison proves nothing

    @property
    def max_abs_diff(self) -> float:
        diffs = [o["max_abs_diff"] for c in self.checks for o in c["outputs"].values()]
        return max(diffs) if diffs else 0.0

    @property
    def max_rel_diff(self) -> float:
        diffs = [o["rel_diff"] for c in self.checks for o in c["outputs"].values()]
        return max(diffs) if diffs else 0.0

    def fail(self, stage: str, message: str) -> "ValidationReport":
        self.passed, self.stage, self.failure = False, stage, message
        return self

    def summary(self) -> dict[str, Any]:
        """What later stages read from the model's metadata: the sizes validated at, the first as whole shapes
        (the default sizes of bench, quantize and the server's warm-up), and how strong the check was."""
        return {"passed": self.passed, "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "checked_sizes": [c["sizes"] for c in self.checks],
                "example_shapes": self.checks[0]["input_shapes"] if self.checks else {},
                **({"degenerate": dict(self.degenerate)} if self.degenerate else {})}

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "failure": self.failure, "stage": self.stage,
                "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "degenerate": dict(self.degenerate), "checks": self.checks}


def flatten_outputs(value) -> list:
    """Outputs in the order the exporters flatten them (tuples, lists and dicts, nested)."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in flatten_outputs(v)]
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in flatten_outputs(v)]
    return [value]


def torch_outputs(model, input_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    torch = require("torch")
    try:
        with torch.no_grad():
            out = model(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names])
    except Exception as exc:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        raise EdgeDLError(f"PyTorch fails on validation inputs ({shapes}): {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                          hint="give the sizes and value ranges forward() accepts") from exc
    return [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in flatten_outputs(out)]


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
        references: dict[str, list[np.ndarray]] = {}
        first_feeds: dict[str, np.ndarray] = {}
        for index, sizes in enumerate(recipe.validation_sizes()):
            feeds = recipe.make_inputs(sizes, seed=SEED + index)
            first_feeds = first_feeds or feeds
            reference = torch_outputs(model, recipe.input_names, feeds)
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
                references.setdefault(name, []).append(ref)
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
                        f"(rel {cmp.rel_diff:.3g} of its largest value) exceeds atol {cmp.atol:g} / rtol {cmp.rtol:g}",
                    )
        report.degenerate = _degenerate(model, recipe, references, first_feeds)
    return report


def _degenerate(model, recipe: Recipe, references: dict[str, list[np.ndarray]],
                first_feeds: dict[str, np.ndarray]) -> dict[str, str]:
    """Outputs whose comparison proves nothing: near zero everywhere, or unchanged by other inputs at the first
    sizes (probed only when the inputs can vary at all, e.g. not for a fixed sample rate alone)."""
    out = {}
    for name, refs in references.items():
        tol = recipe.tolerance_for(name)
        reason = near_zero_reason(refs, tol.atol, tol.rtol)
        if reason:
            out[name] = reason
    probe = recipe.make_inputs(recipe.validation_sizes()[0], seed=SEED - 1)
    if any(not np.array_equal(probe[k], v) for k, v in first_feeds.items()):
        others = torch_outputs(model, recipe.input_names, probe)
        for name, other in zip(references, others):
            tol = recipe.tolerance_for(name)
            reason = None if name in out else constant_reason(references[name][0], other, tol.atol, tol.rtol)
            if reason:
                out[name] = reason
    return out
