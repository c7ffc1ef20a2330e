"""`edgedl quantize` on trained models nobody here wrote, shipped inside PyPI wheels (see shared REAL_MODELS):
the opset-11 PP-OCR text-direction classifier on text lines rendered with Pillow, and silero-vad on speech made with
espeak-ng (a recurrent state batched on axis 1, a scalar sample rate), judged by a task metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import real_models
from edgedl_testing import ROOT, assert_one_line_error, run_edgedl_inprocess

METRICS = ROOT / "tests" / "fixtures" / "task_metrics.py"
WORDS = ["hello world", "edge device", "quantize me", "batch axis", "onnx runtime", "per channel", "text line",
         "pillow draw", "opset eleven", "calibration", "scale zero", "int8 model", "fast path", "small cpu",
         "gate check", "real data"]


def _dq_axes(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis")


def _opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.fixture(scope="module")
def ocr_cls() -> Path:
    return real_models.shipped("ppocr_cls")


@pytest.fixture(scope="module")
def text_lines(tmp_path_factory) -> Path:
    """Rendered text lines in class folders: 0 (upright) and 180 (upside down), the classifier's two classes."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(real_models.dejavu_font()), 30)
    root = tmp_path_factory.mktemp("lines")
    for i, text in enumerate(WORDS):
        img = Image.new("RGB", (24 + int(font.getlength(text)), 48), "white")  # real widths, resized to 48x192
        ImageDraw.Draw(img).text((8, 6), text, fill="black", font=font)
        for folder, image in (("0", img), ("180", img.rotate(180))):
            (root / folder).mkdir(exist_ok=True)
            image.save(root / folder / f"{i:02d}.png")
    return root


OCR_PREPROCESSING = ["--resize", "48x192", "--mean", "0.5", "--std", "0.5"]  # PaddleOCR's (x/255 - 0.5) / 0.5


