"""`edgedl quantize` on the real zoo: every mode on every model, the gates, entropy calibration, layer debugging,
the never-overwrite rule and every bad-input case. Library calls where the CLI adds nothing (the mode matrix),
the real CLI (in process, and one real subprocess) everywhere else."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgedl_testing import ROOT, ZOO, run_edgedl, run_edgedl_inprocess
from edgedl.errors import EdgeDLError
from edgedl.recipe import load_recipe
from edgedl.runtime import Runner
from edgedl.runtime.signature import ShapeOptions
from edgedl.stages.quantize import GateConfig, QuantizeConfig, StaticConfig, preset, quantize

FAST = GateConfig(speed_seconds=0.05)  # the speed gate runs, briefly; speed figures come from benchmarks/


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _without_metadata(src: Path, dst: Path) -> Path:
    """The same model with no edgedl metadata: no recipe to fall back on."""
    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.save(model, str(dst))
    return dst


def _activation_scales(path: Path) -> dict[str, float]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1}


# --- every mode on every zoo model -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dynamic", "static", "fp16"])
@pytest.mark.parametrize("name", ZOO)
def test_each_mode_on_each_zoo_model(zoo, tmp_path, name, mode):
    src = zoo[name].onnx
    before = _sha(src)
    out = tmp_path / f"{name}.{mode}.onnx"
    report = quantize(src, QuantizeConfig(output=out, mode=mode, gates=FAST, progress=False))
    data = report.to_json()
    assert data["accepted"] and data["output_path"] == str(out) and out.is_file()
    assert _sha(src) == before  # the input is never touched
    assert data["accuracy"]["fp32"] == pytest.approx(zoo[name].metrics["test_accuracy"] * 100, abs=0.01)
    assert data["accuracy"]["drop_points"] <= 1.0
    assert data["accuracy"]["agreement"] >= 97.0
    assert set(data["latency_ms"]["fp32"]) == {"1", "32"} and set(data["speedup"]) == {"1", "32"}
    assert data["ops_quantized"], "nothing was converted"
    sqnr = data["accuracy"]["outputs"]["logits"]["sqnr_db"]
    assert sqnr > 20 and data["accuracy"]["outputs"]["logits"]["max_abs_diff"] > 0
    after = data["op_types"]["after"]
    with Runner(out) as runner:  # loads, keeps fp32 I/O and the exported metadata plus the quantization record
        assert runner.inputs[0].dtype == np.float32 and runner.outputs[0].dtype == np.float32
        assert runner.metadata["recipe"] == name
        assert runner.metadata["quantization"]["mode"] == mode
    if mode == "dynamic":
        assert data["size_ratio"] <= (0.35 if name != "transformer" else 0.5)
        assert any(op in after for op in ("MatMulInteger", "ConvInteger"))
    if mode == "static":
        assert after.get("QuantizeLinear", 0) > 0 and after.get("DequantizeLinear", 0) > 0
    if mode == "fp16":
        assert data["size_ratio"] < 0.6
        assert any("will not be faster" in n for n in data["notes"])  # said plainly on a CPU provider
    if name == "lstm" and mode == "dynamic":
        assert after.get("com.microsoft.DynamicQuantizeLSTM") == 1 and "LSTM" in data["ops_quantized"]
    if name == "transformer" and mode in ("dynamic", "static"):
        # the ONNX-domain Attention (opset 23) has no int8 kernel: it must stay float, and say so
        assert "Attention" in data["ops_left_float"] and "QAttention" not in json.dumps(after)
        assert any("without onnxruntime's symbolic shape inference" in n for n in data["notes"])


def _lstm_with_computed_weight(path: Path) -> Path:
    """An LSTM whose input weight is computed by Concat of two constants, the form older dynamo exports had:
    quantize_dynamic only quantizes LSTMs whose weights are initializers."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    hidden, features = 16, 8
    w_top = numpy_helper.from_array(rng.normal(0, 0.3, (1, 2 * hidden, features)).astype(np.float32), "w_top")
    w_bottom = numpy_helper.from_array(rng.normal(0, 0.3, (1, 2 * hidden, features)).astype(np.float32), "w_bottom")
    r = numpy_helper.from_array(rng.normal(0, 0.3, (1, 4 * hidden, hidden)).astype(np.float32), "r")
    nodes = [helper.make_node("Concat", ["w_top", "w_bottom"], ["w"], axis=1, name="concat_w"),
             helper.make_node("LSTM", ["x", "w", "r"], ["y", "y_h"], hidden_size=hidden, name="lstm")]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 8])],
                              [helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [1, "batch", hidden])],
                              [w_top, w_bottom, r])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_preprocessing_is_what_makes_a_computed_weight_lstm_int8(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    src = _lstm_with_computed_weight(tmp_path / "lstm.onnx")
    raw = tmp_path / "raw.onnx"
    quantize_dynamic(str(src), str(raw))
    assert "DynamicQuantizeLSTM" not in {n.op_type for n in onnx.load(str(raw)).graph.node}  # silently fp32
    # no data and no metadata: judged on synthetic inputs at the sizes given, and the report says it is weaker
    report = quantize(src, QuantizeConfig(output=tmp_path / "q.onnx", mode="dynamic", gates=FAST, progress=False,
                                          shape_options=ShapeOptions(dims={"batch": 3})))
    data = report.to_json()
    assert data["op_types"]["after"].get("com.microsoft.DynamicQuantizeLSTM") == 1
    assert data["ops_quantized"] == {"LSTM": 1} and data["size_ratio"] < 0.4
    assert data["accuracy"]["weak"] and any("synthetic inputs" in n and "weaker" in n for n in data["notes"])
    assert data["accuracy"]["checks"][0]["name"] == "SQNR (worst output)" and data["accuracy"]["checks"][0]["ok"]


# --- the accuracy gate -------------------------------------------------------------------------------------
def _tiny_range_calibration(tmp_path: Path, name: str) -> Path:
    """Calibration images scaled to 1 % of their range: static int8 clips every real activation."""
    recipe = load_recipe(name)
    split = recipe.split("calibration")
    path = tmp_path / "bad-calibration.npz"
    np.savez(path, **{k: v[:32] * 0.01 for k, v in split.inputs.items()})
    return path


def test_accuracy_gate_rejects_bad_calibration_and_writes_nothing(zoo, tmp_path):
    out = tmp_path / "cnn.int8.onnx"
    out.write_bytes(b"previous result")  # an older file at OUT survives a rejected run untouched
    bad = _tiny_range_calibration(tmp_path, "cnn")
    result = run_edgedl_inprocess("quantize", zoo["cnn"].onnx, "-o", out, "--mode", "static", "--calibration", bad,
                                  "--speed-seconds", "0", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)  # the report is still printed
    assert data["accepted"] is False and data["output_path"] is None
    assert data["accuracy"]["drop_points"] > 1.0 and data["accuracy"]["quantized"] < 50
    assert "accuracy gate" in data["reasons"][0] and "calibration-method" in data["reasons"][0]
    assert "error: accuracy gate" in result.stderr and "nothing written" in result.stderr
    assert out.read_bytes() == b"previous result"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cnn.int8")]  # no temp file left


def test_accuracy_threshold_is_the_users(zoo, tmp_path):
    bad = _tiny_range_calibration(tmp_path, "mlp")
    out = tmp_path / "mlp.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out, "--mode", "static", "--calibration", bad,
                                  "--max-accuracy-drop", "100", "--speed-seconds", "0", "--json")
    assert result.returncode == 0 and out.is_file()
    assert json.loads(result.stdout)["accuracy"]["drop_points"] > 1.0


