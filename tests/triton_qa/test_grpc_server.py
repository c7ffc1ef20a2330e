"""`edgedl serve --grpc-port`: the KServe v2 / Triton gRPC API, driven by the real tritonclient.grpc (sync, aio,
streaming) and a raw grpc stub, over loopback, next to HTTP on the same models and statistics."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import qa_models
from serve_helpers import EDGEDL, ServerProcess, free_port, place, slow_model

KEY = "s3cret-key"
BATCHED = "dynamic_batching { max_queue_delay_microseconds: 20000 }"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpc")
    models = qa_models.example_models() + [qa_models.identity("batched", np.float32, (4,), extra_config=BATCHED)]
    root = qa_models.write_repository(d / "models", models, "edgedl")
    place(root, "slow", 1, slow_model(d / "slow.onnx"))
    return root


def _serve(repo, *extra):
    port = free_port()
    server = ServerProcess("--model-repository", repo, "--grpc-port", port, *extra)
    server.grpc = f"127.0.0.1:{port}"
    return server


@pytest.fixture(scope="module")
def server(repo):
    with _serve(repo) as s:
        yield s


def _inputs(module, arrays: dict[str, np.ndarray], datatype: str):
    out = []
    for name, value in arrays.items():
        tensor = module.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        out.append(tensor)
    return out


def _pair(rng, rows=1):
    return {"INPUT0": rng.integers(-1000, 1000, (rows, 16), dtype=np.int32),
            "INPUT1": rng.integers(-1000, 1000, (rows, 16), dtype=np.int32)}


def test_documents_match_http(server):
    """Server and model metadata, config, index and statistics: the HTTP documents, in protobuf form."""
    g, h = grpcclient.InferenceServerClient(server.grpc), httpclient.InferenceServerClient(server.url)
    assert g.is_server_live() and g.is_server_ready() and g.is_model_ready("simple")
    assert not g.is_model_ready("nope") and not g.is_model_ready("simple", "7")
    meta = g.get_server_metadata(as_json=True)
    assert (meta["name"], meta["version"], meta["extensions"]) == tuple(h.get_server_metadata()[k] for k in
                                                                        ("name", "version", "extensions"))
    for name in ("simple", "simple_string", "batched"):
        want = h.get_model_metadata(name)
        got = g.get_model_metadata(name)
        assert (got.name, list(got.versions), got.platform) == (want["name"], want["versions"], want["platform"])
        for kind in ("inputs", "outputs"):
            assert [(t.name, t.datatype, list(t.shape)) for t in getattr(got, kind)] == \
                   [(t["name"], t["datatype"], t["shape"]) for t in want[kind]]
        config = json_format.ParseDict(h.get_model_config(name), model_config_pb2.ModelConfig())
        assert g.get_model_config(name).config == config
    index = g.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == \
           [(m["name"], m["version"], m["state"]) for m in h.get_model_repository_index()]
    stats = g.get_inference_statistics("simple")
    assert json_format.MessageToDict(stats, preserving_proto_field_name=True).get("model_stats", [{}])[0]["name"] \
           == h.get_inference_statistics("simple")["model_stats"][0]["name"] == "simple"


def test_infer_int32_bytes_and_chosen_outputs(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    x = _pair(np.random.default_rng(0), rows=3)
    result = c.infer("simple", _inputs(grpcclient, x, "INT32"), request_id="req-9")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x["INPUT0"] + x["INPUT1"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x["INPUT0"] - x["INPUT1"])
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-9", "simple", "1")
    only = c.infer("simple", _inputs(grpcclient, x, "INT32"), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in only.get_response().outputs] == ["OUTPUT1"]
    words = {k: np.array([[str(v) for v in row] for row in a], dtype=object) for k, a in x.items()}
    text = c.infer("simple_string", _inputs(grpcclient, words, "BYTES")).as_numpy("OUTPUT0")
    assert text.tolist() == [[str(v).encode() for v in row] for row in x["INPUT0"] + x["INPUT1"]]


def _raw(server):
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc))


def _tensor(name, datatype, shape, **contents):
    t = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        t.contents.CopyFrom(service_pb2.InferTensorContents(**contents))
    return t


def test_typed_contents_decode_like_raw(server):
    """InferTensorContents (what non-tritonclient KServe clients send) gives the same answer as raw bytes."""
    values = list(range(-8, 8))
    response = _raw(server).ModelInfer(_request("simple", _int32("INPUT0", int_contents=values),
                                                _int32("INPUT1", int_contents=values)))
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert np.frombuffer(response.raw_output_contents[0], np.int32).tolist() == [2 * v for v in values]
    words = [str(v).encode() for v in values]
    response = _raw(server).ModelInfer(_request("simple_string", *(_tensor(n, "BYTES", [1, 16], bytes_contents=words)
                                                                   for n in ("INPUT0", "INPUT1"))))
    assert response.outputs[1].datatype == "BYTES" and list(response.outputs[1].shape) == [1, 16]
    first = response.raw_output_contents[0]  # BYTES: 4-byte little-endian length, then the UTF-8 text
    assert first[4:4 + int.from_bytes(first[:4], "little")] == b"-16"


ZERO16 = np.zeros(16, np.int32).tobytes()
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _request(model, *tensors, raw=(), outputs=(), **fields):
    return service_pb2.ModelInferRequest(model_name=model, inputs=list(tensors), raw_input_contents=list(raw),
                                         outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n)
                                                  for n in outputs], **fields)


def _int32(name, shape=(1, 16), **contents):
    return _tensor(name, "INT32", list(shape), **contents)


PAIR = (_int32("INPUT0"), _int32("INPUT1"))
BAD = {  # case -> (request, status, part of the message)
    "unknown model": (_request("nope"), NOT_FOUND, "Request for unknown model 'nope'"),
    "unknown version": (_request("simple", model_version="3"), NOT_FOUND, "no version '3'"),
    "no inputs": (_request("simple"), INVALID, "non-empty 'inputs'"),
    "wrong datatype": (_request("simple", _tensor("INPUT0", "FP32", [1, 16]), PAIR[1], raw=[ZERO16] * 2), INVALID,
                       "expects datatype INT32"),
    "wrong shape": (_request("simple", _int32("INPUT0", (1, 8)), _int32("INPUT1", (1, 8)), raw=[ZERO16[:32]] * 2),
                    INVALID, "size 16 on axis 1"),
    "short raw tensor": (_request("simple", *PAIR, raw=[ZERO16, ZERO16[:-4]]), INVALID, "needs 64 bytes"),
    "raw count": (_request("simple", *PAIR, raw=[ZERO16]), INVALID, "holds 1 tensors for 2 inputs"),
    "contents and raw": (_request("simple", _int32("INPUT0", int_contents=[0] * 16), PAIR[1], raw=[ZERO16] * 2),
                         INVALID, "both contents and raw"),
    "contents of another type": (_request("simple", _int32("INPUT0", fp32_contents=[0.5] * 16),
                                          _int32("INPUT1", int_contents=[0] * 16)), INVALID, "use int_contents"),
    "64-bit data for INT32": (_request("simple", _int32("INPUT0", int_contents=[0] * 16),
                                       _tensor("INPUT1", "INT64", [1, 16], int64_contents=[2 ** 40] * 16)),
                              INVALID, "expects datatype INT32"),
    "negative dimension": (_request("simple", _int32("INPUT0", (-1, 16)), PAIR[1], raw=[ZERO16] * 2), INVALID,
                           "non-negative integers"),
    "unknown output": (_request("simple", *PAIR, raw=[ZERO16] * 2, outputs=["NOPE"]), INVALID, "unknown output 'NOPE'"),
    "NaN": (_request("batched", _tensor("INPUT0", "FP32", [1, 4]),
                     raw=[np.array([[0, np.nan, 0, 0]], np.float32).tobytes()]), INVALID, "NaN or infinite"),
    "not UTF-8": (_request("simple_identity", _tensor("INPUT0", "BYTES", [1, 1], bytes_contents=[b"\xff"])), INVALID,
                  "not valid UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_requests_get_invalid_argument(server, case):
    request, code, fragment = BAD[case]
    with pytest.raises(grpc.RpcError) as err:
        _raw(server).ModelInfer(request)
    assert err.value.code() == code and fragment in err.value.details(), err.value.details()


def test_shared_memory_trace_and_log_settings(server):
    """System shared memory registered over gRPC holds the inputs and receives the outputs; HTTP sees the same
    regions; trace and log settings are the HTTP ones; CUDA shared memory is refused, its status empty."""
    import tritonclient.utils.shared_memory as shm

    c, h = grpcclient.InferenceServerClient(server.grpc), httpclient.InferenceServerClient(server.url)
    x = _pair(np.random.default_rng(3), rows=2)
    size = x["INPUT0"].nbytes
    region = shm.create_shared_memory_region("io", "/edgedl_grpc_io", 4 * size)
    try:
        shm.set_shared_memory_region(region, [x["INPUT0"], x["INPUT1"]])
        c.register_system_shared_memory("io", "/edgedl_grpc_io", 4 * size)
        assert [r["name"] for r in h.get_system_shared_memory_status()] == ["io"]
        inputs = [grpcclient.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        for i, tensor in enumerate(inputs):
            tensor.set_shared_memory("io", size, offset=i * size)
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        for i, tensor in enumerate(outputs):
            tensor.set_shared_memory("io", size, offset=(2 + i) * size)
        result = c.infer("simple", inputs, outputs=outputs)
        assert [o.name for o in result.get_response().outputs] == ["OUTPUT0", "OUTPUT1"]
        np.testing.assert_array_equal(shm.get_contents_as_numpy(region, np.int32, [2, 16], offset=2 * size),
                                      x["INPUT0"] + x["INPUT1"])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(region, np.int32, [2, 16], offset=3 * size),
                                      x["INPUT0"] - x["INPUT1"])
        with pytest.raises(InferenceServerException, match="already in manager"):
            c.register_system_shared_memory("io", "/edgedl_grpc_io", size)
        c.unregister_system_shared_memory("io")
        assert h.get_system_shared_memory_status() == [] and not c.get_system_shared_memory_status().regions
    finally:
        shm.destroy_shared_memory_region(region)
    assert not c.get_cuda_shared_memory_status().regions
    with pytest.raises(InferenceServerException, match="CUDA shared memory is not available"):
        c.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64)
    c.unregister_cuda_shared_memory()
    settings = c.update_trace_settings("simple", {"trace_rate": "7"}, as_json=True)["settings"]
    assert settings["trace_rate"]["value"] == ["7"] == [h.get_trace_settings("simple")["trace_rate"]]
    assert h.get_trace_settings()["trace_rate"] == "1000"
    c.update_trace_settings("simple", {"trace_rate": None})
    assert h.get_trace_settings("simple")["trace_rate"] == "1000"
    assert c.update_log_settings({"log_verbose_level": 1}, as_json=True)["settings"]["log_verbose_level"] == \
           {"uint32_param": 1}
    assert h.get_log_settings()["log_verbose_level"] == 1
    c.update_log_settings({"log_verbose_level": 0})


def test_aio_concurrent_requests_batch_and_count_once(server):
    """32 concurrent aio calls on a batching model: each gets its own rows back; HTTP's statistics count them."""
    h = httpclient.InferenceServerClient(server.url)
    before = h.get_inference_statistics("batched")["model_stats"][0]["inference_count"]
    rows = [np.full((1, 4), i, np.float32) for i in range(32)]

    async def main():
        async with grpcaio.InferenceServerClient(server.grpc) as c:
            results = await asyncio.gather(*(c.infer("batched", _inputs(grpcaio, {"INPUT0": r}, "FP32")) for r in rows))
        return [r.as_numpy("OUTPUT0") for r in results]

    for row, got in zip(rows, asyncio.run(main())):
        np.testing.assert_array_equal(got, row)
    after = h.get_inference_statistics("batched")["model_stats"][0]["inference_count"]
    assert after - before == 32
    metrics = requests.get(f"http://{server.url}/metrics", timeout=10).text  # the same Prometheus counters as HTTP
    line = next(x for x in metrics.splitlines()
                if x.startswith('edgedl_inference_requests_total{model="batched",version="1",status="200"}'))
    assert int(float(line.split()[-1])) >= 32


