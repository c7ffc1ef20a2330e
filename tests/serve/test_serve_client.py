"""The unmodified tritonclient (sync and asyncio) and plain curl against a real `edgedl serve` process."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException


def _infer_input(name, arr, binary=True, datatype="FP32"):
    i = httpclient.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


def test_health_and_metadata(server):
    c = httpclient.InferenceServerClient(server.url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("cnn") and c.is_model_ready("mlp", "1") and c.is_model_ready("mlp", "2")
    assert not c.is_model_ready("nope")
    assert not c.is_model_ready("mlp", "7")
    meta = c.get_server_metadata()
    assert meta["name"] == "edgedl" and "binary_tensor_data" in meta["extensions"]
    m = c.get_model_metadata("cnn")
    assert m["platform"] == "onnxruntime_onnx" and m["versions"] == ["1"]
    assert m["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert m["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert c.get_model_metadata("mlp")["versions"] == ["1", "2"]
    cfg = c.get_model_config("cnn")
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [1, 8, 8]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata("nope")
    assert "unknown model 'nope'" in str(err.value)
    names = {(m["name"], m["version"]) for m in c.get_model_repository_index()}
    assert ("mlp", "2") in names and ("cnn", "1") in names


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_binary_and_json(server, repository, reference, binary_in, binary_out):
    c = httpclient.InferenceServerClient(server.url)
    x = np.random.default_rng(3).random((3, 1, 8, 8), dtype=np.float32)
    result = c.infer("cnn", [_infer_input("image", x, binary_in)],
                     outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary_out)], request_id="req-7")
    want = reference(repository / "cnn/1/model.onnx", {"image": x})["logits"]
    got = result.as_numpy("logits")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "cnn" and response["model_version"] == "1"
    assert ("data" in response["outputs"][0]) != binary_out


def test_versions_newest_wins(server, repository, reference):
    c = httpclient.InferenceServerClient(server.url)
    x = np.random.default_rng(4).random((2, 64), dtype=np.float32)
    latest = c.infer("mlp", [_infer_input("pixels", x)])
    v1 = c.infer("mlp", [_infer_input("pixels", x)], model_version="1")
    np.testing.assert_allclose(latest.as_numpy("logits"),
                               reference(repository / "mlp/2/model.onnx", {"pixels": x})["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v1.as_numpy("logits"),
                               reference(repository / "mlp/1/model.onnx", {"pixels": x})["logits"], rtol=1e-5, atol=1e-5)
    assert latest.get_response()["model_version"] == "2"
    with pytest.raises(InferenceServerException) as err:
        c.infer("mlp", [_infer_input("pixels", x)], model_version="3")
    assert err.value.status() == "404" and "no version '3'" in err.value.message()


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_tensors(server, binary):
    c = httpclient.InferenceServerClient(server.url)
    text = np.array([b"hello", "héllo wörld".encode(), b""], dtype=np.object_)
    i = httpclient.InferInput("text", [3], "BYTES")
    i.set_data_from_numpy(text, binary_data=binary)
    r = c.infer("strings", [i], outputs=[httpclient.InferRequestedOutput("text_out", binary_data=binary),
                                         httpclient.InferRequestedOutput("is_hello", binary_data=binary)])
    out = r.as_numpy("text_out")
    assert [v if isinstance(v, bytes) else v.encode() for v in out] == list(text)
    assert r.as_numpy("is_hello").tolist() == [True, False, False]


def test_aio_client(server, repository, reference):
    async def main():
        c = aioclient.InferenceServerClient(server.url)
        try:
            assert await c.is_server_live() and await c.is_server_ready() and await c.is_model_ready("lstm")
            assert (await c.get_server_metadata())["name"] == "edgedl"
            assert (await c.get_model_metadata("lstm"))["inputs"][0]["shape"] == [-1, -1, 8]
            rng = np.random.default_rng(5)
            xs = [rng.random((1, seq, 8), dtype=np.float32) for seq in (3, 5, 8, 5, 3)]
            results = await asyncio.gather(*(
                c.infer("lstm", [_infer_input("rows", x, binary=k % 2 == 0)],
                        outputs=[aioclient.InferRequestedOutput("logits", binary_data=k % 2 == 1)])
                for k, x in enumerate(xs)))
            for x, r in zip(xs, results):
                want = reference(repository / "lstm/1/model.onnx", {"rows": x})["logits"]
                np.testing.assert_allclose(r.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)
        finally:
            await c.close()

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_json(server, repository, reference):
    x = np.random.default_rng(6).random((1, 64), dtype=np.float32)
    body = json.dumps({"id": "curl-1", "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                                    "data": x.ravel().tolist()}]})
    proc = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json",
                           "-d", body, f"http://{server.url}/v2/models/mlp/versions/1/infer"],
                          capture_output=True, text=True, timeout=30, check=True)
    text, code = proc.stdout.rsplit("\n", 1)
    assert code == "200"
    doc = json.loads(text)
    assert doc["id"] == "curl-1" and doc["outputs"][0]["shape"] == [1, 10]
    want = reference(repository / "mlp/1/model.onnx", {"pixels": x})["logits"]
    np.testing.assert_allclose(np.array(doc["outputs"][0]["data"], np.float32).reshape(1, 10), want, rtol=1e-6,
                               atol=1e-6)


def test_metrics_and_stats(server):
    c = httpclient.InferenceServerClient(server.url)
    x = np.zeros((1, 1, 8, 8), np.float32)
    for _ in range(3):
        c.infer("cnn", [_infer_input("image", x)])
    with pytest.raises(InferenceServerException):
        c.infer("cnn", [_infer_input("image", np.zeros((1, 1, 8, 7), np.float32))])
    text = urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10).read().decode()
    lines = text.splitlines()
    ok = next(l for l in lines if l.startswith('edgedl_inference_requests_total{model="cnn",version="1",status="200"}'))
    assert float(ok.split()[-1]) >= 3
    assert any(l.startswith('edgedl_inference_failures_total{model="cnn",reason="bad_request"}') for l in lines)
    for family in ("queue", "compute", "request"):
        assert any(l.startswith(f"edgedl_inference_{family}_duration_seconds_bucket") for l in lines)
    assert any(l.startswith('edgedl_inference_batch_size_count{model="cnn"') for l in lines)
    assert any(l.startswith('edgedl_model_load_duration_seconds{model="mlp",version="2"}') for l in lines)
    assert "# TYPE edgedl_inference_in_flight gauge" in text
    stats = c.get_inference_statistics("cnn")["model_stats"][0]
    # the malformed request was refused before it ran: a failure in /metrics, not in the statistics (as Triton)
    assert stats["inference_count"] >= 3 and stats["inference_stats"]["fail"]["count"] == 0
