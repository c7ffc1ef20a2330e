"""Triton model repository export: config.pbtxt derived from the model, validated by Triton's own ModelConfig
protobuf, and served by the real `edgedl serve --model-repository` to the real tritonclient with the same outputs
as in-process onnxruntime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from edgedl_testing import run_edgedl
from edgedl.errors import EdgeDLError
from edgedl.stages.repository import TritonOptions, parse_model_config
from edgedl.stages.triton import write_triton_repository

sys.path.insert(0, str(Path(__file__).parent / "serve"))
from serve_helpers import ServerProcess  # noqa: E402


def model_config(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


@pytest.fixture(scope="module")
def repo(zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    models = [zoo[n].onnx for n in ("mlp", "cnn", "lstm", "transformer")]
    write_triton_repository(models, out, TritonOptions(max_batch_size=16, max_queue_delay_us=500, instance_count=2,
                                                       preferred_batch_sizes=(4, 8)))
    return out


def test_layout_and_configs_parse_into_triton_modelconfig(repo, zoo):
    for name in ("mlp", "cnn", "lstm", "transformer"):
        assert (repo / name / "1" / "model.onnx").read_bytes() == zoo[name].onnx.read_bytes()
        config = model_config(repo / name / "config.pbtxt")
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 16
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [(2, "KIND_CPU")]
        assert [model_config_pb2.DataType.Name(t.data_type) for t in (*config.input, *config.output)] == ["TYPE_FP32"] * 2
        assert list(config.output[0].dims) == [10]
    # dims exclude the batch axis; dynamic axes other than batch become -1
    assert list(model_config(repo / "mlp" / "config.pbtxt").input[0].dims) == [64]
    assert list(model_config(repo / "cnn" / "config.pbtxt").input[0].dims) == [1, 8, 8]
    assert list(model_config(repo / "lstm" / "config.pbtxt").input[0].dims) == [-1, 8]
    labels = (repo / "cnn" / "labels.txt").read_text().split()
    assert labels == [str(i) for i in range(10)] or len(labels) == 10
    assert model_config(repo / "cnn" / "config.pbtxt").output[0].label_filename == "labels.txt"


def test_no_batching_when_asked_or_when_the_model_has_no_batch_axis(zoo, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    out = write_triton_repository([zoo["mlp"].onnx], tmp_path / "nobatch", TritonOptions(max_batch_size=0))
    config = model_config(tmp_path / "nobatch" / "mlp" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, 64]
    assert out.models[0].notes

    fixed = tmp_path / "fixed.onnx"
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [3, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fixed)
    write_triton_repository([fixed], tmp_path / "fixed")
    config = model_config(tmp_path / "fixed" / "fixed" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [3, 4]
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_INT64"


def test_validation_rejects_a_config_triton_would_reject():
    with pytest.raises(EdgeDLError, match="not a valid Triton ModelConfig"):
        parse_model_config('name: "m"\ninput [ { name: "x", data_type: TYPE_FLOAT32, dims: [ 4 ] } ]\n')
    with pytest.raises(EdgeDLError, match="not a valid Triton ModelConfig"):
        parse_model_config('name: "m"\nmax_batch: 4\n')


def test_bad_input_leaves_nothing_behind(zoo, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(EdgeDLError, match="not empty"):
        write_triton_repository([zoo["mlp"].onnx], existing)
    assert (existing / "keep.txt").read_text() == "mine"

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(EdgeDLError, match="could not load .*junk.onnx"):
        write_triton_repository([zoo["mlp"].onnx, junk], tmp_path / "partial")
    assert not (tmp_path / "partial").exists()
    assert not list(tmp_path.glob(".*partial-*"))
    with pytest.raises(EdgeDLError, match="did you mean 'gpu'"):
        TritonOptions(instance_kind="gpuu")
    with pytest.raises(EdgeDLError, match="preferred batch sizes"):
        TritonOptions(max_batch_size=4, preferred_batch_sizes=(8,))


def test_edgedl_serve_serves_the_repository_to_tritonclient(repo, zoo):
    """The repository written for Triton, served by `edgedl serve`: tritonclient (http) gets what onnxruntime gives."""
    import tritonclient.http as httpclient

    rng = np.random.default_rng(7)
    feeds = {"mlp": rng.random((3, 64), dtype=np.float32), "cnn": rng.random((5, 1, 8, 8), dtype=np.float32),
             "lstm": rng.random((2, 6, 8), dtype=np.float32), "transformer": rng.random((4, 5, 8), dtype=np.float32)}
    with ServerProcess("--model-repository", repo) as server:
        client = httpclient.InferenceServerClient(url=server.url)
        assert client.is_server_ready()
        for name, x in feeds.items():
            meta = client.get_model_metadata(name)
            in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
            inp = httpclient.InferInput(in_name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput(out_name)]).as_numpy(out_name)
            want = ort.InferenceSession(str(zoo[name].onnx), providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        client.close()


def test_cli_package_format_triton(zoo, tmp_path):
    out = tmp_path / "repo"
    proc = run_edgedl("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--format", "triton", "--name", "digits-cnn",
                      "--name", "digits-mlp", "--max-batch-size", "32", "--instances", "3", "-o", out, "--json")
    report = json.loads(proc.stdout)
    assert [m["name"] for m in report["models"]] == ["digits-cnn", "digits-mlp"]
    config = model_config(out / "digits-mlp" / "config.pbtxt")
    assert config.max_batch_size == 32 and config.instance_group[0].count == 3
    again = run_edgedl("package", zoo["cnn"].onnx, "--format", "triton", "-o", out, check=False)
    assert again.returncode == 1 and again.stderr.strip().startswith("error:") and "not empty" in again.stderr
    bad = run_edgedl("package", zoo["cnn"].onnx, "--format", "tritonn", "-o", tmp_path / "x", check=False)
    assert bad.returncode != 0 and "triton" in bad.stderr
    human = run_edgedl("package", zoo["lstm"].onnx, "--format", "triton", "-o", tmp_path / "human")
    assert "lstm" in human.stdout and "TYPE_FP32" in human.stdout