def test_stream_answers_every_request_and_survives_a_bad_one(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    done, results = threading.Event(), []

    def callback(result, error):
        results.append((result, error))
        if len(results) == 10:
            done.set()

    rng = np.random.default_rng(1)
    sent = {}
    c.start_stream(callback)
    try:
        for i in range(10):
            x = _pair(rng)
            if i == 5:  # a malformed request in the middle of the stream
                inputs = _inputs(grpcclient, {k: v.astype(np.float32) for k, v in x.items()}, "FP32")
            else:
                inputs, sent[str(i)] = _inputs(grpcclient, x, "INT32"), x
            c.async_stream_infer("simple", inputs, request_id=str(i))
        assert done.wait(30)
    finally:
        c.stop_stream()
    errors = [e for r, e in results if e is not None]
    assert len(errors) == 1 and "expects datatype INT32" in str(errors[0])
    for result, error in results:
        if error is None:
            x = sent.pop(result.get_response().id)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x["INPUT0"] + x["INPUT1"])
    assert not sent


def test_aio_stream(server):
    rng = np.random.default_rng(2)
    pairs = [_pair(rng) for _ in range(6)]

    async def requests():
        for i, x in enumerate(pairs):
            yield {"model_name": "simple", "inputs": _inputs(grpcaio, x, "INT32"), "request_id": str(i)}

    async def main():
        async with grpcaio.InferenceServerClient(server.grpc) as c:
            out = {}
            async for result, error in c.stream_infer(requests()):
                assert error is None, error
                out[result.get_response().id] = result.as_numpy("OUTPUT1")
                if len(out) == len(pairs):
                    break
            return out

    got = asyncio.run(main())
    for i, x in enumerate(pairs):
        np.testing.assert_array_equal(got[str(i)], x["INPUT0"] - x["INPUT1"])


