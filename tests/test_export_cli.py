"""End-to-end: train small -> export -> validate -> inspect, through the real CLI, for every zoo model;
user modules with several inputs/outputs; the dynamic-axis guard; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgedl_testing import ROOT, ZOO, run_edgedl, run_edgedl_inprocess

USER = ROOT / "tests" / "fixtures" / "user_models.py"


@pytest.mark.parametrize("name", ZOO)
def test_train_export_inspect_end_to_end(tmp_path, name):
    run_edgedl("train", name, "--out", tmp_path / "run", "--epochs", "2")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert 0.0 < metrics["test_accuracy"] <= 1.0 and config["train"]["epochs"] == 2
    assert config["data"]["sizes"] == {"train": 1257, "val": 180, "test": 360}

    out = tmp_path / f"{name}.onnx"
    proc = run_edgedl("export", name, "--checkpoint", tmp_path / "run", "-o", out, "--json")
    report = json.loads(proc.stdout)
    assert report["onnx_path"] == str(out) and report["opset"] >= 17
    assert report["size_bytes"] == out.stat().st_size
    assert report["validation"]["passed"] is True
    assert report["validation"]["max_abs_diff"] < 1e-4
    # two batch sizes, plus two sequence lengths where the model has a sequence axis
    checks = [c["sizes"] for c in report["validation"]["checks"]]
    assert {c["batch"] for c in checks} == {2, 5}
    if name in ("lstm", "transformer"):
        assert {c["seq"] for c in checks} == {8, 5}
    # one self-contained file: no external-data sidecar, loadable from bytes
    assert not list(tmp_path.glob("*.data"))
    sess = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"

    info = json.loads(run_edgedl("inspect", out, "--json").stdout)
    assert info["edgedl"]["recipe"] == name
    assert info["edgedl"]["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert info["edgedl"]["labels"] == [str(d) for d in range(10)]
    assert info["edgedl"]["preprocessing"]["scale"] == pytest.approx(1 / 16)
    assert info["edgedl"]["validation"]["passed"] is True
    assert info["inputs"][0]["shape"][0] == "batch"
    assert info["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    # the graph may hold a few scalar float constants beyond the module's parameters
    assert metrics["parameters"] <= info["parameters"] <= metrics["parameters"] + 8
    assert info["external_data"] is False


def test_export_strips_exporter_bloat_and_keeps_outputs(tmp_path, zoo):
    """onnxslim + stripping leaves no per-node stack traces; --no-simplify keeps them and is larger."""
    import onnx

    slim = zoo["transformer"].onnx
    model = onnx.load(str(slim))
    assert not any(len(n.metadata_props) for n in model.graph.node)
    assert not any(n.doc_string for n in model.graph.node)
    fat = tmp_path / "fat.onnx"
    run_edgedl("export", "transformer", "--checkpoint", zoo["transformer"].checkpoint, "-o", fat, "--no-simplify")
    assert fat.stat().st_size > slim.stat().st_size


def test_export_optimize_writes_a_validated_model(tmp_path, zoo):
    out = tmp_path / "cnn-opt.onnx"
    report = json.loads(run_edgedl("export", "cnn", "--checkpoint", zoo["cnn"].checkpoint, "-o", out,
                                   "--optimize", "--json").stdout)
    assert report["validation"]["passed"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert "edgedl.recipe" in sess.get_modelmeta().custom_metadata_map


def test_user_module_with_two_inputs_and_two_outputs(tmp_path):
    out = tmp_path / "two.onnx"
    proc = run_edgedl(
        "export", f"{USER}:TwoInTwoOut", "--input", "x=3x4", "--input", "y=3x6:float32",
        "--dynamic", "x=0:batch", "--dynamic", "y=0:batch", "--output-name", "h", "--output-name", "z",
        "--dynamic", "h=0:batch", "-o", out, "--json",
    )
    report = json.loads(proc.stdout)
    assert report["validation"]["passed"]
    assert [c["sizes"] for c in report["validation"]["checks"]] == [{"batch": 3}, {"batch": 6}]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "y"]
    assert [o.name for o in sess.get_outputs()] == ["h", "z"]
    h, z = sess.run(None, {"x": np.ones((7, 4), np.float32), "y": np.ones((7, 6), np.float32)})
    assert h.shape == (7, 3) and z.shape == (7, 2)


def test_size_one_example_is_not_specialized(tmp_path):
    """An example batch of 1 would export a static dim (PITFALLS); edgedl exports at >= 2 and checks another size."""
    out = tmp_path / "one.onnx"
    report = json.loads(run_edgedl("export", f"{USER}:TwoInTwoOut", "--input", "x=1x4", "--input", "y=1x6",
                                   "--dynamic", "x=0:batch", "--dynamic", "y=0:batch", "-o", out, "--json").stdout)
    assert report["validation"]["passed"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert isinstance(sess.get_inputs()[0].shape[0], str)
    assert sess.run(None, {"x": np.ones((9, 4), np.float32), "y": np.ones((9, 6), np.float32)})[0].shape == (9, 3)


def test_dynamic_axis_guard_names_the_lost_axis(tmp_path):
    """A model exported with a fixed batch is refused by validation against a recipe that declares it dynamic."""
    import torch

    from edgedl.recipe import Recipe, TensorSpec
    from edgedl.stages.validate import validate

    static = tmp_path / "static.onnx"
    run_edgedl("export", f"{USER}:TwoInTwoOut", "--input", "x=2x4", "--input", "y=2x6", "-o", static)
    recipe = Recipe(name="TwoInTwoOut", build=lambda: None,
                    inputs=[TensorSpec("x", ("batch", 4)), TensorSpec("y", ("batch", 6))],
                    outputs=[], dim_examples={"batch": (2, 5)})
    from edgedl.recipe import import_file

    torch.manual_seed(0)
    model = import_file(USER).TwoInTwoOut().eval()  # the same class, fresh weights
    report = validate(model, recipe, static)
    assert not report.passed and report.stage == "dynamic_axes"
    assert "'x' axis 0 (batch) was exported as fixed size 2" in report.failure


def test_value_mismatch_names_output_shape_and_difference(zoo):
    """Validation against different weights fails at the value check with the output, shape and diff named."""
    from edgedl.recipe import load_recipe
    from edgedl.stages.validate import validate

    recipe = load_recipe("mlp")
    import torch

    torch.manual_seed(123)
    report = validate(recipe.build().eval(), recipe, zoo["mlp"].onnx)
    assert not report.passed and report.stage == "values"
    assert report.failure.startswith("output 'logits' shape [2, 10] at sizes {'batch': 2}: max abs diff")


def _fails(*args) -> str:
    """One error line (after any notices, e.g. the exporter fallback's), no traceback."""
    proc = run_edgedl_inprocess(*args)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("notice: ")]
    assert len(lines) == 1 or lines[-1].startswith("Error:"), proc.stderr
    return proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "nosuch", "-o", "x.onnx"], "no recipe 'nosuch'"),
        (["export", "cnnn", "-o", "x.onnx"], "did you mean 'cnn'"),
        (["export", "tests/fixtures/missing.py:Net", "--input", "x=2x4", "-o", "x.onnx"], "model file not found"),
        (["export", "tests/fixtures/user_models.py:NoSuchClass", "--input", "x=2x4", "-o", "x.onnx"], "has no class 'NoSuchClass'"),
        (["export", "tests/fixtures/user_models.py:TwoInTwoOut", "--input", "x=2by4", "-o", "x.onnx"], "malformed --input 'x=2by4'"),
        (["export", "tests/fixtures/user_models.py:TwoInTwoOut", "--input", "x=2x4:float99", "-o", "x.onnx"], "unknown dtype 'float99'"),
        (["export", "tests/fixtures/user_models.py:TwoInTwoOut", "--input", "x=2x4", "--dynamic", "x=zero:batch", "-o", "x.onnx"], "malformed --dynamic"),
        (["export", "tests/fixtures/user_models.py:TwoInTwoOut", "-o", "x.onnx"], "has no recipe: give --input"),
        (["export", "tests/fixtures/user_models.py:TwoInTwoOut", "--input", "x=2x4", "--input", "y=3x6", "--dynamic",
          "x=0:batch", "--dynamic", "y=0:batch", "-o", "x.onnx"], "sizes disagree on dynamic dim 'batch'"),
        (["export", "tests/fixtures/user_models.py:DataDependent", "--input", "x=2x4", "--dynamic", "x=0:batch", "-o", "x.onnx"], "torch could not export DataDependent"),
        (["export", "cnn", "-o", "x.onnx", "--opset", "9"], "opset 9 is out of range"),
        (["export", "cnn", "-o", "x.txt"], "must end in .onnx"),
        (["export", "cnn", "--checkpoint", "nothere", "-o", "x.onnx"], "checkpoint not found"),
        (["inspect", "pyproject.toml"], "is not an ONNX model"),
        (["inspect", "nothere.onnx"], "file not found"),
        (["train", "nosuch", "--out", "x"], "no recipe 'nosuch'"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    err = _fails(*args)
    assert message in err
    assert not (ROOT / "x.onnx").exists()


def test_export_refuses_to_overwrite_the_checkpoint(tmp_path, zoo):
    ckpt = tmp_path / "model.onnx"
    ckpt.write_bytes((zoo["mlp"].checkpoint / "model.safetensors").read_bytes())
    before = ckpt.read_bytes()
    err = _fails("export", "mlp", "--checkpoint", ckpt, "-o", ckpt)
    assert "would overwrite the checkpoint" in err
    assert ckpt.read_bytes() == before


def test_wrong_checkpoint_for_recipe(tmp_path, zoo):
    out = tmp_path / "x.onnx"
    err = _fails("export", "cnn", "--checkpoint", zoo["mlp"].checkpoint, "-o", out)
    assert "does not fit recipe 'cnn'" in err and not out.exists()


def test_failed_export_keeps_the_previous_file(tmp_path):
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"previous good model")
    _fails("export", f"{USER}:DataDependent", "--input", "x=2x4", "--dynamic", "x=0:batch", "-o", out)
    assert out.read_bytes() == b"previous good model"
    assert list(tmp_path.iterdir()) == [out]  # no temp files left behind


def test_debug_shows_traceback():
    proc = run_edgedl("export", "tests/fixtures/user_models.py:NoSuchClass", "--input", "x=2x4", "-o", "x.onnx",
                      "--debug", check=False, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