def test_no_accuracy_gate_measures_but_does_not_enforce(zoo, tmp_path):
    bad = _tiny_range_calibration(tmp_path, "mlp")
    out = tmp_path / "m.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out, "--mode", "static", "--calibration", bad,
                                  "--no-accuracy-gate", "--speed-seconds", "0", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and out.is_file() and data["accuracy"]["drop_points"] > 1.0
    assert any("not enforced" in n for n in data["notes"])


def test_human_report_when_rejected(zoo, tmp_path):
    bad = _tiny_range_calibration(tmp_path, "mlp")
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", tmp_path / "m.onnx", "--mode", "static",
                                  "--calibration", bad, "--speed-seconds", "0")
    assert result.returncode == 1
    assert "REJECTED" in result.stdout and "rejected: accuracy gate" in result.stdout
    assert "ops before: Gemm×3, Relu×2" in result.stdout
    assert not (tmp_path / "m.onnx").exists()


# --- calibration -------------------------------------------------------------------------------------------
def test_entropy_calibration_really_differs_from_minmax(zoo, tmp_path):
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        out = tmp_path / f"{method}.onnx"
        report = quantize(zoo["cnn"].onnx, QuantizeConfig(output=out, mode="static", progress=False,
                                                          static=StaticConfig(calibration_method=method),
                                                          gates=GateConfig(speed_seconds=0)))
        assert report.accepted
        scales[method] = _activation_scales(out)
    shared = set(scales["minmax"]) & set(scales["entropy"])
    assert len(shared) >= 3
    differ = [t for t in shared if not np.isclose(scales["minmax"][t], scales["entropy"][t], rtol=1e-3)]
    # KL-optimal thresholds clip the long tails of the hidden ReLU activations: smaller scales there
    assert len(differ) >= 2, (scales["minmax"], scales["entropy"])
    assert all(scales["entropy"][t] < scales["minmax"][t] for t in differ)
    assert scales["percentile"] != scales["minmax"]