def test_per_channel_static_on_the_opset11_ocr_classifier(ocr_cls, text_lines, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Lines(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": np.random.default_rng(0).random((4, 3, 48, 192), np.float32)}])

        def get_next(self):
            return next(self.batches, None)

    # the root cause: the model keeps its weights in Constant nodes, so plain quantize_static "works" only because
    # per-channel silently falls back to per-tensor; once preprocessing folds them into initializers, per-channel
    # DequantizeLinear nodes get an axis attribute that opset 11 does not have
    plain = tmp_path / "plain.onnx"
    quantize_static(str(ocr_cls), str(plain), Lines(), quant_format=QuantFormat.QDQ, per_channel=True)
    assert _dq_axes(plain) == 0
    pre, broken = tmp_path / "pre.onnx", tmp_path / "broken.onnx"
    quant_pre_process(str(ocr_cls), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(broken), Lines(), quant_format=QuantFormat.QDQ, per_channel=True)
    import onnxruntime as ort

    with pytest.raises(Exception, match="Unrecognized attribute: axis"):
        ort.InferenceSession(str(broken), providers=["CPUExecutionProvider"])

    out = tmp_path / "cls.int8.onnx"
    result = run_edgedl_inprocess("quantize", ocr_cls, "-o", out, "--mode", "static", "--data", text_lines,
                                  *OCR_PREPROCESSING, "--speed-seconds", "0.05", "--speed-batch", "4", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert _opset(out) == 13 and _dq_axes(out) > 50  # really per channel, and it loads
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert any("upgraded the model from opset 11 to 13" in n for n in data["notes"])
    acc = data["accuracy"]
    assert acc["fp32"] == 100.0 and acc["drop_points"] <= 1.0 and not acc["weak"]  # labels from the folders
    assert data["data"]["evaluation"]["details"]["classes"] == {"0": 0, "180": 1}
    assert data["data"]["calibration"]["samples"] + data["data"]["evaluation"]["samples"] == 32  # split, not reused
    assert data["speed"]["shapes"]["4"] == {"x": [4, 3, 48, 192]}  # timed at the data's real size

    # the other two forms stay at opset 11: per-tensor QDQ, and per-channel QLinearConv
    for flags, check in ((["--per-tensor"], lambda p: _dq_axes(p) == 0),
                         (["--format", "qoperator"], lambda p: "QLinearConv" in {n.op_type for n in onnx.load(str(p)).graph.node})):
        other = tmp_path / f"cls{flags[-1]}.onnx"
        result = run_edgedl_inprocess("quantize", ocr_cls, "-o", other, "--mode", "static", "--data", text_lines,
                                      *OCR_PREPROCESSING, *flags, "--speed-seconds", "0", "--json")
        assert result.returncode == 0, result.stderr
        assert _opset(other) == 11 and check(other)
        ort.InferenceSession(str(other), providers=["CPUExecutionProvider"])


def test_a_foreign_model_without_data_or_sizes(ocr_cls, tmp_path):
    """Unnamed dims and no data: a one-line refusal that says what to pass; with sizes, synthetic inputs at those
    sizes (timed there too), judged by SQNR and reported as the weaker check they are."""
    out = tmp_path / "cls.dyn.onnx"
    result = run_edgedl_inprocess("quantize", ocr_cls, "-o", out, "--mode", "dynamic")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and not out.exists()
    assert "nothing to check accuracy on" in lines[0] and "--input-shape" in lines[0] and "--data" in lines[0]
    assert "--no-accuracy-gate" in lines[0]
    result = run_edgedl_inprocess("quantize", ocr_cls, "-o", out, "--mode", "dynamic", "--input-shape",
                                  "x=1x3x48x192", "--speed-seconds", "0.05", "--speed-batch", "2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["accuracy"]["weak"] and data["data"]["evaluation"]["kind"] == "synthetic"
    assert [c["name"] for c in data["accuracy"]["checks"]] == ["SQNR (worst output)"]
    assert data["accuracy"]["checks"][0]["value"] > 15 and any("weaker check" in n for n in data["notes"])
    assert data["speed"]["shapes"]["2"] == {"x": [2, 3, 48, 192]}
    # --no-accuracy-gate without data writes the model, and says it was not checked
    unchecked = tmp_path / "cls.unchecked.onnx"
    result = run_edgedl_inprocess("quantize", ocr_cls, "-o", unchecked, "--mode", "dynamic", "--no-accuracy-gate",
                                  "--speed-seconds", "0", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and unchecked.is_file() and not data["accuracy"]["checked"]
    assert any("accuracy not checked" in n for n in data["notes"])


# --- silero-vad: state batched on axis 1, a scalar sample rate, a task metric -------------------------------
@pytest.fixture(scope="module")
def vad_models() -> dict[str, Path]:
    return {name: real_models.silero_file(f"{name}.onnx") for name in ("silero_vad", "silero_vad_16k_op15")}


@pytest.fixture(scope="module")
def speech(tmp_path_factory, vad_models) -> Path:
    """Real synthesized speech (espeak-ng) between a second of quiet on each side, cut into silero's 512-sample
    frames (plus 64 samples of context); each frame's state is the one streaming fp32 inference reaches there, and
    a frame is labelled speech when the clean signal carries energy."""
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("speech")
    voice, rate = real_models.espeak("the quick brown fox jumps over the lazy dog, edge devices run quantized models")
    t = np.arange(0, len(voice) / rate, 1 / 16000)
    voice = np.interp(t, np.arange(len(voice)) / rate, voice).astype(np.float32)
    clean = np.concatenate([np.zeros(16000, np.float32), voice, np.zeros(16000, np.float32)])
    audio = clean + np.random.default_rng(0).normal(0, 0.003, len(clean)).astype(np.float32)
    n = len(audio) // 512
    frames = audio[: n * 512].reshape(n, 512)
    inputs = np.concatenate([np.concatenate([np.zeros((1, 64), np.float32), frames[:-1, -64:]]), frames], axis=1)
    labels = (np.sqrt((clean[: n * 512].reshape(n, 512) ** 2).mean(axis=1)) > 0.01).astype(np.int64)
    session = ort.InferenceSession(str(vad_models["silero_vad_16k_op15"]), providers=["CPUExecutionProvider"])
    state, states = np.zeros((2, 1, 128), np.float32), []
    for i in range(n):
        states.append(state[:, 0])
        _, state = session.run(None, {"input": inputs[i:i + 1], "state": state, "sr": np.array(16000, np.int64)})
    path = root / "speech.npz"
    np.savez(path, input=inputs, state=np.stack(states, axis=1), sr=np.array(16000, np.int64), labels=labels)
    return path


def test_vad_metric_rejects_an_int8_model_that_misses_speech(vad_models, speech, tmp_path):
    out = tmp_path / "vad.int8.onnx"
    args = ["quantize", vad_models["silero_vad_16k_op15"], "-o", out, "--mode", "dynamic", "--data", speech,
            "--metric", f"{METRICS}:vad_frame_f1", "--speed-seconds", "0.05", "--speed-batch", "8", "--json"]
    result = run_edgedl_inprocess(*args)
    data = json.loads(result.stdout)
    acc = data["accuracy"]
    assert acc["fp32_metric"] > 85 and acc["samples"] == len(np.load(speech)["labels"])  # fp32 finds the speech
    assert acc["fp32"] is None  # one speech probability per frame is no classifier: no top-1 on the labels
    assert result.returncode == 1 and not out.exists() and acc["metric_drop"] > 1.0
    assert "accuracy gate: metric drop" in data["reasons"][0]
    assert data["speed"]["shapes"]["8"] == {"input": [8, 576], "state": [2, 8, 128], "sr": []}  # state on axis 1
    # the threshold is the user's: accepted, and the metric is what the report says it is
    result = run_edgedl_inprocess(*args, "--max-metric-drop", "100")
    assert result.returncode == 0 and out.is_file()
    assert json.loads(result.stdout)["accuracy"]["metric_drop"] == pytest.approx(acc["metric_drop"])


def test_bisect_finds_the_convs_to_keep_float_for_the_vad_metric(vad_models, speech, tmp_path):
    """The real divergence: silero-vad's dynamic int8 model misses speech on real speech (the test above), where
    its fp32 model finds it. --bisect ranks the Convs by the error each adds (debug compare on the calibration half),
    bisects on the task metric, and writes the passing set; quantize --exclude-nodes @FILE takes it as it is."""
    model, out, nodes = vad_models["silero_vad_16k_op15"], tmp_path / "vad.int8.onnx", tmp_path / "keep.txt"
    args = ["quantize", model, "--mode", "dynamic", "--data", speech, "--metric", f"{METRICS}:vad_frame_f1",
            "--speed-seconds", "0.05", "--speed-batch", "8", "--json"]
    result = run_edgedl_inprocess(*args, "-o", out, "--bisect", "--bisect-out", nodes)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    fp32_metric, (bisection,) = data["accuracy"]["fp32_metric"], data["bisection"]
    ranked = [n for g in bisection["ranked"] for n in g["nodes"]]
    conv = {n.name for n in onnx.load(str(model)).graph.node if n.op_type == "Conv"}
    assert len(ranked) >= 3 and set(ranked) <= conv
    start, *steps = bisection["steps"]
    assert not start["passed"] and start["kept_float"] == [] and start["metric"] < fp32_metric - 1
    fix = bisection["fix"]
    assert fix and len(fix) < len(ranked) and set(fix) <= set(ranked)
    last = next(s for s in reversed(steps) if s["kept_float"] == fix)
    assert last["passed"] and last["metric"] >= fp32_metric - 1
    assert all(s["latency_ms"] > 0 and s["speedup"] > 0 and s["checks"] for s in bisection["steps"])
    assert data["accepted"] and data["candidates"][0]["excluded_nodes"] == fix and out.is_file()
    written = [line for line in nodes.read_text().splitlines() if not line.startswith("#")]
    assert written == fix
    # the list as quantize reads it back: the same model, passing, those Convs left in float
    again = tmp_path / "again.onnx"
    result = run_edgedl_inprocess(*args, "-o", again, "--exclude-nodes", f"@{nodes}")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["accepted"] and data["accuracy"]["metric_drop"] <= 1.0
    assert set(fix) <= set(data["ops_left_float"]["Conv"])
    assert_one_line_error(run_edgedl_inprocess(*args, "-o", tmp_path / "x.onnx", "--exclude-nodes",
                                               f"@{tmp_path / 'missing.txt'}"), "cannot read it")
    assert not (tmp_path / "x.onnx").exists()


def test_compute_inside_if_subgraphs_is_refused_as_quantizing_nothing(vad_models, speech, tmp_path):
    out = tmp_path / "vad.onnx"
    result = run_edgedl_inprocess("quantize", vad_models["silero_vad"], "-o", out, "--mode", "dynamic", "--data",
                                  speech, "--speed-seconds", "0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and not out.exists()
    assert "dynamic quantized nothing: its compute sits inside If subgraphs" in lines[0]


def test_preprocessing_that_would_change_a_model_is_left_out(tmp_path):
    """onnx ships ImageNet architectures as IR-3 files (initializers listed as inputs); onnxruntime's graph
    optimization gives them new '*__SHAPE' inputs nothing feeds. Preprocessing notices, drops the step, and the
    quantized model takes exactly the original inputs."""
    import onnxruntime as ort

    squeezenet = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    out = tmp_path / "squeezenet.int8.onnx"
    result = run_edgedl_inprocess("quantize", squeezenet, "-o", out, "--mode", "static", "--data", "synthetic",
                                  "--max-samples", "8", "--speed-seconds", "0", "--json")
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert any("without symbolic shape inference and graph optimization" in n and "__SHAPE" in n for n in notes)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data_0"]
