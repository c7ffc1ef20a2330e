"""Triton's protocol extensions on `edgedl serve` where Triton's own QA tests do not reach: system shared memory
over HTTP (inputs and outputs in regions, BYTES, the failures), classification with a model's own labels, raw
bodies, trace files and log settings, repository loads with overrides, statistics under concurrent batching,
the three model control modes and BYTES warm-up. Real server processes over loopback, real tritonclient."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from serve_helpers import ServerProcess, gemm_model, place, strings_model

BATCHED = 'max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 3000 }\n'


@pytest.fixture(scope="module")
def repo(zoo, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ext")
    root = d / "repo"
    place(root, "cnn", 1, zoo["cnn"].onnx, BATCHED)
    place(root, "strings", 1, strings_model(d / "strings.onnx"))
    return root


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    trace = tmp_path_factory.mktemp("trace") / "trace.json"
    proc = ServerProcess("--model-repository", repo, "--model-control", "explicit", "--load-model", "*",
                         "--trace-file", trace)
    proc.trace = trace
    try:
        yield proc
    finally:
        proc.stop()


def _call(server, method: str, path: str, doc=None, raw: bytes | None = None, headers=None):
    """-> (status, parsed JSON or raw bytes, response headers)."""
    data = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
    request = urllib.request.Request(f"http://{server.url}{path}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            body, status, got = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        body, status, got = exc.read(), exc.code, dict(exc.headers)
    got = {k.lower(): v for k, v in got.items()}
    if got.get("content-type") == "application/json" and "inference-header-content-length" not in got and body:
        return status, json.loads(body), got
    return status, body, got


def _image(seed=0, rows=1):
    return np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32)


def _reference(zoo, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(zoo["cnn"].onnx), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


# --- system shared memory ---------------------------------------------------------------------------------------
def test_system_shared_memory_over_http(server, zoo):
    c = httpclient.InferenceServerClient(server.url)
    x = _image(1, rows=2)
    logits = _reference(zoo, x)
    region = shm.create_shared_memory_region("cam", "/edgedl_test_cam", x.nbytes + logits.nbytes)
    words = np.array(["hello", "world", "héllo"], dtype=object)
    text = shm.create_shared_memory_region("text", "/edgedl_test_text", 64)
    try:
        shm.set_shared_memory_region(region, [x])
        c.register_system_shared_memory("cam", "/edgedl_test_cam", x.nbytes + logits.nbytes)
        assert c.get_system_shared_memory_status() == [
            {"name": "cam", "key": "/edgedl_test_cam", "offset": 0, "byte_size": x.nbytes + logits.nbytes}]
        image = httpclient.InferInput("image", list(x.shape), "FP32")
        image.set_shared_memory("cam", x.nbytes)
        out = httpclient.InferRequestedOutput("logits", binary_data=True)
        out.set_shared_memory("cam", logits.nbytes, offset=x.nbytes)
        result = c.infer("cnn", [image], outputs=[out])
        entry = result.get_output("logits")
        assert entry["parameters"] == {"shared_memory_region": "cam", "shared_memory_byte_size": logits.nbytes,
                                       "shared_memory_offset": x.nbytes} and "data" not in entry
        np.testing.assert_allclose(shm.get_contents_as_numpy(region, np.float32, [2, 10], offset=x.nbytes), logits,
                                   rtol=1e-5, atol=1e-5)

        serialized = __import__("tritonclient.utils", fromlist=["serialize_byte_tensor"]).serialize_byte_tensor(words)
        shm.set_shared_memory_region(text, [serialized])
        c.register_system_shared_memory("text", "/edgedl_test_text", 64)
        item = httpclient.InferInput("text", [3], "BYTES")
        item.set_shared_memory("text", len(serialized.item()))
        flags = c.infer("strings", [item], outputs=[httpclient.InferRequestedOutput("is_hello")]).as_numpy("is_hello")
        assert flags.tolist() == [True, False, False]

        # what a client gets wrong is a 400 that says what
        for inputs, outputs, words_ in (
            ("nope", None, "Unable to find system shared memory region: 'nope'"),
            ("cam", ("cam", 8, x.nbytes), "should be at least 80 bytes to hold the results"),
            ("cam", ("cam", logits.nbytes, x.nbytes + 8), "Invalid offset + byte size"),
        ):
            image = httpclient.InferInput("image", list(x.shape), "FP32")
            image.set_shared_memory(inputs, x.nbytes)
            wanted = None
            if outputs:
                wanted = httpclient.InferRequestedOutput("logits", binary_data=True)
                wanted.set_shared_memory(*outputs[:2], offset=outputs[2])
            with pytest.raises(InferenceServerException, match=words_.replace("+", r"\+")):
                c.infer("cnn", [image], outputs=[wanted] if wanted else None)
        with pytest.raises(InferenceServerException, match="already in manager"):
            c.register_system_shared_memory("cam", "/edgedl_test_cam", 16)
        for key in ("/../etc/passwd", "/a/b", ""):
            with pytest.raises(InferenceServerException, match="not a POSIX shared memory name"):
                c.register_system_shared_memory("bad", key, 16)
        with pytest.raises(InferenceServerException, match="Unable to open shared memory region"):
            c.register_system_shared_memory("bad", "/edgedl_test_missing", 16)
        with pytest.raises(InferenceServerException, match="Invalid offset \\+ byte size"):
            c.register_system_shared_memory("big", "/edgedl_test_cam", 10 ** 9)
        os.truncate("/dev/shm/edgedl_test_cam", 16)  # the client shrinks it while registered: refused, not a crash
        image = httpclient.InferInput("image", list(x.shape), "FP32")
        image.set_shared_memory("cam", x.nbytes)
        with pytest.raises(InferenceServerException, match="smaller than registered"):
            c.infer("cnn", [image])
        assert c.is_server_live()
        status, body, _ = _call(server, "GET", "/v2/systemsharedmemory/region/nope/status")
        assert status == 404 and "Unable to find" in body["error"]
        c.unregister_system_shared_memory("cam")
        assert [r["name"] for r in c.get_system_shared_memory_status()] == ["text"]
        c.unregister_system_shared_memory()
        assert c.get_system_shared_memory_status() == []
    finally:
        shm.destroy_shared_memory_region(region)
        shm.destroy_shared_memory_region(text)


# --- classification, raw bodies ---------------------------------------------------------------------------------
def test_classification_with_the_models_own_labels(server, zoo):
    """The zoo CNN's metadata has labels '0'..'9': the top 3 per row as 'value:index:label', largest first."""
    c = httpclient.InferenceServerClient(server.url)
    x = _image(2, rows=2)
    logits = _reference(zoo, x)
    image = httpclient.InferInput("image", list(x.shape), "FP32")
    image.set_data_from_numpy(x)
    for binary in (False, True):
        result = c.infer("cnn", [image], outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary,
                                                                                  class_count=3)])
        got = result.as_numpy("logits")
        assert got.shape == (2, 3)
        for row, classes in zip(logits, got):
            top = np.argsort(row)[::-1][:3]
            parsed = [(v.decode() if isinstance(v, bytes) else v).split(":") for v in classes]
            assert [int(i) for _, i, _ in parsed] == top.tolist() and [lab for _, _, lab in parsed] == \
                   [str(i) for i in top]
            np.testing.assert_allclose([float(v) for v, _, _ in parsed], row[top], rtol=1e-6)
    status, body, _ = _call(server, "POST", "/v2/models/strings/infer", {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
        "outputs": [{"name": "text_out", "parameters": {"classification": 1}}]})
    assert status == 400 and "class result not available for output 'text_out'" in body["error"]


