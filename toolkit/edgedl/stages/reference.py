"""Reference outputs: what a device must compute for the smoke inference that gates a fleet rollout.

``edgedl package`` computes them into the bundle's ``reference.json`` (hashed with the rest); ``edgedl fleet``
takes them from there, or, for a bundle without one, computes them at rollout time from the bundle's own model
files. Either way: onnxruntime on the controller, seeded random inputs at each model's sizes and value ranges (the
package's size options, else the sizes export validated at; a model that says neither gets every dynamic axis at
2). The device (``device_health.py``) must reproduce them within ``atol + rtol * |reference|``; tensors are in the Open
Inference Protocol v2 JSON form, so they go to the server as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.tensors import datatype_of
from edgedl.stages.bundle import REFERENCE, Bundle, ModelEntry

if TYPE_CHECKING:
    from edgedl.runtime.signature import ShapeOptions

ATOL, RTOL = 1e-4, 1e-3  # a device may run other kernels (aarch64 vs x86); same onnxruntime version by the profile


@dataclass(frozen=True)
class ReferenceModel:
    name: str
    inputs: tuple[dict, ...]  # v2 JSON tensors: {"name", "shape", "datatype", "data"}
    outputs: tuple[dict, ...]


@dataclass(frozen=True)
class ReferenceOutputs:
    source: str  # where they come from (the bundle, or computed at rollout time)
    models: tuple[ReferenceModel, ...]
    atol: float = ATOL
    rtol: float = RTOL
    skipped: tuple[str, ...] = field(default_factory=tuple)  # models not smoke-tested, and why

    def to_json(self) -> dict:
        return {"source": self.source, "atol": self.atol, "rtol": self.rtol, "skipped": list(self.skipped),
                "models": [{"name": m.name, "inputs": list(m.inputs), "outputs": list(m.outputs)} for m in self.models]}

    @classmethod
    def from_json(cls, d: dict) -> "ReferenceOutputs":
        return cls(source=d.get("source", REFERENCE), atol=float(d["atol"]), rtol=float(d["rtol"]),
                   skipped=tuple(d.get("skipped", ())),
                   models=tuple(ReferenceModel(m["name"], tuple(m["inputs"]), tuple(m["outputs"])) for m in d["models"]))


def _tensor(name: str, value: np.ndarray) -> dict:
    value = np.asarray(value)
    return {"name": name, "shape": list(value.shape), "datatype": datatype_of(value.dtype),
            "data": value.reshape(-1).tolist()}


def _load(directory: Path, entry: ModelEntry):
    from edgedl.runtime import load

    try:
        return load(Path(directory) / entry.path)
    except EdgeDLError as exc:
        raise EdgeDLError(f"bundle {Path(directory).name}: model {entry.name} does not load here, so no device "
                          f"would serve it ({exc}); fix the model and re-package - no device was touched") from None


def reference_feeds(runner, options=None) -> dict[str, np.ndarray]:
    """Seeded inputs for a model at its own sizes and value ranges (``options``: a ShapeOptions, else the model's
    metadata); every dynamic axis at 2 for a model that says nothing about its sizes."""
    from edgedl.runtime.signature import Signature

    signature = Signature.of_runner(runner, options)
    if not signature.missing():
        return signature.feeds(seed=0)
    dims = {d for t in runner.inputs for d in t.shape if isinstance(d, str)}
    return runner.example_inputs({d: 2 for d in dims}, seed=0)


def compute(directory: Path, models: Sequence[ModelEntry], source: str,
            options: ShapeOptions | None = None) -> ReferenceOutputs:
    """Run every model of a bundle directory on seeded inputs at the sizes ``options`` give (the size options the
    bundle is packaged with, for all its models; each model takes those naming its dims and tensors, as the
    bundle's server does); a model with non-numeric tensors is skipped."""
    from edgedl.runtime.signature import options_per_model

    runners = [(entry, _load(directory, entry)) for entry in models]
    per_model = (options_per_model(options, [(r.inputs, r.outputs) for _, r in runners]) if options is not None
                 else [None] * len(runners))
    computed, skipped = [], []
    for (entry, runner), own in zip(runners, per_model):
        if any(t.dtype.kind == "O" for t in (*runner.inputs, *runner.outputs)):
            skipped.append(f"{entry.name}: non-numeric tensors, not smoke-tested")
            continue
        feeds = reference_feeds(runner, own)
        try:
            outputs = runner.run(feeds)
        except EdgeDLError as exc:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())
            sized = next((t for t in runner.inputs if t.dynamic_axes), runner.inputs[0])
            example = f"{sized.name}={'x'.join(str(d) if isinstance(d, int) else 'N' for d in sized.shape)}"
            raise EdgeDLError(f"model {entry.name} fails on synthetic inputs ({shapes}): {exc}",
                              hint=f"give its real sizes ({example}), and value ranges where it needs them",
                              option=("input_shape", f"{example} with real sizes (and value ranges where it needs "
                                                     "them)")) from None
        computed.append(ReferenceModel(entry.name, tuple(_tensor(n, v) for n, v in feeds.items()),
                                       tuple(_tensor(t.name, outputs[t.name]) for t in runner.outputs)))
    return ReferenceOutputs(source=source, models=tuple(computed), skipped=tuple(skipped))


def for_bundle(bundle: Bundle) -> ReferenceOutputs:
    """The bundle's own reference outputs, else computed now. Every model must load here first: a bundle no
    device could serve is refused before any device is touched."""
    own = bundle.path / REFERENCE
    if own.is_file():
        for entry in bundle.manifest.models:
            _load(bundle.path, entry)
        data = ReferenceOutputs.from_json(json.loads(own.read_text()))
        return ReferenceOutputs(source=f"bundle: {data.source}", models=data.models, atol=data.atol, rtol=data.rtol,
                                skipped=data.skipped)
    return compute(bundle.path, bundle.manifest.models, "computed at rollout time with onnxruntime on the controller",
                   bundle.manifest.server.shape_options)
