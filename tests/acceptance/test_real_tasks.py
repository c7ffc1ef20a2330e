"""The fp32 baseline every later stage is held to: each shipped model does its task on real inputs in plain
onnxruntime (text lines found and read, orientation told, speech found, the face in the portrait found and
nothing in the other photos), scored by its task metric (tests/fixtures/task_metrics.py). A failure here means
the inputs, their preprocessing or their labels are wrong, not the model."""

from __future__ import annotations

import numpy as np
import pytest

from real_tasks import MODELS, onnxruntime_run, task_metrics

# what the fp32 models score here (percent, measured): the recognizer reads a space before one line, and VAD's
# frame edges are fuzzy
BASELINE = {"ppocr_det": 100.0, "ppocr_rec": 98.0, "ppocr_cls": 100.0, "silero_vad": 95.0, "nudenet": 100.0}


@pytest.mark.parametrize("name", list(MODELS))
def test_shipped_model_does_its_task_on_real_inputs(name):
    model = MODELS[name]
    score = model.score(onnxruntime_run(model.path))
    assert score.value >= BASELINE[name], str(score)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_metric_tells_a_wrong_answer(name):
    """The metric can fail: the model's answers in the wrong order (reversed along the batch) score well below
    its baseline against the labels (more than the quantize gate's 1 point), and 100 against its own answers."""
    model = MODELS[name]
    data = model.data()
    run = onnxruntime_run(model.path)
    outputs = run(data.inputs)
    metric = getattr(task_metrics, model.metric)
    assert metric(outputs, outputs, None) == 100.0
    wrong = {k: v[::-1].copy() for k, v in outputs.items()}
    assert metric(wrong, None, data.labels) < BASELINE[name] - 5