def test_api_key_guards_grpc_like_http(repo):
    with _serve(repo, "--api-key", KEY) as s:
        c = grpcclient.InferenceServerClient(s.grpc)
        assert c.is_server_live()  # liveness needs no key, as /v2/health/live
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
            with pytest.raises(InferenceServerException) as err:
                c.is_server_ready(headers=headers)
            assert err.value.status() == "StatusCode.UNAUTHENTICATED" and "Bearer <key>" in err.value.message()
        good = {"authorization": f"Bearer {KEY}"}
        assert c.is_server_ready(headers=good)
        x = _pair(np.random.default_rng(3))
        assert c.infer("simple", _inputs(grpcclient, x, "INT32"), headers=good).as_numpy("OUTPUT0").shape == (1, 16)
        for headers in (None, good):
            done, seen = threading.Event(), []
            c.start_stream(lambda result, error: (seen.append((result, error)), done.set()), headers=headers)
            try:
                c.async_stream_infer("simple", _inputs(grpcclient, x, "INT32"))
            except InferenceServerException:
                assert headers is None  # refused before the request could be sent; the callback has the reason
            assert done.wait(20)
            c.stop_stream()
            result, error = seen[0]
            if headers is None:
                assert result is None and "UNAUTHENTICATED" in str(error)
            else:
                assert error is None and result.as_numpy("OUTPUT1").shape == (1, 16)


