"""The fp32 baseline every later stage is held to: each shipped model does its task on real inputs in plain
onnxruntime (text lines found and read, orientation told, speech found, clean photos left alone). A failure here
means the inputs or their preprocessing are wrong, not the model."""

from __future__ import annotations

import pytest

from real_tasks import MODELS, onnxruntime_run

# what the fp32 models score here (measured): every one perfect except VAD, whose frame edges are fuzzy
BASELINE = {"ppocr_det": 1.0, "ppocr_rec": 1.0, "ppocr_cls": 1.0, "silero_vad": 0.95, "nudenet": 1.0}


@pytest.mark.parametrize("name", list(MODELS))
def test_shipped_model_does_its_task_on_real_inputs(name):
    model = MODELS[name]
    score = model.score(onnxruntime_run(model.path))
    assert score.value >= BASELINE[name], str(score)