def test_calibration_and_eval_npz_for_a_model_without_recipe(zoo, tmp_path):
    bare = _without_metadata(zoo["mlp"].onnx, tmp_path / "bare.onnx")
    recipe = load_recipe("mlp")
    cal, test = recipe.split("calibration"), recipe.split("test")
    np.savez(tmp_path / "cal.npz", **cal.inputs)
    np.savez(tmp_path / "eval.npz", **test.inputs, labels=test.labels)
    out = tmp_path / "bare.int8.onnx"
    result = run_edgedl_inprocess("quantize", bare, "-o", out, "--mode", "static", "--calibration",
                                  tmp_path / "cal.npz", "--eval", tmp_path / "eval.npz", "--speed-seconds", "0.05",
                                  "--calibration-samples", "64", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["data"]["calibration"]["samples"] == 64 and data["data"]["evaluation"]["samples"] == 360
    assert data["accuracy"]["fp32"] == pytest.approx(zoo["mlp"].metrics["test_accuracy"] * 100, abs=0.01)
    # without data the gate judges SQNR against fp32 on synthetic inputs, and the report says that is weaker
    out2 = tmp_path / "bare.dyn.onnx"
    result = run_edgedl_inprocess("quantize", bare, "-o", out2, "--mode", "dynamic", "--speed-seconds", "0", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["accuracy"]["fp32"] is None and data["accuracy"]["weak"] and data["data"]["evaluation"]["kind"] == "synthetic"
    assert [c["name"] for c in data["accuracy"]["checks"]] == ["SQNR (worst output)"]
    assert any("weaker check" in n for n in data["notes"])
    # on real unlabelled data a classifier is judged by top-1 agreement with fp32
    np.savez(tmp_path / "unlabelled.npz", **test.inputs)
    result = run_edgedl_inprocess("quantize", bare, "-o", out2, "--mode", "dynamic", "--data",
                                  tmp_path / "unlabelled.npz", "--speed-seconds", "0", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and not data["accuracy"]["weak"]
    assert [c["name"] for c in data["accuracy"]["checks"]] == ["top-1 agreement"] and data["accuracy"]["agreement"] > 98


FEED = """
import numpy as np

def batches():
    rng = np.random.default_rng(0)
    for _ in range(4):
        yield {"x": rng.normal(size=(8, 4)).astype(np.float32), "y": rng.normal(size=(8, 6)).astype(np.float32)}
"""


def test_a_class_export_needs_no_recipe(tmp_path):
    """A path/to/file.py:Class export names its class as 'recipe' but declares no data: quantize must not look
    for a recipe 'TwoInTwoOut'; it judges on synthetic inputs (weaker, said so) or on the user's own batches."""
    model = tmp_path / "two.onnx"
    run_edgedl("export", f"{ROOT / 'tests/fixtures/user_models.py'}:TwoInTwoOut", "--input", "x=3x4", "--input",
               "y=3x6", "--dynamic", "x=0:batch", "--dynamic", "y=0:batch", "-o", model)
    out = tmp_path / "two.int8.onnx"
    result = run_edgedl_inprocess("quantize", model, "-o", out, "--mode", "dynamic", "--speed-seconds", "0.05",
                                  "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["accuracy"]["weak"] and data["data"]["evaluation"]["kind"] == "synthetic" and out.is_file()
    assert len(data["accuracy"]["outputs"]) == 2 and all(o["sqnr_db"] > 20 for o in data["accuracy"]["outputs"].values())
    feed = tmp_path / "feed.py"
    feed.write_text(FEED)
    result = run_edgedl_inprocess("quantize", model, "-o", out, "--mode", "static", "--data", f"{feed}:batches",
                                  "--min-cosine", "0.99", "--speed-seconds", "0", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert not data["accuracy"]["weak"] and data["data"]["evaluation"]["kind"] == "python"
    assert data["data"]["calibration"]["samples"] == data["data"]["evaluation"]["samples"] == 16  # split in halves
    names = [c["name"] for c in data["accuracy"]["checks"]]
    assert names == ["cosine (worst output)"] and data["accuracy"]["checks"][0]["ok"]


# --- auto mode and the speed gate --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_auto_picks_the_fastest_accurate_candidate_or_keeps_fp32(zoo, tmp_path, name):
    out = tmp_path / "auto.onnx"
    result = run_edgedl_inprocess("quantize", zoo[name].onnx, "-o", out, "--speed-seconds", "0.3", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    modes = [c["mode"] for c in data["candidates"]]
    assert modes == ["dynamic", "static"]  # CPU target: fp16 is never a candidate
    eligible = [c for c in data["candidates"] if c["accuracy_ok"] and c["speedup"]["32"] >= 1.05]
    if eligible:
        best = max(eligible, key=lambda c: c["speedup"]["32"])
        assert data["mode"] == best["mode"] and data["speedup"]["32"] >= 1.05
        assert data["model_path"] == data["output_path"] == str(out)
        with Runner(out) as runner:
            assert runner.metadata["quantization"]["mode"] == data["mode"]
    else:  # the fp32 model is not copied to a path that names a quantized one: the input is the model to use
        assert data["mode"] == "fp32" and any("keeping fp32" in n for n in data["notes"])
        assert not out.exists() and data["output_path"] is None and data["model_path"] == str(zoo[name].onnx)
    assert data["mode"] != "fp16"


def test_auto_that_keeps_fp32_writes_nothing_and_says_which_model_to_use(zoo, tmp_path):
    """An unreachable speed-up makes auto keep fp32 whatever the machine: exit 0, nothing at OUT, the input named."""
    out = tmp_path / "mlp.int8.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out, "--min-speedup", "1000",
                                  "--speed-seconds", "0.1")
    assert result.returncode == 0, result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
    assert f"mode auto -> fp32, accepted (kept {zoo['mlp'].onnx}, nothing written)" in " ".join(result.stdout.split())


def test_require_speedup_rejects_a_model_that_is_not_fast_enough(zoo, tmp_path):
    """No timing assumption: a 1000x threshold cannot be met, so --require-speedup must reject and write nothing."""
    out = tmp_path / "q.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out, "--mode", "dynamic", "--require-speedup",
                                  "--min-speedup", "1000", "--speed-seconds", "0.1", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 1 and data["accepted"] is False and not out.exists()
    assert data["accuracy"]["drop_points"] <= 1.0  # rejected for speed alone
    assert "--require-speedup" in result.stderr and "need >= 1000x" in result.stderr
    # auto with the same threshold keeps fp32, and --require-speedup turns that into a failure
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out, "--require-speedup", "--min-speedup",
                                  "1000", "--speed-seconds", "0.1", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 1 and data["mode"] == "fp32" and not out.exists()


def test_gpu_target_that_is_not_here_is_an_error(zoo, tmp_path):
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", tmp_path / "x.onnx", "--target-provider", "cuda")
    assert result.returncode == 1 and "cuda is not available" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


# --- layer debugging moved: debug compare (test_debug_compare.py), --bisect (test_quantize_real.py) --------
@pytest.mark.parametrize("flags, says", [(["--debug-layers"], "edgedl debug compare"),
                                         (["--fallback-worst", "2"], "--bisect keeps in float")])
def test_removed_layer_debugging_flags_say_where_their_job_went(zoo, tmp_path, flags, says):
    out = tmp_path / "t.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out, "--mode", "static", *flags)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and f"{flags[0]} was replaced" in lines[0] and says in lines[0]
    assert not out.exists()


# --- presets and options -----------------------------------------------------------------------------------
def test_presets_are_named_typed_configs(tmp_path):
    arm = preset("arm64", tmp_path / "a.onnx")
    assert (arm.static.activation_type, arm.static.weight_type, arm.preset) == ("int8", "int8", "arm64")
    vnni = QuantizeConfig.x86_vnni(tmp_path / "v.onnx")
    assert (vnni.static.activation_type, vnni.static.reduce_range) == ("uint8", False)
    assert QuantizeConfig.x86_avx2(tmp_path / "v.onnx").static.reduce_range is True
    assert QuantizeConfig.jetson(tmp_path / "j.onnx").static.activation_symmetric is True
    with pytest.raises(EdgeDLError, match="did you mean 'arm64'"):
        preset("arm46", tmp_path / "a.onnx")


@pytest.mark.parametrize("machine,flags,reduce", [
    ("x86_64", ("avx2",), True),  # VPMADDUBSW: 16-bit sums saturate with full 8-bit weights
    ("x86_64", ("avx2", "avx512f", "avx512bw"), True),  # AVX-512 without VNNI: the same instruction
    ("x86_64", ("avx2", "avx512_vnni"), False),
    ("x86_64", ("avx2", "avx_vnni"), False),
    ("aarch64", ("asimd",), False),
    ("aarch64", ("asimd", "asimddp"), False),
])
def test_the_default_weight_range_follows_the_cpu(machine, flags, reduce):
    from edgedl.stages.machine import CpuReading
    from edgedl.stages.quantize.config import default_reduce_range, weight_range_note

    cpu = CpuReading(machine, "test cpu", flags, "test")
    assert default_reduce_range(cpu) is reduce
    chosen = StaticConfig(reduce_range=reduce)
    assert ", the default here" in weight_range_note(chosen, cpu=cpu)
    assert ("7-bit" in weight_range_note(chosen, cpu=cpu)) is reduce
    other = weight_range_note(StaticConfig(reduce_range=not reduce), "x86-avx2" if not reduce else None, cpu=cpu)
    assert ", the default here" not in other and "set by" in other
    if reduce:  # full 8-bit where it saturates: the report warns that accuracy measured here can read low
        assert "can read lower" in other


def test_a_gpu_target_defaults_to_full_range_weights_whatever_this_cpu(tmp_path):
    """The host's CPU does not decide the weights of a model that a GPU calibrates, judges and runs."""
    from edgedl.stages.machine import CpuReading
    from edgedl.stages.quantize.config import default_reduce_range, weight_range_note

    avx2 = CpuReading("x86_64", "test cpu", ("avx2",), "test")
    assert default_reduce_range(avx2) is True and default_reduce_range(avx2, "cpu") is True
    for provider in ("cuda", "TensorrtExecutionProvider", " CUDA "):
        assert default_reduce_range(avx2, provider) is False
        note = weight_range_note(StaticConfig(reduce_range=False), cpu=avx2, target_provider=provider)
        assert note.startswith("static int8: full 8-bit weights, the default here") and "is a GPU" in note
        note = weight_range_note(StaticConfig(reduce_range=True), "x86-avx2", cpu=avx2, target_provider=provider)
        assert "set by preset x86-avx2; full 8-bit is the default here" in note
    gates = GateConfig(target_provider="cuda")
    assert QuantizeConfig(tmp_path / "g.onnx", gates=gates).static.reduce_range is False
    assert QuantizeConfig(tmp_path / "g.onnx", gates=gates,
                          static=StaticConfig(reduce_range=True)).static.reduce_range is True  # a choice is kept
    assert preset("x86-avx2", tmp_path / "a.onnx", gates=gates).static.reduce_range is True  # a preset's too


def test_the_default_weight_range_is_this_cpus_and_the_report_says_why(zoo, tmp_path):
    from edgedl.stages.machine import this_cpu

    here = this_cpu().saturates_full_range_weights  # x86 without VNNI: 7-bit weights
    assert QuantizeConfig(tmp_path / "d.onnx").static.reduce_range is here
    assert QuantizeConfig(tmp_path / "d.onnx", static=StaticConfig(reduce_range=not here)).static.reduce_range is (
        not here)  # a choice given is kept
    assert preset("x86-vnni", tmp_path / "v.onnx").static.reduce_range is False  # a preset's too
    out = tmp_path / "mlp.static.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out, "--mode", "static", "--speed-seconds", "0",
                                  "--no-progress", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["config"]["static"]["reduce_range"] is here  # saved with the model's record, as a plain bool
    notes = [n for n in data["notes"] if n.startswith("static int8: ")]
    assert len(notes) == 1 and ", the default here" in notes[0] and ("7-bit" in notes[0]) is here
    with Runner(out) as runner:
        assert runner.metadata["quantization"]["config"]["static"]["reduce_range"] is here
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", tmp_path / "full.onnx", "--mode", "static",
                                  "--full-range", "--speed-seconds", "0", "--no-progress", "--json")
    data = json.loads(result.stdout)
    assert data["config"]["static"]["reduce_range"] is False
    assert any(n.startswith("static int8: full 8-bit weights") for n in data["notes"])


def test_preset_on_the_cli_sets_int8_activations(zoo, tmp_path):
    out = tmp_path / "arm.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out, "--mode", "static", "--preset", "arm64",
                                  "--per-tensor", "--speed-seconds", "0", "--json")
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert json.loads(result.stdout)["config"]["static"]["per_channel"] is False  # CLI option beats the preset


def test_qoperator_format_and_fp16_io(zoo, tmp_path):
    out = tmp_path / "c.onnx"
    result = run_edgedl_inprocess("quantize", zoo["cnn"].onnx, "-o", out, "--mode", "static", "--format", "qoperator",
                                  "--speed-seconds", "0", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["op_types"]["after"].get("QLinearConv") == 2
    assert data["accuracy"]["drop_points"] <= 1.0
    out16 = tmp_path / "m16.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", out16, "--mode", "fp16", "--fp16-io",
                                  "--speed-seconds", "0", "--json")
    assert result.returncode == 0, result.stderr
    with Runner(out16) as runner:
        assert runner.inputs[0].dtype == np.float16 and runner.outputs[0].dtype == np.float16


def test_exclude_op_types_keeps_them_float(zoo, tmp_path):
    out = tmp_path / "c.onnx"
    result = run_edgedl_inprocess("quantize", zoo["cnn"].onnx, "-o", out, "--mode", "dynamic",
                                  "--exclude-op-types", "Conv", "--speed-seconds", "0", "--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["ops_left_float"]["Conv"] and "ConvInteger" not in data["op_types"]["after"]


# --- never overwrite, bad input ----------------------------------------------------------------------------
def test_never_overwrites_its_input(zoo, tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(zoo["mlp"].onnx.read_bytes())
    before = _sha(src)
    result = run_edgedl_inprocess("quantize", src, "-o", src, "--mode", "dynamic")
    assert result.returncode == 1 and "never overwrites its input" in result.stderr
    result = run_edgedl_inprocess("quantize", src, "-o", tmp_path / "." / "m.onnx", "--mode", "dynamic")
    assert result.returncode == 1 and _sha(src) == before


@pytest.mark.parametrize("case", ["not_onnx_suffix", "garbage_onnx", "missing", "already_int8", "already_fp16",
                                  "bad_mode", "bad_method", "out_not_onnx", "bisect_with_fp16", "bisect_steps_zero",
                                  "bisect_without_gate", "unknown_node", "unknown_node_in_file",
                                  "npz_missing_input", "npz_label_count", "metric_not_found",
                                  "unknown_data_source",
                                  "bad_npz", "bad_provider", "auto_without_speed"])
def test_bad_input_is_a_one_line_error(zoo, tmp_path, case):
    mlp = zoo["mlp"].onnx
    out = tmp_path / "out.onnx"
    args: list = [mlp, "-o", out, "--speed-seconds", "0.01"]
    expect = ""
    if case == "not_onnx_suffix":
        bad = tmp_path / "model.pt"
        bad.write_bytes(b"\x80\x02torch")
        args[0], expect = bad, "is not an .onnx file"
    elif case == "garbage_onnx":
        bad = tmp_path / "model.onnx"
        bad.write_text("this is not a protobuf")
        args[0], expect = bad, "is not an ONNX model"
    elif case == "missing":
        args[0], expect = tmp_path / "nope.onnx", "not found"
    elif case in ("already_int8", "already_fp16"):
        mode = "dynamic" if case == "already_int8" else "fp16"
        first = tmp_path / f"first.{mode}.onnx"
        quantize(mlp, QuantizeConfig(output=first, mode=mode, gates=GateConfig(speed_seconds=0), progress=False))
        args[0], expect = first, "already"
    elif case == "bad_mode":
        args += ["--mode", "dynamc"]
        expect = "did you mean 'dynamic'"
    elif case == "bad_method":
        args += ["--mode", "static", "--calibration-method", "kl"]
        expect = "choose one of minmax, percentile, entropy"
    elif case == "out_not_onnx":
        args[2], expect = tmp_path / "out.txt", "must be a .onnx file"
    elif case == "bisect_with_fp16":
        args += ["--mode", "fp16", "--bisect"]
        expect = "--bisect finds nodes to keep in float for int8"
    elif case == "bisect_steps_zero":
        args += ["--mode", "static", "--bisect", "--bisect-steps", "0"]
        expect = "--bisect-steps must be >= 1"
    elif case == "bisect_without_gate":
        args += ["--mode", "static", "--bisect", "--no-accuracy-gate"]
        expect = "drop --no-accuracy-gate"
    elif case == "unknown_node":
        args += ["--mode", "static", "--exclude-nodes", "node_linar"]
        expect = "did you mean 'node_linear'"
    elif case == "unknown_node_in_file":  # a list as --bisect writes it, one name mistyped
        names = tmp_path / "keep.txt"
        names.write_text("# kept in float\nnode_linar\n")
        args += ["--mode", "static", "--exclude-nodes", f"@{names}"]
        expect = "did you mean 'node_linear'"
    elif case in ("npz_missing_input", "npz_label_count", "bad_npz"):
        npz = tmp_path / "d.npz"
        if case == "npz_missing_input":
            np.savez(npz, image=np.zeros((4, 64), np.float32))
            args += ["--mode", "static", "--calibration", npz]
            expect = "no array for input(s) pixels"
        elif case == "npz_label_count":
            np.savez(npz, pixels=np.zeros((4, 64), np.float32), labels=np.zeros(3, np.int64))
            args += ["--mode", "dynamic", "--eval", npz]
            expect = "3 labels for 4 samples"
        else:
            npz.write_text("nope")
            args += ["--mode", "static", "--calibration", npz]
            expect = "not a readable .npz"
    elif case == "metric_not_found":
        args += ["--metric", f"{tmp_path / 'metrics.py'}:box_agreement"]
        expect = "metric file not found"
    elif case == "unknown_data_source":
        args += ["--data", tmp_path / "photso"]
        expect = "is no folder, file or recipe"
    elif case == "auto_without_speed":
        args[4] = "0"
        expect = "needs the speed gate"
    elif case == "bad_provider":
        args += ["--target-provider", "cudaa"]
        expect = "did you mean"
    result = run_edgedl_inprocess("quantize", *args)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expect in lines[0], lines[0]
    assert "Traceback" not in result.stderr and not out.exists()


# --- layering and the real console script ------------------------------------------------------------------
def test_quantize_modules_import_without_heavy_dependencies():
    code = ("import sys, edgedl.cli.quantize, edgedl.stages.quantize; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime.quantization', 'sklearn') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_real_console_script_end_to_end(zoo, tmp_path):
    out = tmp_path / "lstm.int8.onnx"
    proc = run_edgedl("quantize", zoo["lstm"].onnx, "-o", out, "--mode", "dynamic", "--speed-seconds", "0.1")
    assert out.is_file()
    assert "lstm.onnx: mode dynamic -> dynamic, accepted" in proc.stdout
    assert "LSTM×1" in proc.stdout.split("int8 (incl. folded into quantized ops):")[1].splitlines()[0]
    assert proc.stderr.strip() == "" or "Traceback" not in proc.stderr