def test_sigterm_lets_grpc_calls_in_flight_finish(repo):
    """A long gRPC call running when SIGTERM arrives completes; then the server exits cleanly."""
    s = _serve(repo)
    try:
        c = grpcclient.InferenceServerClient(s.grpc)
        x = np.random.default_rng(4).standard_normal((400, 512)).astype(np.float32)
        result = {}
        call = threading.Thread(target=lambda: result.update(r=c.infer("slow", _inputs(grpcclient, {"x": x}, "FP32"))))
        call.start()
        for _ in range(200):  # until the call is in the model (queued or running), at most ~10 s
            if 'edgedl_inference_in_flight{model="slow"} 1' in requests.get(f"http://{s.url}/metrics", timeout=5).text:
                break
            time.sleep(0.05)
        s.signal(signal.SIGTERM)
        call.join(60)
        assert result["r"].as_numpy("y").shape == (400, 512)
        assert s.proc.wait(30) == 0
    finally:
        s.stop()


def _serve_fails(*args, code: str | None = None) -> str:
    argv = [*EDGEDL, "serve", *map(str, args)]
    if code is not None:
        argv = [sys.executable, "-c", code, *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_grpc_startup_errors_are_one_line(tmp_path):
    repo = qa_models.write_repository(tmp_path / "models", [qa_models.identity("batched", np.float32, (4,))], "edgedl")
    port = free_port()
    assert "differ from the HTTP port" in _serve_fails("--model-repository", repo, "--port", port, "--grpc-port", port)
    no_grpc = ("import sys; sys.modules['hpack'] = None; sys.argv = ['edgedl', 'serve', *sys.argv[1:]]; "
               "from edgedl.cli import main; main()")
    assert "pip install 'edgedl[grpc]'" in _serve_fails("--model-repository", repo, "--port", "0", "--grpc-port", "0",
                                                       code=no_grpc)
    with _serve(repo) as running:
        taken = running.grpc.rsplit(":", 1)[1]
        assert "cannot listen for gRPC" in _serve_fails("--model-repository", repo, "--port", "0", "--grpc-port", taken)


def test_a_large_grpc_request_runs_off_the_event_loop(zoo, tmp_path):
    """A 12 MB ModelInfer (47,000 rows for the zoo MLP, an inline model) is decoded, run and encoded on worker
    threads, as over HTTP: /metrics answers while it is in flight (it reports it), which the event loop could
    not do if it were doing that work itself."""
    root = tmp_path / "models"
    place(root, "mlp", 1, zoo["mlp"].onnx)
    x = np.random.default_rng(0).random((47_000, 64), dtype=np.float32)
    result, seen = {}, []
    with _serve(root, "--threads", "1") as s:
        def big():
            c = grpcclient.InferenceServerClient(s.grpc)
            result["y"] = c.infer("mlp", _inputs(grpcclient, {"pixels": x}, "FP32"), client_timeout=120)

        worker = threading.Thread(target=big)
        worker.start()
        deadline = time.monotonic() + 120
        with requests.Session() as http:
            while worker.is_alive() and time.monotonic() < deadline:
                text = http.get(f"http://{s.url}/metrics", timeout=30).text
                seen.append('edgedl_inference_in_flight{model="mlp"} 1' in text)
                time.sleep(0.005)
        worker.join(120)
    assert result["y"].as_numpy("logits").shape == (47_000, 10)
    assert any(seen), f"/metrics never answered while the request was in flight ({len(seen)} answers)"
