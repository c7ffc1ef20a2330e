"""`edgedl quantize` on the shipped models with their task metrics (`--metric task_metrics.py:FUNCTION`, the same
functions test_real_tasks scores the fp32 models with), calibrated and evaluated on separate real data: each
int8 model keeps its task within the gate's 1 point, scores the same when scored again outside quantize, and really
is int8. A model quantize cannot improve (silero-vad's If subgraphs) and an int8 model that fails its task (the
recognizer with int8 convolutions) are one-line refusals that write nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from acceptance_cli import quantize_args, refused, report
from real_tasks import MODELS, TASK_METRICS, _vad_data, frame_f1, onnxruntime_run, vad_probabilities
from test_real_tasks import BASELINE

QUANTIZED = [name for name, m in MODELS.items() if not m.unquantizable]
INT8_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv",
            "QLinearMatMul"}


@pytest.mark.parametrize("name", QUANTIZED)
def test_int8_keeps_the_task(name, int8_models):
    model, result = MODELS[name], int8_models[name]
    assert not result.error, result.error
    acc = result.report["accuracy"]
    assert result.report["accepted"] and acc["checked"] and not acc["weak"], acc
    assert acc["fp32_metric"] >= BASELINE[name] and acc["metric_drop"] <= 1.0, acc
    assert acc["samples"] == len(model.data().labels)  # judged on the evaluation data, not the calibration data
    # scored again, outside quantize, on the file it wrote: the number the gate judged
    score = model.score(onnxruntime_run(result.path))
    assert score.value == pytest.approx(acc["metric"], abs=1e-6), str(score)
    graph = onnx.load(str(result.path)).graph
    assert INT8_OPS & {n.op_type for n in graph.node}
    assert result.path.stat().st_size < 0.75 * model.path.stat().st_size


def test_the_recognizer_keeps_its_index_labels_for_the_metric(int8_models):
    """Its labels are the text's class indices per line ([lines, characters], integers): no top-1 accuracy is
    made of them (they are not one class id per sample), the metric reads them."""
    acc = int8_models["ppocr_rec"].report["accuracy"]
    assert acc["fp32"] is None and acc["fp32_metric"] > 98


def test_silero_vad_is_refused_in_one_line_and_nothing_is_written(int8_models):
    result = int8_models["silero_vad"]
    assert MODELS["silero_vad"].unquantizable in result.error and result.error.startswith("error: "), result.error
    assert "nothing written" in result.error and len(result.error.splitlines()) == 1
    assert not result.path.exists()
    assert result.report["accuracy"]["metric_drop"] == 0.0  # judged, and the judgement says why: nothing changed


def test_int8_convolutions_ruin_the_recognizer_and_nothing_is_written(task_files, tmp_path):
    """Plain dynamic int8 (ConvInteger) reads garbage: the metric gate rejects it and names what to try
    (--exclude-op-types, which is the recipe that passes)."""
    model = MODELS["ppocr_rec"]
    out = tmp_path / "rec.int8.onnx"
    args = quantize_args(model.path, model, task_files["ppocr_rec"], out)
    args[args.index("--exclude-op-types"):args.index("--exclude-op-types") + 2] = []
    line = refused(*args, output=out, says=("accuracy gate: metric drop", "--exclude-op-types", "nothing written"))
    assert float(line.split("metric drop ")[1].split()[0]) > 50


def test_the_exported_silero_recipe_quantizes_with_the_vad_metric(silero_exports, tmp_path):
    """models/silero_vad.py's export (no If, no sample-rate input) quantizes statically within a point of VAD F1
    on the same speech."""
    data = _vad_data()
    evaluation, calibration = tmp_path / "speech.npz", tmp_path / "calibration.npz"
    np.savez(evaluation, input=data.inputs["input"], state=data.inputs["state"], labels=data.labels)
    np.savez(calibration, input=data.inputs["input"][1::2], state=data.inputs["state"][:, 1::2])
    source, out = silero_exports["silero_vad.jit"][0], tmp_path / "vad.int8.onnx"
    result = report("quantize", source, "-o", out, "--mode", "static", "--calibration", calibration, "--eval",
                    evaluation, "--metric", f"{TASK_METRICS}:vad_frame_f1", "--speed-seconds", "0", "--no-progress")
    acc = result["accuracy"]
    assert result["accepted"] and acc["fp32_metric"] > 95 and acc["metric_drop"] <= 1.0, acc
    streamed = vad_probabilities(onnxruntime_run(out), data.inputs["input"], sr=False)  # its own state carried
    assert frame_f1(streamed > 0.5, data.labels) > 0.95