def test_raw_body_is_the_single_inputs_bytes(server, zoo):
    """Inference-Header-Content-Length: 0 - the body is the image's bytes, its batch of one deduced."""
    x = _image(3)
    status, body, headers = _call(server, "POST", "/v2/models/cnn/infer", raw=x.tobytes(),
                                  headers={"Inference-Header-Content-Length": "0"})
    assert status == 200
    header = int(headers["inference-header-content-length"])
    doc = json.loads(body[:header])
    assert doc["outputs"][0]["shape"] == [1, 10]
    np.testing.assert_allclose(np.frombuffer(body[header:], np.float32).reshape(1, 10), _reference(zoo, x),
                               rtol=1e-5, atol=1e-5)
    status, body, _ = _call(server, "POST", "/v2/models/cnn/infer", raw=x.tobytes()[:-4],
                            headers={"Inference-Header-Content-Length": "0"})
    assert status == 400 and "needs 256 bytes, got 252" in body["error"]


# --- trace and log settings -------------------------------------------------------------------------------------
def test_trace_settings_and_the_trace_file(repo, tmp_path):
    trace = tmp_path / "trace.json"
    proc = ServerProcess("--model-repository", repo, "--trace-file", trace)
    try:
        status, settings, _ = _call(proc, "GET", "/v2/trace/setting")
        assert settings == {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
                            "trace_file": str(trace), "trace_mode": "triton"}
        status, body, _ = _call(proc, "POST", "/v2/trace/setting", {"trace_file": "/etc/evil"})
        assert status == 501 and "can not be updated" in body["error"]
        status, body, _ = _call(proc, "POST", "/v2/trace/setting", {"trace_rate": "abc"})
        assert status == 400 and "Unable to parse 'trace_rate'" in body["error"]
        status, settings, _ = _call(proc, "POST", "/v2/models/cnn/trace/setting",
                                    {"trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "3"})
        assert status == 200 and settings["trace_level"] == ["TIMESTAMPS"] and settings["trace_count"] == "3"
        assert _call(proc, "GET", "/v2/trace/setting")[1]["trace_level"] == ["OFF"]  # the global one is unchanged
        c = httpclient.InferenceServerClient(proc.url)
        image = httpclient.InferInput("image", [1, 1, 8, 8], "FP32")
        image.set_data_from_numpy(_image(4))
        for i in range(10):
            c.infer("cnn", [image], request_id=f"r{i}")
        c.infer("strings", [_text_input(["x"])])  # another model: not traced
    finally:
        assert proc.stop() == 0
    traces = json.loads(trace.read_text())
    assert [t["request_id"] for t in traces] == ["r0", "r2", "r4"]  # one in 2, three at most
    names = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
             "COMPUTE_END", "REQUEST_END"]
    for t in traces:
        assert (t["model_name"], t["model_version"]) == ("cnn", 1)
        assert [s["name"] for s in t["timestamps"]] == names
        ns = [s["ns"] for s in t["timestamps"]]
        assert ns == sorted(ns) and ns[-1] > ns[0]


def _text_input(values):
    item = httpclient.InferInput("text", [len(values)], "BYTES")
    item.set_data_from_numpy(np.array(values, dtype=object))
    return item


def test_log_settings(server):
    status, values, _ = _call(server, "GET", "/v2/logging")
    assert values == {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                      "log_verbose_level": 0, "log_format": "default"}
    status, values, _ = _call(server, "POST", "/v2/logging", {"log_info": False, "log_format": "ISO8601"})
    assert status == 200 and (values["log_info"], values["log_format"]) == (False, "ISO8601")
    for change, code, words in (({"log_file": "/tmp/x"}, 501, "can not be updated"),
                                ({"log_info": "yes"}, 400, "true or false"),
                                ({"log_format": "xml"}, 400, "log_format must be one of"),
                                ({"colour": True}, 400, "unknown log setting")):
        status, body, _ = _call(server, "POST", "/v2/logging", change)
        assert (status, words in body["error"]) == (code, True), body
    _call(server, "POST", "/v2/logging", {"log_info": True, "log_format": "default"})
    status, body, _ = _call(server, "POST", "/v2/trace/setting", {"trace_level": ["TENSORS"]})
    assert status == 400 and "TENSORS is not supported" in body["error"]


# --- repository loads with overrides ----------------------------------------------------------------------------
def _load(server, name, **params):
    return _call(server, "POST", f"/v2/repository/models/{name}/load", {"parameters": params})


def test_a_load_with_config_and_file_overrides(server, tmp_path):
    model = gemm_model(tmp_path / "g.onnx", seed=5)
    config = json.dumps({"name": "fresh", "backend": "onnxruntime", "max_batch_size": 4,
                         "input": [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}],
                         "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]})
    content = base64.b64encode(model.read_bytes()).decode()
    status, body, _ = _load(server, "fresh", config=config, **{"file:1/model.onnx": content})
    assert status == 200, body
    c = httpclient.InferenceServerClient(server.url)
    assert c.is_model_ready("fresh") and c.get_model_config("fresh")["max_batch_size"] == 4
    x = httpclient.InferInput("pixels", [5, 64], "FP32")
    x.set_data_from_numpy(np.ones((5, 64), np.float32))
    with pytest.raises(InferenceServerException, match="more than this model's limit of 4"):
        c.infer("fresh", [x])
    for params, words in (({"file:1/model.onnx": content}, "need the 'config' parameter"),
                          ({"config": config, "file:../../evil.onnx": content}, "must be a relative path"),
                          ({"config": config, "file:1/" + "A" * 256: content}, "longer than 255 bytes"),
                          ({"config": config, "file:1/model.onnx": "not base64!"}, "not valid base64"),
                          ({"config": "{not json"}, "is not JSON"),
                          ({"config": json.dumps({"backend": "python"}), "file:1/model.onnx": content},
                           "platform 'python' is not supported"),
                          ({"colour": "blue"}, "unknown load parameter 'colour'")):
        status, body, _ = _load(server, "fresh", **params)
        assert status == 400 and words in body["error"], (params.keys(), body)
    assert c.is_model_ready("fresh")  # a refused load leaves the loaded model serving
    c.unload_model("fresh")


# --- statistics -------------------------------------------------------------------------------------------------
def test_statistics_under_concurrent_batching(server):
    """64 requests from 16 threads on a batching model: one execution per batch, and every count agrees."""
    c0 = httpclient.InferenceServerClient(server.url)
    before = c0.get_inference_statistics("cnn")["model_stats"][0]
    errors = []

    def client(seed):
        c = httpclient.InferenceServerClient(server.url)
        image = httpclient.InferInput("image", [1, 1, 8, 8], "FP32")
        image.set_data_from_numpy(_image(seed))
        try:
            for _ in range(4):
                c.infer("cnn", [image])
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    after = c0.get_inference_statistics("cnn")["model_stats"][0]
    stats = {k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"]
             for k in after["inference_stats"]}
    assert stats["success"] == stats["queue"] == stats["compute_input"] == stats["compute_infer"] == \
           stats["compute_output"] == 64 and stats["fail"] == 0
    assert after["inference_count"] - before["inference_count"] == 64
    executions = after["execution_count"] - before["execution_count"]
    assert executions < 64  # requests ran together
    old = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    batches = {b["batch_size"]: b["compute_infer"]["count"] - old.get(b["batch_size"], 0)
               for b in after["batch_stats"]}
    assert sum(batches.values()) == executions and sum(k * v for k, v in batches.items()) == 64
    assert max(batches) <= 8 and any(k > 1 and v for k, v in batches.items())
    for b in after["batch_stats"]:
        assert b["compute_input"]["count"] == b["compute_infer"]["count"] == b["compute_output"]["count"]


# --- model control ----------------------------------------------------------------------------------------------
def _wait_for(predicate, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_explicit_mode_loads_only_the_named_models(repo):
    with ServerProcess("--model-repository", repo, "--model-control", "explicit", "--load-model", "strings") as proc:
        c = httpclient.InferenceServerClient(proc.url)
        assert c.is_server_ready() and c.is_model_ready("strings") and not c.is_model_ready("cnn")
        index = {m["name"]: m for m in c.get_model_repository_index()}
        assert index["cnn"] == {"name": "cnn", "state": "UNAVAILABLE", "reason": "not loaded"}
        c.load_model("cnn")
        assert c.is_model_ready("cnn")
    with ServerProcess("--model-repository", repo, "--model-control", "explicit") as proc:  # none at all: ready
        c = httpclient.InferenceServerClient(proc.url)
        assert c.is_server_ready() and not c.is_model_ready("cnn") and not c.is_model_ready("strings")


def test_poll_mode_follows_the_repository(tmp_path, zoo):
    root = tmp_path / "repo"
    a, b = gemm_model(tmp_path / "a.onnx", seed=1), gemm_model(tmp_path / "b.onnx", seed=2)
    place(root, "gemm", 1, a)
    with ServerProcess("--model-repository", root, "--model-control", "poll", "--repository-poll-secs", "0.2") as proc:
        c = httpclient.InferenceServerClient(proc.url)
        x = httpclient.InferInput("pixels", [1, 64], "FP32")
        x.set_data_from_numpy(np.ones((1, 64), np.float32))
        first = c.infer("gemm", [x]).as_numpy("logits")
        with pytest.raises(InferenceServerException, match="not allowed if polling is enabled"):
            c.load_model("gemm")
        place(root, "added", 1, b)  # a new model folder: loaded
        assert _wait_for(lambda: c.is_model_ready("added"))
        (root / "gemm" / "1" / "model.onnx").write_bytes(b.read_bytes())  # changed files: reloaded
        assert _wait_for(lambda: not np.allclose(c.infer("gemm", [x]).as_numpy("logits"), first))
        (root / "broken" / "1").mkdir(parents=True)  # a model that cannot load: UNAVAILABLE with its reason
        (root / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
        assert _wait_for(lambda: any(m["name"] == "broken" and "could not load" in m.get("reason", "")
                                     for m in c.get_model_repository_index()))
        for f in (root / "added" / "1").iterdir():  # a removed model: unloaded
            f.unlink()
        (root / "added" / "1").rmdir()
        (root / "added").rmdir()
        assert _wait_for(lambda: not c.is_model_ready("added"))
        assert "added" not in {m["name"] for m in c.get_model_repository_index()}
        assert c.is_model_ready("gemm")


# --- warm-up of text models -------------------------------------------------------------------------------------
def test_text_models_warm_up_from_declared_samples_or_not_at_all(tmp_path):
    model = strings_model(tmp_path / "s.onnx")
    root = tmp_path / "repo"
    place(root, "plain", 1, model)
    place(root, "zero", 1, model, 'max_batch_size: 0\nmodel_warmup [{ name: "w" batch_size: 1 inputs { key: "text" '
                                  'value: { data_type: TYPE_STRING dims: [ 2 ] zero_data: true } } }]\n')
    place(root, "file", 1, model, 'max_batch_size: 0\nmodel_warmup [{ name: "w" batch_size: 1 inputs { key: "text" '
                                  'value: { data_type: TYPE_STRING dims: [ 1 ] input_data_file: "hello" } } }]\n')
    (root / "file" / "warmup").mkdir()
    (root / "file" / "warmup" / "hello").write_bytes(len(b"hello").to_bytes(4, "little") + b"hello")
    with ServerProcess("--model-repository", root) as proc:
        log = proc.stderr
        c = httpclient.InferenceServerClient(proc.url)
        assert c.infer("plain", [_text_input(["hello"])]).as_numpy("is_hello").tolist() == [True]
    assert "model plain: served without warm-up (its text input text has no declared sample" in log
    assert "model zero: served without" not in log and "model file: served without" not in log


# --- server metadata names exactly what is implemented ------------------------------------------------------------
def _infer_cnn(server, output: dict, **params):
    x = _image(5)
    head = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}], "outputs": [output], **params}).encode()
    return _call(server, "POST", "/v2/models/cnn/infer", raw=head)


