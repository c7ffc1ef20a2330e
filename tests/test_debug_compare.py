"""`edgedl debug compare` on planted faults: one weight tensor of the zoo CNN and of the transformer's attention
scaled, one quantization scale of an int8 model and one weight of an fp16 model corrupted, one operator of a user
module changed. Each time the tool must name the planted node and the PyTorch source line it came from - and find
nothing in the same comparison without the fault. Then the same compare between x86 onnxruntime and aarch64
onnxruntime (an emulated arm64 Python, and a device over SSH), the outputs a person reads, and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgedl_testing import ROOT, assert_one_line_error, run_edgedl_inprocess

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import arm64_sysroot  # noqa: E402
import loopback_sshd  # noqa: E402

PLANTED = ROOT / "tests" / "fixtures" / "planted.py"
FAST = ("--samples", "16", "--quiet")


def line_of(path: Path, text: str) -> str:
    """'file.py:N' of the line holding ``text``: where the source mapping must point."""
    number = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)
    return f"{path.name}:{number}"


def scaled(src: Path, dst: Path, name: str, factor: float) -> Path:
    """A copy of ``src`` with the first output channel (row) of initializer ``name`` multiplied by ``factor``."""
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if i.name == name)
    value = numpy_helper.to_array(init).copy()
    if value.ndim:
        value.reshape(value.shape[0], -1)[0] *= factor
    else:
        value = value * factor
    init.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype), name))
    onnx.save(model, str(dst))
    return dst


def consumer(path: Path, tensor: str) -> str:
    return next(n.name for n in onnx.load(str(path)).graph.node if tensor in n.input)


def compare(*args) -> dict:
    result = run_edgedl_inprocess("debug", "compare", *FAST, *map(str, args), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def no_divergence(report: dict) -> None:
    assert report["first_divergence"] is None and report["divergent"] == 0, report["first_divergence"]
    assert report["compared"] >= 4


# --- planted faults ----------------------------------------------------------------------------------------------
def test_a_scaled_conv_weight_of_the_cnn_is_named_with_its_source_line(zoo, tmp_path):
    onnx_path = zoo["cnn"].onnx
    bad = scaled(onnx_path, tmp_path / "cnn.bad.onnx", "features.3.weight", 3.0)
    planted = consumer(bad, "features.3.weight")
    no_divergence(compare("torch", onnx_path))  # the export is faithful on the recipe's real digits
    report = compare("torch", bad)
    first = report["first_divergence"]
    assert first["node"] == planted and first["op_type"] == "Conv" and first["module"] == "features.3"
    assert first["source"].endswith(line_of(ROOT / "models" / "cnn.py", "self.classifier(self.features(image))"))
    assert first["sqnr_db"] < 20 and first["added"] > 0.05 and first["matched_by"] == "source"
    assert len(first["worst_samples"]) == 5 and first["worst_samples"][0]["relative"] >= first["relative"]
    # worst: ranked by SQNR, lowest first; the planted Conv is the worst tensor, and adds the most error
    worst = report["worst"]
    sqnr = [float(w["sqnr_db"]) for w in worst]
    assert worst[0]["node"] == planted and sqnr == sorted(sqnr)
    assert max(report["layers"], key=lambda x: x["added"])["node"] == planted
    # everything after it diverges too, everything before it is exact to float rounding
    before = [x for x in report["layers"] if x["index"] < first["index"]]
    assert before and all(x["sqnr_db"] == "inf" or x["sqnr_db"] > 100 for x in before)
    assert report["outputs"][0]["tensor"] == "logits" and report["outputs"][0]["divergent"]
    assert report["data"]["source"].startswith("recipe cnn") and report["samples"] == 16


def test_a_scaled_attention_weight_of_the_transformer_is_named(zoo, tmp_path):
    onnx_path = zoo["transformer"].onnx
    from edgedl.stages.provenance import read

    sources = read(onnx.load(str(onnx_path)))
    model = onnx.load(str(onnx_path))
    inits = {i.name for i in model.graph.initializer}
    attention = next(n for n in model.graph.node if n.op_type == "MatMul" and sources.get(n.name)
                     and sources[n.name].module == "encoder.layers.1.self_attn" and set(n.input) & inits)
    weight = next(i for i in attention.input if i in inits)
    bad = scaled(onnx_path, tmp_path / "transformer.bad.onnx", weight, 3.0)
    line = line_of(ROOT / "models" / "transformer.py", "self.encoder(x)")
    # against PyTorch: the attention module's output is the first tensor both sides have, and its group holds
    # the planted MatMul
    first = compare("torch", bad)["first_divergence"]
    assert first["module"] == "encoder.layers.1.self_attn" and first["source"].endswith(line)
    assert attention.name in first["nodes"]
    # against the faithful ONNX model: every tensor compares, so the planted node itself comes first
    first = compare(onnx_path, bad)["first_divergence"]
    assert first["node"] == attention.name and first["op_type"] == "MatMul"
    assert first["module"] == "encoder.layers.1.self_attn" and first["source"].endswith(line)


@pytest.fixture(scope="module")
def cnn_int8(zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "cnn.int8.onnx"
    result = run_edgedl_inprocess("quantize", zoo["cnn"].onnx, "-o", out, "--mode", "static", "--speed-seconds", "0",
                                  "--no-progress")
    assert result.returncode == 0, result.stderr
    return out


def test_a_corrupted_quantization_scale_is_named_through_the_qdq_nodes(zoo, cnn_int8, tmp_path):
    fp32 = zoo["cnn"].onnx
    report = compare(fp32, cnn_int8)
    no_divergence(report)  # int8 noise stays above the int8 tolerance
    assert report["tolerance"]["precision"] == "int8" and report["tolerance"]["min_sqnr_db"] == 20
    assert all(w["sqnr_db"] > 30 for w in report["weights"])
    bad = scaled(cnn_int8, tmp_path / "cnn.int8.bad.onnx", "features.3.weight_scale", 8.0)
    conv = consumer(bad, "features.3.weight_DequantizeLinear_Output")
    report = compare(fp32, bad)
    first = report["first_divergence"]
    # the float model's tensor (the Relu the quantizer folded into the Conv) is computed by the planted Conv
    assert first["candidate_node"] == conv and first["candidate_op_type"] == "Conv" and conv in first["nodes"]
    assert first["source"].endswith(line_of(ROOT / "models" / "cnn.py", "self.classifier(self.features(image))"))
    assert report["weights"][0]["weight"] == "features.3.weight" and report["weights"][0]["node"] == conv
    assert report["weights"][0]["sqnr_db"] < 10
    # the QOperator form (QLinearConv, uint8 tensors read through their scales) lines up the same way
    qop = tmp_path / "cnn.qop.onnx"
    result = run_edgedl_inprocess("quantize", fp32, "-o", qop, "--mode", "static", "--format", "qoperator",
                                  "--speed-seconds", "0", "--no-progress")
    assert result.returncode == 0, result.stderr
    report = compare(fp32, qop)
    no_divergence(report)
    assert {x["candidate_op_type"] for x in report["layers"]} >= {"QLinearConv", "QGemm"}


def test_an_fp16_model_is_judged_at_the_fp16_tolerance_and_a_scaled_fp16_weight_is_named(zoo, tmp_path):
    fp32, fp16 = zoo["cnn"].onnx, tmp_path / "cnn.fp16.onnx"
    result = run_edgedl_inprocess("quantize", fp32, "-o", fp16, "--mode", "fp16", "--speed-seconds", "0",
                                  "--no-progress")
    assert result.returncode == 0, result.stderr
    report = compare(fp32, fp16)
    no_divergence(report)
    assert report["tolerance"]["precision"] == "fp16" and report["tolerance"]["min_sqnr_db"] == 30
    assert all(float(x["sqnr_db"]) > 40 for x in report["layers"])  # fp16 rounding, not a fault
    weight = next(i.name for i in onnx.load(str(fp16)).graph.initializer if i.name.startswith("features.3.weight"))
    bad = scaled(fp16, tmp_path / "cnn.fp16.bad.onnx", weight, 3.0)
    first = compare(fp32, bad)["first_divergence"]
    assert first["node"] == consumer(bad, weight) and first["op_type"] == "Conv" and first["module"] == "features.3"
    assert first["source"].endswith(line_of(ROOT / "models" / "cnn.py", "self.classifier(self.features(image))"))


@pytest.fixture(scope="module")
def planted_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("planted") / "planted.onnx"
    result = run_edgedl_inprocess("export", f"{PLANTED}:Planted", "--input", "image=2x1x8x8", "--dynamic",
                                  "image=0:batch", "--output-name", "logits", "--dynamic", "logits=0:batch", "-o", out)
    assert result.returncode == 0, result.stderr
    return out


def test_an_operator_changed_in_a_user_module_is_named_at_its_line(planted_onnx):
    module = f"{PLANTED}:Planted"
    no_divergence(compare(module, planted_onnx, "--data", "synthetic"))
    report = compare(module, planted_onnx, "--data", "synthetic", "--torch-init-args", '{"swap": true}')
    first = report["first_divergence"]
    assert first["op_type"] == "Tanh" and first["module"] == ""
    assert first["source"].endswith(line_of(PLANTED, "# the planted operator"))
    conv = next(x for x in report["layers"] if x["op_type"] == "Conv")  # the line before: exact
    assert not conv["divergent"] and conv["module"] == "conv"


# --- what a person reads -----------------------------------------------------------------------------------------
def test_table_and_reports(zoo, tmp_path):
    bad = scaled(zoo["cnn"].onnx, tmp_path / "cnn.bad.onnx", "features.3.weight", 3.0)
    planted = consumer(bad, "features.3.weight")
    html, png = tmp_path / "compare.html", tmp_path / "compare.png"
    result = run_edgedl_inprocess("debug", "compare", "torch", bad, *FAST, "--report", html)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"first divergence: {planted} (Conv)" in text and "features.3 at " in text and "cnn.py:" in text
    assert "worst tensors" in text and "output logits" in text and "samples that diverge most" in text
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script" not in page
    assert f"first divergence: {planted}" in page and "tolerance 60 dB" in page
    result = run_edgedl_inprocess("debug", "compare", "torch", bad, *FAST, "--report", png, "--check")
    assert result.returncode == 1 and f"the first at {planted}" in result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- x86 onnxruntime vs aarch64 onnxruntime ---------------------------------------------------------------------
@pytest.mark.skipif(arm64_sysroot.available() is not None, reason=str(arm64_sysroot.available()))
def test_x86_against_an_emulated_aarch64_onnxruntime(cnn_int8):
    """The candidate runs in an arm64 Python under qemu-user with the aarch64 onnxruntime wheel (numpy and
    onnxruntime only: the worker is one standard-library file)."""
    root = arm64_sysroot.sysroot(ROOT / "build" / "arm64")
    site = arm64_sysroot.runtime_site(ROOT / "build" / "bench-arm64")
    python = f"env PYTHONPATH={site} PYTHONNOUSERSITE=1 {' '.join(arm64_sysroot.python_cmd(root))}"
    report = compare(cnn_int8, cnn_int8, "--candidate-python", python, "--samples", "8")
    env = report["candidate"]["environment"]
    assert env["machine"] == "aarch64" and env["onnxruntime"] == "1.32.0"
    no_divergence(report)
    assert report["samples"] == 8 and report["tolerance"]["precision"] == "int8"


@pytest.mark.skipif(loopback_sshd.available() is not None, reason=str(loopback_sshd.available()))
def test_a_device_over_ssh_runs_the_candidate(zoo, tmp_path, monkeypatch):
    """A loopback sshd stands in for the device: the runtime bench --remote installs (its venv kept under build/
    between runs, as on a real device), the worker copied next to the models, the tensors read back over the same
    connection; a planted fault in the device's model is named."""
    monkeypatch.setenv("EDGEDL_CACHE", str(ROOT / "build" / "cache"))
    device = ROOT / "build" / "debug-compare-device"
    server = loopback_sshd.start(tmp_path / "sshd")
    try:
        bad = scaled(zoo["cnn"].onnx, tmp_path / "cnn.bad.onnx", "features.3.weight", 3.0)
        conn = [*server.ssh_args(), "--remote-dir", device]
        report = compare(zoo["cnn"].onnx, bad, *conn, "--samples", "4")
        env = report["candidate"]["environment"]
        assert env["device"] == server.address and env["machine"] == "x86_64"
        assert report["first_divergence"]["node"] == consumer(bad, "features.3.weight")
        assert report["samples"] == 4 and not list(device.glob("debug-*"))  # the worker's folder is gone again
    finally:
        loopback_sshd.stop(server)


# --- bad input ---------------------------------------------------------------------------------------------------
def test_bad_input_is_a_one_line_error(zoo, tmp_path):
    cnn = zoo["cnn"].onnx
    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(cnn))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    cases = [
        (["cnn", "cnn"], "one side must be an .onnx model"),
        ([tmp_path / "missing.onnx", cnn], "model file not found"),
        (["torch", bare, "--data", "synthetic"], "carries no record of the PyTorch module"),
        ([cnn, cnn, "--samples", "0"], "--samples"),
        ([cnn, cnn, "--candidate-provider", "cdua"], "did you mean"),
        ([cnn, cnn, "--candidate-python", "/nonexistent/python3"], "cannot run /nonexistent/python3"),
        ([cnn, cnn, "--identity", "key"], "add --remote"),
        ([cnn, "torch", "--remote", "pi@host"], "only an .onnx model runs on a device"),
        ([cnn, cnn, "--report", tmp_path], "is a directory"),
        ([cnn, cnn, "--report", tmp_path / "r.txt"], "use a .html"),
    ]
    for args, says in cases:
        assert_one_line_error(run_edgedl_inprocess("debug", "compare", *args, "--quiet"), says)
    assert not np.any([p.name.startswith("r.") for p in tmp_path.iterdir()])
