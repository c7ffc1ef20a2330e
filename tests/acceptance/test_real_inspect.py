"""`edgedl inspect` on the shipped models: with the size options each needs, every input has a shape it runs at
and the batch axes the server and bench follow; without them, the dim that needs a size and the flag to give it."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from edgedl_testing import run_edgedl_inprocess
from real_tasks import MODELS

# batch axis per input and output, as inspect reports it with the model's options
AXES = {
    "ppocr_det": {"x": 0, "sigmoid_0.tmp_0": 0},
    "ppocr_rec": {"x": 0, "softmax_11.tmp_0": 0},
    "ppocr_cls": {"x": 0, "save_infer_model/scale_0.tmp_1": 0},
    "silero_vad": {"input": 0, "state": 1, "sr": None, "output": 0, "stateN": 1},
    "nudenet": {"images": 0, "output0": 0},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_inspect_with_size_options(name):
    model = MODELS[name]
    result = run_edgedl_inprocess("inspect", model.path, *model.options, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    assert [i["name"] for i in report["inputs"]] == [i.name for i in session.get_inputs()]
    assert [o["name"] for o in report["outputs"]] == [o.name for o in session.get_outputs()]
    signature = report["signature"]
    assert signature["missing"] is None
    assert {s["name"]: s["batch_axis"] for s in signature["inputs"] + signature["outputs"]} == AXES[name]
    assert signature["batchable"], signature
    # the shape it runs at is the model's own rank, with real sizes (batch 1)
    for spec, given in zip(signature["inputs"], report["inputs"]):
        assert len(spec["runs_at"]) == len(given["shape"]) and all(d >= 1 for d in spec["runs_at"]), spec


@pytest.mark.parametrize("name", ["ppocr_rec", "silero_vad"])
def test_inspect_names_the_flag_for_an_unnamed_dim(name):
    result = run_edgedl_inprocess("inspect", MODELS[name].path)
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr
    assert "--input-shape" in result.stdout, result.stdout
