"""`bench --baseline torch` for any exported module: export records how to build the module again (file.py:Class,
constructor arguments, checkpoint path and sha256, or a TorchScript file) and bench builds it from there, or
from --torch-model/--torch-checkpoint, feeding torch exactly what onnxruntime gets. Real exports, real workers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedl_testing import ROOT, run_edgedl, run_edgedl_inprocess

USER = ROOT / "tests" / "fixtures" / "user_models.py"
FAST = ("-n", "20", "--warmup", "2", "--no-placement")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three user exports: a class with constructor arguments and a torch.save'd state_dict, a stateful model with
    a scalar input and its batch on axis 1, and a TorchScript file."""
    import torch

    from edgedl.recipe import import_file

    tmp = tmp_path_factory.mktemp("baseline")
    user = import_file(USER)
    torch.manual_seed(3)
    state = user.Sized(width=6, classes=2).state_dict()
    torch.save(state, str(tmp / "sized.pt"))
    torch.jit.script(user.Recurrent().eval()).save(str(tmp / "recurrent.jit"))
    recurrent_inputs = ["--input", "audio=2x32", "--input", "state=2x2x8", "--input", "sr=scalar:int64:16000..16000",
                        "--dynamic", "audio=0:batch", "--dynamic", "state=1:batch", "--output-name", "prob",
                        "--output-name", "new_state", "--dynamic", "prob=0:batch", "--dynamic", "new_state=1:batch"]
    exports = {
        "sized": [f"{USER}:Sized", "--input", "x=2x4", "--dynamic", "x=0:batch", "--init-args",
                  '{"width": 6, "classes": 2}', "--checkpoint", tmp / "sized.pt"],
        "recurrent": [f"{USER}:Recurrent", *recurrent_inputs],
        "scripted": [tmp / "recurrent.jit", *recurrent_inputs],
    }
    for name, args in exports.items():
        proc = run_edgedl_inprocess("export", *map(str, args), "-o", str(tmp / f"{name}.onnx"))
        assert proc.returncode == 0, proc.stderr
    return tmp


def test_the_recorded_module_is_the_exported_one(exported):
    """What bench builds from the metadata computes what the ONNX file computes, on the same feeds."""
    import torch

    from edgedl.runtime import Runner
    from edgedl.runtime.signature import Signature
    from edgedl.stages.torch_source import source_for

    for name in ("sized", "recurrent", "scripted"):
        with Runner(exported / f"{name}.onnx") as runner:
            source = source_for(None, None, runner.metadata)
            feeds = Signature.of_runner(runner).feeds(batch=3, seed=5)
            onnx_out = list(runner.run(feeds).values())
        model = source.build()
        order = source.input_names() or list(feeds)
        with torch.no_grad():
            out = model(*[torch.from_numpy(feeds[n]) for n in order])
        for got, want in zip(onnx_out, out if isinstance(out, tuple) else (out,)):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-5, err_msg=name)
    assert source.kind == "torchscript"


def test_bench_baseline_for_modules_torchscript_and_state_inputs(exported):
    models = [exported / f"{n}.onnx" for n in ("sized", "recurrent", "scripted")]
    report = json.loads(run_edgedl("bench", *models, "--baseline", "torch", "-b", "3", *FAST, "--json").stdout)
    rows = report["results"]
    assert [(r["model_name"], r["engine"]) for r in rows] == [
        (n, e) for n in ("sized", "recurrent", "scripted") for e in ("onnxruntime", "torch")]
    for ort_row, torch_row in zip(rows[::2], rows[1::2]):
        assert ort_row["inputs_digest"] == torch_row["inputs_digest"]  # the very same inputs
        assert torch_row["batch"] == 3 and torch_row["sizes"] == ort_row["sizes"] == {"batch": 3}
        assert torch_row["latency_ms"]["count"] == 20 and torch_row["latency_ms"]["p50_ms"] > 0
    sized, scripted = rows[1]["torch_model"], rows[5]["torch_model"]
    assert sized["kind"] == "module" and sized["recipe"] == f"{USER}:Sized"
    assert sized["checkpoint"] == str(exported / "sized.pt")
    assert scripted["kind"] == "torchscript" and scripted["recipe"] == str(exported / "recurrent.jit")


def test_a_changed_checkpoint_is_refused_and_an_explicit_one_taken(exported, tmp_path):
    import shutil

    import torch

    model = tmp_path / "sized.onnx"
    shutil.copy(exported / "sized.onnx", model)
    checkpoint = exported / "sized.pt"
    original = checkpoint.read_bytes()
    try:
        state = torch.load(str(checkpoint))
        state["net.0.bias"] += 1
        torch.save(state, str(checkpoint))
        proc = run_edgedl("bench", model, "--baseline", "torch", *FAST, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "changed since the model was exported (sha256 differs)" in proc.stderr
        assert "--torch-checkpoint" in proc.stderr
        other = tmp_path / "other.pt"
        torch.save(state, str(other))
        report = json.loads(run_edgedl("bench", model, "--torch-checkpoint", other, *FAST, "--json").stdout)
        assert report["results"][1]["torch_model"]["checkpoint"] == str(other)
    finally:
        checkpoint.write_bytes(original)


def test_a_bare_model_takes_torch_model_and_checkpoint(exported, tmp_path):
    import onnx
    from safetensors.torch import save_file
    import torch

    bare = onnx.load(str(exported / "sized.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    proc = run_edgedl("bench", tmp_path / "bare.onnx", "--baseline", "torch", *FAST, check=False)
    assert proc.returncode == 1 and "carries no record of the PyTorch module" in proc.stderr
    assert "--torch-model" in proc.stderr
    save_file(torch.load(str(exported / "sized.pt")), str(tmp_path / "sized.safetensors"))
    proc = run_edgedl("bench", tmp_path / "bare.onnx", "--torch-model", f"{USER}:Sized", "--torch-checkpoint",
                      tmp_path / "sized.safetensors", *FAST, check=False)
    # without the recorded constructor arguments the class cannot be built: said in one line
    assert proc.returncode == 1 and "missing 1 required positional argument: 'width'" in proc.stderr
    assert "--torch-init-args" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads(run_edgedl("bench", tmp_path / "bare.onnx", "--torch-model", f"{USER}:Sized",
                                   "--torch-init-args", "[6, 2]", "--torch-checkpoint", tmp_path / "sized.safetensors",
                                   "-b", "2", *FAST, "--json").stdout)
    ort_row, torch_row = report["results"]
    assert torch_row["torch_model"]["kind"] == "module" and ort_row["inputs_digest"] == torch_row["inputs_digest"]
