"""Reference outputs for the smoke inference a device must pass after a rollout.

Taken from the bundle's ``reference.json`` when it has one (same format as below); otherwise computed here, at
rollout time, from the bundle's own model files with onnxruntime on the controller: seeded random inputs at each
model's sizes and value ranges (the package's size options, else the sizes export validated at; a model that
says neither gets every dynamic axis at 2). The device must reproduce them within ``atol + rtol * |reference|``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgedl.errors import EdgeDLError

DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int8": "INT8", "int16": "INT16",
             "int32": "INT32", "int64": "INT64", "uint8": "UINT8", "bool": "BOOL"}
ATOL, RTOL = 1e-4, 1e-3  # a device may run other kernels (aarch64 vs x86); same onnxruntime version by the profile


def reference_feeds(runner, options=None) -> dict[str, np.ndarray]:
    """Seeded inputs for a model at its own sizes and value ranges (``options``: a ShapeOptions, else the model's
    metadata); every dynamic axis at 2 for a model that says nothing about its sizes."""
    from edgedl.runtime.signature import Signature

    signature = Signature.of_runner(runner, options)
    if not signature.missing():
        return signature.feeds(seed=0)
    dims = {d for t in runner.inputs for d in t.shape if isinstance(d, str)}
    return runner.example_inputs({d: 2 for d in dims}, seed=0)


def reference_outputs(bundle: Path, manifest: dict, options: dict | None = None) -> dict:
    """{"source", "atol", "rtol", "models": [{"name", "inputs": [...], "outputs": [...]}], "skipped": [...]}.
    ``options``: model name -> the ShapeOptions it was packaged with."""
    # every model must load here first: a bundle no device could serve is refused before any device is touched
    runners = [(entry, _load(bundle, entry)) for entry in manifest["models"]]
    own = Path(bundle) / "reference.json"
    if own.is_file():
        data = json.loads(own.read_text())
        return {**data, "source": f"bundle: {data.get('source', 'reference.json')}"}

    models, skipped = [], []
    for entry, runner in runners:
        if any(t.dtype.name not in DATATYPES for t in (*runner.inputs, *runner.outputs)):
            skipped.append(f"{entry['name']}: non-numeric tensors, not smoke-tested")
            continue
        feeds = reference_feeds(runner, (options or {}).get(entry["name"]))
        try:
            outputs = runner.run(feeds)
        except EdgeDLError as exc:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in feeds.items())
            sized = next((t for t in runner.inputs if t.dynamic_axes), runner.inputs[0])
            example = f"{sized.name}={'x'.join(str(d) if isinstance(d, int) else 'N' for d in sized.shape)}"
            raise EdgeDLError(f"model {entry['name']} fails on synthetic inputs ({shapes}): {exc}",
                              hint=f"give its real sizes ({example}), and value ranges where it needs them",
                              option=("input_shape", f"{example} with real sizes (and value ranges where it needs "
                                                     "them)")) from None
        models.append({
            "name": entry["name"],
            "inputs": [_tensor(name, value) for name, value in feeds.items()],
            "outputs": [_tensor(t.name, outputs[t.name]) for t in runner.outputs],
        })
    return {"source": "computed at rollout time with onnxruntime on the controller", "atol": ATOL, "rtol": RTOL,
            "models": models, "skipped": skipped}


def _load(bundle: Path, entry: dict):
    from edgedl.runtime import load

    try:
        return load(Path(bundle) / entry["path"])
    except EdgeDLError as exc:
        raise EdgeDLError(f"bundle {Path(bundle).name}: model {entry['name']} does not load here, so no device "
                          f"would serve it ({exc}); fix the model and re-package - no device was touched") from None


def _tensor(name: str, value: np.ndarray) -> dict:
    value = np.asarray(value)
    return {"name": name, "shape": list(value.shape), "datatype": DATATYPES[value.dtype.name],
            "data": value.reshape(-1).tolist()}