def _classification(server):
    status, body, _ = _infer_cnn(server, {"name": "logits", "parameters": {"classification": 2}})
    return status == 200 and body["outputs"][0]["datatype"] == "BYTES" and len(body["outputs"][0]["data"]) == 2


def _binary_tensor_data(server):
    status, body, headers = _infer_cnn(server, {"name": "logits", "parameters": {"binary_data": True}})
    return status == 200 and int(headers["inference-header-content-length"]) < len(body)


def _statistics(server):
    status, body, _ = _call(server, "GET", "/v2/models/cnn/stats")
    stats = body["model_stats"][0]["inference_stats"] if status == 200 else {}
    return {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"} <= stats.keys()


# what a client of each extension does first, as Triton's documents define them (docs/protocol/extension_*.md)
PROBES = {
    "classification": _classification,
    "binary_tensor_data": _binary_tensor_data,
    "statistics": _statistics,
    "model_repository": lambda s: any(m["name"] == "cnn" for m in _call(s, "POST", "/v2/repository/index", {})[1]),
    "model_configuration": lambda s: _call(s, "GET", "/v2/models/cnn/config")[1].get("name") == "cnn",
    "system_shared_memory": lambda s: _call(s, "GET", "/v2/systemsharedmemory/status")[:2] == (200, []),
    "trace": lambda s: "trace_level" in _call(s, "GET", "/v2/trace/setting")[1],
    "logging": lambda s: "log_info" in _call(s, "GET", "/v2/logging")[1],
}


def test_server_metadata_names_exactly_the_implemented_extensions(server):
    """Every extension listed answers its probe; the ones Triton has and this server does not (CUDA shared memory:
    registering is refused; generate; sequence batching; schedule_policy's priority and timeout) are absent."""
    status, meta, _ = _call(server, "GET", "/v2")
    assert status == 200 and sorted(meta["extensions"]) == sorted(PROBES)
    assert {name: probe(server) for name, probe in PROBES.items()} == dict.fromkeys(PROBES, True)
    status, body, _ = _call(server, "POST", "/v2/cudasharedmemory/region/r/register",
                            {"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 64})
    assert status == 400 and "CUDA shared memory is not available" in body["error"]
    assert _call(server, "POST", "/v2/models/cnn/generate", {"text_input": "x"})[0] == 404
