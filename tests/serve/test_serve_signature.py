"""The server with models that are not batched on axis 0 or cannot be warmed up with synthetic inputs, and
repositories where one model fails to load: real `edgedl serve` processes and tritonclient over loopback."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import stateful_model
from serve_helpers import Reference, ServerProcess, gemm_model, place

tritonclient_http = pytest.importorskip("tritonclient.http")


def picky_model(path: Path) -> Path:
    """x [batch, n] -> Reshape to [batch, -1, 7]: fails unless n is a multiple of 7 (synthetic warm-up at an
    arbitrary n fails, real requests work)."""
    import onnx
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [0, -1, 7])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "picky",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None, 7])], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def _inputs(feeds: dict[str, np.ndarray]) -> list:
    dtypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    inputs = []
    for name, value in feeds.items():
        item = tritonclient_http.InferInput(name, list(value.shape), dtypes[value.dtype])
        item.set_data_from_numpy(value, binary_data=True)
        inputs.append(item)
    return inputs


def _outputs(result) -> dict[str, np.ndarray]:
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def _infer(client, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return _outputs(client.infer(model, _inputs(feeds)))


def _index(url: str) -> list[dict]:
    req = urllib.request.Request(f"http://{url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sigmodels")
    return {"stateful": stateful_model(d / "stateful.onnx"), "anon": stateful_model(d / "anon.onnx", named=False),
            "picky": picky_model(d / "picky.onnx"), "gemm": gemm_model(d / "gemm.onnx", seed=3)}


def test_state_batched_on_axis_1_is_batched_along_axis_1(models, tmp_path):
    """Concurrent requests with different row counts are stacked along audio axis 0 and state axis 1; every
    request gets exactly its own rows back, equal to running it alone."""
    repo = tmp_path / "repo"
    place(repo, "vad", 1, models["stateful"], "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n")
    reference = Reference()
    rng = np.random.default_rng(0)
    requests = []
    for i in range(24):
        rows = 1 + i % 3
        requests.append({"audio": rng.standard_normal((rows, 160)).astype(np.float32),
                         "state": rng.standard_normal((2, rows, 4)).astype(np.float32),
                         "sr": np.array(16000 if i % 2 else 8000, np.int64)})
    with ServerProcess("--model-repository", repo, "--input-shape", "audio=1x160") as server:
        assert "served without warm-up" not in server.stderr
        assert "dynamic batching is OFF" not in server.stderr
        client = tritonclient_http.InferenceServerClient(server.url, concurrency=8)
        pending = [client.async_infer("vad", _inputs(f)) for f in requests]  # 8 connections in flight
        results = [_outputs(p.get_result(timeout=30)) for p in pending]
        with urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
    for feeds, got in zip(requests, results):
        want = reference(models["stateful"], feeds)
        assert got["prob"].shape == want["prob"].shape and got["new_state"].shape == want["new_state"].shape
        np.testing.assert_allclose(got["prob"], want["prob"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["new_state"], want["new_state"], rtol=1e-5, atol=1e-5)
    # some requests really ran together: runs of more than 4 rows (one request has at most 3)
    runs_up_to_4_rows = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith('edgedl_inference_batch_size_bucket{model="vad",version="1",le="4"'))
    assert runs_up_to_4_rows < len(requests), metrics


def test_unnamed_dims_are_never_batched_wrongly(models, tmp_path):
    """The same model with unnamed dims: the outputs' batch axes are unknown, so the server does not batch it
    (and says why) rather than guess, and answers correctly."""
    repo = tmp_path / "repo"
    place(repo, "vad", 1, models["anon"], "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n")
    feeds = {"audio": np.ones((2, 32), np.float32), "state": np.zeros((2, 2, 4), np.float32),
             "sr": np.array(16000, np.int64)}
    with ServerProcess("--model-repository", repo, "--input-shape", "audio=1x32") as server:
        assert "dynamic batching is OFF" in server.stderr and "state" in server.stderr
        got = _infer(tritonclient_http.InferenceServerClient(server.url), "vad", feeds)
    np.testing.assert_allclose(got["prob"], Reference()(models["anon"], feeds)["prob"], rtol=1e-6)


def test_a_model_that_rejects_synthetic_warmup_is_served_without_it(models, tmp_path):
    """No size known for 'n' -> no warm-up; a size that breaks the model -> no warm-up; both log why, start, and
    answer real requests. With a size that works the model is warmed up."""
    x = np.arange(2 * 14, dtype=np.float32).reshape(2, 14)
    for extra, warmed in (((), False), (("--shape", "n=5"), False), (("--shape", "n=21"), True)):
        with ServerProcess(models["picky"], *extra) as server:
            assert ("served without warm-up" in server.stderr) != warmed, server.stderr
            got = _infer(tritonclient_http.InferenceServerClient(server.url), "picky", {"x": x})
        assert got["y"].shape == (2, 2, 7)


def test_warmup_sizes_from_config_pbtxt_dims_and_model_warmup(models, tmp_path):
    repo = tmp_path / "repo"
    place(repo, "a", 1, models["picky"], 'max_batch_size: 4\ninput [{ name: "x" data_type: TYPE_FP32 dims: [ 14 ] }]\n')
    place(repo, "b", 1, models["picky"], 'max_batch_size: 0\nmodel_warmup [{ name: "w" batch_size: 1 inputs { key: "x" '
                                          'value: { data_type: TYPE_FP32 dims: [ 3, 7 ] random_data: true } } }]\n')
    with ServerProcess("--model-repository", repo) as server:
        assert "served without warm-up" not in server.stderr, server.stderr


def test_a_model_that_fails_to_load_is_unavailable_and_the_others_serve(models, tmp_path):
    repo = tmp_path / "repo"
    place(repo, "good", 1, models["gemm"])
    broken = repo / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an onnx model")
    (repo / "empty" / "1").mkdir(parents=True)
    with ServerProcess("--model-repository", repo) as server:
        index = {m["name"]: m for m in _index(server.url)}
        client = tritonclient_http.InferenceServerClient(server.url)
        assert client.is_server_ready() and client.is_model_ready("good")
        assert not client.is_model_ready("broken")
        got = _infer(client, "good", {"pixels": np.ones((1, 64), np.float32)})
    assert got["logits"].shape == (1, 10)
    assert index["good"]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE" and "could not load" in index["broken"]["reason"]
    assert index["empty"]["state"] == "UNAVAILABLE" and "no version folder" in index["empty"]["reason"]
    assert "UNAVAILABLE" in server.stderr and "Traceback" not in server.stderr
