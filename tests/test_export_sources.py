"""Export that copes: the dynamo -> TorchScript fallback, TorchScript files as input, model files that import their
neighbours, scalar inputs and batch axes, integer value ranges, constructor arguments and user checkpoints,
validation that says when it proves nothing, and the node -> module -> source line mapping. Real torch exporters
and onnxruntime on small user modules (tests/fixtures), through the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgedl_testing import ROOT, run_edgedl_inprocess

USER = ROOT / "tests" / "fixtures" / "user_models.py"
SIBLINGS = ROOT / "tests" / "fixtures" / "siblings"


def _export(*args) -> dict:
    proc = run_edgedl_inprocess("export", *map(str, args), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _fails(*args) -> str:
    """One 'error:' line (notices before it allowed), no traceback; returns the error line."""
    proc = run_edgedl_inprocess("export", *map(str, args))
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and all(ln.startswith("notice: ") for ln in lines[:-1]), proc.stderr
    return lines[-1]


def _metadata(path) -> dict:
    from edgedl.runtime import Runner

    with Runner(path) as runner:
        return runner.metadata


def _reference(cls_name: str, *arrays, init_args=None, state=None):
    import torch

    from edgedl.recipe import import_file

    cls = getattr(import_file(USER), cls_name)
    torch.manual_seed(0)
    model = (cls(**init_args) if init_args else cls()).eval()
    if state is not None:
        model.load_state_dict(state)
    with torch.no_grad():
        out = model(*[torch.from_numpy(a) for a in arrays])
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def test_dynamo_failure_falls_back_to_torchscript_in_one_notice(tmp_path):
    """REAL_MODELS.md: `forward(self, image, meta)` beside `self.meta = nn.Linear` breaks torch 2.13's dynamo
    exporter; auto says why in one notice, exports with TorchScript and validates the result the same way."""
    out = tmp_path / "meta.onnx"
    args = ["export", f"{USER}:MetaArgument", "--input", "image=2x3x8x8", "--input", "meta=2x5",
            "--dynamic", "image=0:batch", "--dynamic", "meta=0:batch", "-o", out]
    proc = run_edgedl_inprocess(*map(str, args), "--json")
    assert proc.returncode == 0, proc.stderr
    notices = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(notices) == 1 and notices[0].startswith("notice: the dynamo exporter failed (")
    assert "nonexistent attribute weight of meta" in notices[0] and "trying the TorchScript exporter" in notices[0]
    report = json.loads(proc.stdout)
    assert report["exporter"] == "torchscript" and "nonexistent attribute" in report["fallback_reason"]
    assert report["validation"]["passed"] and [c["sizes"] for c in report["validation"]["checks"]] == [
        {"batch": 2}, {"batch": 5}]
    assert "torchscript" in _metadata(out)["exporter"]
    image = np.random.default_rng(1).uniform(size=(7, 3, 8, 8)).astype(np.float32)
    meta = np.random.default_rng(2).uniform(size=(7, 5)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": image, "meta": meta})
    np.testing.assert_allclose(got[0], _reference("MetaArgument", image, meta)[0], atol=1e-5)
    # asked for dynamo alone, the same model fails with the reason and nothing is written
    err = _fails(*args[1:-2], "-o", tmp_path / "dynamo.onnx", "--exporter", "dynamo")
    assert "nonexistent attribute weight of meta" in err and not (tmp_path / "dynamo.onnx").exists()


def test_torchscript_exporter_bakes_attention_lengths_and_validation_catches_it(tmp_path):
    """PITFALLS.md: the legacy exporter bakes nn.MultiheadAttention's example sequence length; validation at a
    second length refuses the file."""
    out = tmp_path / "t.onnx"
    err = _fails("transformer", "--exporter", "torchscript", "-o", out)
    assert "(torchscript exporter) is not faithful" in err and "'seq': 5" in err and "bake example sizes" in err
    assert list(tmp_path.iterdir()) == []


def test_a_branch_on_tensor_values_is_refused_by_both_exporters(tmp_path):
    err = _fails(f"{USER}:DataDependent", "--input", "x=2x4", "--dynamic", "x=0:batch", "-o", tmp_path / "d.onnx")
    assert "torch could not export DataDependent with either exporter" in err
    assert "TorchScript: the tracer met Python control flow on a tensor's value at user_models.py:" in err
    assert list(tmp_path.iterdir()) == []


def test_torchscript_file_and_its_submodule_are_export_inputs(tmp_path):
    import torch

    from edgedl.recipe import import_file

    torch.manual_seed(0)
    scripted = torch.jit.script(import_file(USER).Recurrent().eval())
    wrapper = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    jit, seq = tmp_path / "recurrent.jit", tmp_path / "seq.pt"
    scripted.save(str(jit))
    wrapper.save(str(seq))
    out = tmp_path / "recurrent.onnx"
    report = _export(jit, "--input", "audio=2x32", "--input", "state=2x2x8", "--input", "sr=scalar:int64:16000..16000",
                     "--dynamic", "audio=0:batch", "--dynamic", "state=1:batch", "--output-name", "prob",
                     "--output-name", "new_state", "--dynamic", "prob=0:batch", "--dynamic", "new_state=1:batch",
                     "-o", out)
    assert report["exporter"] == "torchscript" and report["fallback_reason"] is None and report["notices"] == []
    assert report["validation"]["passed"] and len(report["validation"]["checks"]) == 2
    assert _metadata(out)["torch_source"] == {"kind": "torchscript", "target": str(jit.resolve())}
    audio = np.random.default_rng(0).uniform(size=(4, 32)).astype(np.float32)
    state = np.random.default_rng(1).uniform(size=(2, 4, 8)).astype(np.float32)
    feeds = {"audio": audio, "state": state, "sr": np.array(16000, np.int64)}
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    with torch.no_grad():
        want = scripted(torch.from_numpy(audio), torch.from_numpy(state), torch.tensor(16000))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)
    # a submodule of a TorchScript file, selected with FILE:PATH (silero_vad.jit:_model has the exportable network)
    sub = _export(f"{seq}:0", "--input", "x=3x4", "--dynamic", "x=0:batch", "-o", tmp_path / "first.onnx")
    assert sub["validation"]["passed"] and sub["recipe"] == "seq.0"
    assert "no submodule 'nine'" in _fails(f"{seq}:nine", "--input", "x=3x4", "-o", tmp_path / "x.onnx")
    assert "--exporter torchscript" in _fails(jit, "--input", "audio=2x32", "--input", "state=2x2x8", "--input",
                                              "sr=scalar:int64", "--exporter", "dynamo", "-o", tmp_path / "x.onnx")
    # a .pt that is a state_dict is no TorchScript file: the message says what to pass instead
    state_dict = tmp_path / "weights.pt"
    torch.save(wrapper.state_dict(), str(state_dict))
    err = _fails(state_dict, "--input", "x=3x4", "-o", tmp_path / "x.onnx")
    assert "is not a TorchScript file" in err and "file.py:ClassName --checkpoint" in err
    assert "carries its own weights" in _fails(jit, "--checkpoint", state_dict, "--input", "x=3x4",
                                               "-o", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_model_file_imports_its_neighbours_and_names_a_missing_package(tmp_path):
    import sys

    report = _export(f"{SIBLINGS / 'net.py'}:Net", "--input", "x=2x4", "-o", tmp_path / "net.onnx")
    assert report["validation"]["passed"]
    assert str(SIBLINGS) not in sys.path  # only while importing
    err = _fails(f"{SIBLINGS / 'needs_package.py'}:Net", "--input", "x=2x4", "-o", tmp_path / "x.onnx")
    assert "No module named 'edgedl_fixture_not_installed'" in err
    assert "install the package it needs: edgedl_fixture_not_installed" in err and "edgedl[" not in err


def test_scalar_input_and_batch_axes_are_exported_and_stored(tmp_path):
    """silero-vad's shape: audio [B, N], state [2, B, 8] (batch on axis 1), a scalar int64 sample rate. With the
    batch dim not named 'batch', axis 0 is assumed; --batch-axis says otherwise."""
    out = tmp_path / "rec.onnx"
    report = _export(f"{USER}:Recurrent", "--input", "audio=2x32", "--input", "state=2x2x8",
                     "--input", "sr=scalar:int64:16000..16000", "--dynamic", "audio=0:n", "--dynamic",
                     "state=1:n", "--batch-axis", "state=1", "--output-name", "prob", "--output-name", "new_state",
                     "--dynamic", "prob=0:n", "--dynamic", "new_state=1:n", "--batch-axis", "new_state=1",
                     "-o", out)
    assert report["validation"]["passed"]
    meta = _metadata(out)
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert {k: v["batch_axis"] for k, v in inputs.items()} == {"audio": 0, "state": 1, "sr": None}
    assert inputs["sr"]["shape"] == [] and inputs["sr"]["value_range"] == [16000, 16000]
    assert {o["name"]: o["batch_axis"] for o in meta["outputs"]} == {"prob": 0, "new_state": 1}
    assert meta["validation"]["example_shapes"] == {"audio": [2, 32], "state": [2, 2, 8], "sr": []}
    from edgedl.runtime import Runner
    from edgedl.runtime.signature import Signature

    with Runner(out) as runner:
        sig = Signature.of_runner(runner)
        feeds = sig.feeds(batch=4)
        assert {k: v.shape for k, v in feeds.items()} == {"audio": (4, 32), "state": (2, 4, 8), "sr": ()}
        assert int(feeds["sr"]) == 16000
        prob, new_state = runner.run(feeds).values()
    want = _reference("Recurrent", feeds["audio"], feeds["state"], feeds["sr"])
    np.testing.assert_allclose(prob, want[0], atol=1e-5)
    np.testing.assert_allclose(new_state, want[1], atol=1e-5)
    # export's size options: --shape sets the example a dynamic dim is traced at (then validated at a second)
    sized = _export(f"{USER}:TwoInTwoOut", "--input", "x=3x4", "--input", "y=3x6", "--dynamic", "x=0:batch",
                    "--dynamic", "y=0:batch", "--shape", "batch=4", "-o", tmp_path / "two.onnx")
    assert [c["sizes"] for c in sized["validation"]["checks"]] == [{"batch": 4}, {"batch": 6}]
    assert "size >= 2" in _fails(f"{USER}:TwoInTwoOut", "--input", "x=3x4", "--input", "y=3x6", "--dynamic",
                                 "x=0:batch", "--dynamic", "y=0:batch", "--shape", "batch=1", "-o", tmp_path / "x.onnx")
    assert "did you mean 'batch'" in _fails(f"{USER}:TwoInTwoOut", "--input", "x=3x4", "--input", "y=3x6",
                                            "--dynamic", "x=0:batch", "--dynamic", "y=0:batch", "--shape", "bach=4",
                                            "-o", tmp_path / "x.onnx")
    assert "out of range" in _fails(f"{USER}:TwoInTwoOut", "--input", "x=3x4", "--input", "y=3x6",
                                    "--batch-axis", "x=2", "-o", tmp_path / "x.onnx")


def test_integer_inputs_take_a_value_range(tmp_path):
    """Token ids validated with the declared range (an embedding of 1000 rows), stored in the model for later
    stages; a range the model rejects fails once, naming the inputs."""
    out = tmp_path / "emb.onnx"
    report = _export(f"{USER}:Embedding", "--input", "ids=2x7:int64:0..999", "--dynamic", "ids=0:batch,1:seq",
                     "-o", out)
    assert report["validation"]["passed"] and not report["validation"]["degenerate"]
    assert _metadata(out)["inputs"][0]["value_range"] == [0, 999]
    err = _fails(f"{USER}:Embedding", "--input", "ids=2x7:int64:0..5000", "-o", tmp_path / "x.onnx")
    assert "Embedding fails on example inputs (ids int64[2x7] values 0..5000)" in err and "--input-range" in err
    assert "malformed --input" in _fails(f"{USER}:Embedding", "--input", "ids=2x7:int64:0..", "-o", tmp_path / "x.onnx")
    assert "integer range" in _fails(f"{USER}:Embedding", "--input", "ids=2x7:int64:0..1.5", "-o", tmp_path / "x.onnx")
    assert "did you mean 'int64'" in _fails(f"{USER}:Embedding", "--input", "ids=2x7:int46", "-o", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_degenerate_outputs_are_reported_and_refused_with_strict(tmp_path):
    """A check on outputs that are ~0 or ignore the inputs proves nothing (random-weight MobileNetV2 gives ~1e-25
    here, ViT's zero head used to give exactly 0): a notice and `validation.degenerate` by default, an error with
    --strict; an ordinary output (relative error reported next to absolute) is not flagged."""
    for cls, reason in [("ZeroHead", "every value is exactly 0"),
                        ("Vanishing", "inside the tolerance (atol 0.0001): an all-zero output passes"),
                        ("IgnoresInput", "it is the same for different inputs")]:
        args = [f"{USER}:{cls}", "--input", "x=2x4", "--dynamic", "x=0:batch", "--output-name", "y"]
        proc = run_edgedl_inprocess("export", *map(str, args), "-o", str(tmp_path / f"{cls}.onnx"), "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["validation"]["passed"] and reason in report["validation"]["degenerate"]["y"], cls
        assert "notice: validation proves nothing about output 'y': " in proc.stderr
        assert reason in _metadata(tmp_path / f"{cls}.onnx")["validation"]["degenerate"]["y"]
    err = _fails(*args, "--strict", "-o", tmp_path / "strict.onnx")
    assert "proves nothing about output 'y'" in err and not (tmp_path / "strict.onnx").exists()
    report = _export(f"{USER}:Sized", "--init-args", "[16]", "--input", "x=3x4:float32:-1..1", "--dynamic",
                     "x=0:batch", "-o", tmp_path / "t.onnx")
    v = report["validation"]
    assert v["degenerate"] == {} and 0 < v["max_rel_diff"] < 1e-5
    for check in v["checks"]:
        for o in check["outputs"].values():
            assert o["rel_diff"] <= o["max_abs_diff"] / 1e-3 and {"max_abs_diff", "rel_diff"} <= set(o)


def test_constructor_arguments_and_user_checkpoints(tmp_path):
    import torch
    from safetensors.torch import save_file

    from edgedl.recipe import import_file

    err = _fails(f"{USER}:Sized", "--input", "x=2x4", "-o", tmp_path / "x.onnx")
    assert "missing 1 required positional argument: 'width'" in err and "--init-args" in err
    assert "not JSON" in _fails(f"{USER}:Sized", "--input", "x=2x4", "--init-args", "{width: 6}",
                                "-o", tmp_path / "x.onnx")
    torch.manual_seed(7)
    trained = import_file(USER).Sized(width=6, classes=2)
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    pt, st = tmp_path / "sized.pt", tmp_path / "sized.safetensors"
    torch.save(state, str(pt))
    save_file(state, str(st))
    x = np.random.default_rng(0).uniform(size=(5, 4)).astype(np.float32)
    want = _reference("Sized", x, init_args={"width": 6, "classes": 2}, state=state)[0]
    for checkpoint in (pt, st):
        out = tmp_path / f"{checkpoint.suffix[1:]}.onnx"
        report = _export(f"{USER}:Sized", "--input", "x=2x4", "--dynamic", "x=0:batch", "--init-args",
                         '{"width": 6, "classes": 2}', "--checkpoint", checkpoint, "-o", out)
        assert report["validation"]["passed"]
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, atol=1e-5)  # the checkpoint's weights, not a fresh init
        from edgedl.stages.torch_source import sha256

        assert _metadata(out)["torch_source"] == {
            "kind": "module", "target": f"{USER}:Sized", "init_args": {"width": 6, "classes": 2},
            "checkpoint": str(checkpoint), "checkpoint_sha256": sha256(checkpoint)}
    err = _fails(f"{USER}:Sized", "--input", "x=2x4", "--init-args", "[8]", "--checkpoint", pt, "-o", tmp_path / "x.onnx")
    assert "does not fit Sized" in err and "size mismatch" in err
    torch.save(torch.nn.Linear(4, 6), str(tmp_path / "pickled.pt"))  # a whole pickled module: loading runs code
    err = _fails(f"{USER}:Sized", "--input", "x=2x4", "--init-args", '{"width": 6, "classes": 2}', "--checkpoint",
                 tmp_path / "pickled.pt", "-o", tmp_path / "x.onnx")
    assert "not a state_dict torch can load safely" in err
    assert not (tmp_path / "x.onnx").exists()


def test_source_mapping_survives_simplification(zoo, tmp_path):
    """Each node of the zoo transformer (dynamo, onnxslim'd) maps to its module path and the line of
    models/transformer.py it came from; the TorchScript exporter's nodes map too."""
    from edgedl.stages.provenance import KEY, read

    mapping = read(zoo["transformer"].onnx)
    import onnx

    model = onnx.load(str(zoo["transformer"].onnx))
    assert len(mapping) >= 0.9 * len(model.graph.node)
    modules = {m.module for m in mapping.values()}
    assert {"embed", "encoder.layers.0.self_attn", "encoder.layers.0.linear1", "head"} <= modules
    source = (ROOT / "models" / "transformer.py").read_text().splitlines()
    located = [m for m in mapping.values() if m.location]
    assert len(located) >= 0.9 * len(mapping)
    for m in located:
        file, line = m.location.rsplit(":", 1)
        # the recipe file of the checkout that exported the (cached, shared) zoo: the same file as ours
        assert Path(file).parts[-2:] == ("models", "transformer.py") and Path(file).read_text() == "\n".join(source) + "\n"
        assert "self." in source[int(line) - 1]
    size = len(next(p.value for p in model.metadata_props if p.key == KEY))
    assert size < 0.05 * zoo["transformer"].onnx.stat().st_size
    out = tmp_path / "meta.onnx"
    _export(f"{USER}:MetaArgument", "--input", "image=2x3x8x8", "--input", "meta=2x5", "--exporter", "torchscript",
            "-o", out)
    script = read(out)
    gemm = next(v for k, v in script.items() if k.endswith("Gemm"))
    line = int(gemm.location.rsplit(":", 1)[1])
    assert gemm.module == "meta" and "self.meta(meta)" in USER.read_text().splitlines()[line - 1]
