"""Operations: auth, access log, startup errors, bundle manifests, the config.pbtxt reader."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serve_helpers import ServerProcess, place, serve_fails


def _get(url, path, headers=None):
    req = urllib.request.Request(f"http://{url}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_api_key_from_environment(zoo):
    with ServerProcess(zoo["mlp"].onnx, env={"EDGEDL_API_KEY": "s3cret"}) as proc:
        assert _get(proc.url, "/v2/health/live")[0] == 200  # liveness stays open for probes
        for path in ("/v2/health/ready", "/v2", "/v2/models/mlp", "/metrics"):
            status, body = _get(proc.url, path)
            assert status == 401 and "Authorization: Bearer" in json.loads(body)["error"], path
            assert _get(proc.url, path, {"Authorization": "Bearer wrong"})[0] == 401
            assert _get(proc.url, path, {"Authorization": "Bearer s3cret"})[0] == 200
        c = httpclient.InferenceServerClient(proc.url)
        x = np.zeros((1, 64), np.float32)
        i = httpclient.InferInput("pixels", [1, 64], "FP32")
        i.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as err:
            c.infer("mlp", [i])
        assert err.value.status() == "401"
        assert c.infer("mlp", [i], headers={"Authorization": "Bearer s3cret"}).as_numpy("logits").shape == (1, 10)


def test_json_access_log_and_default_host(zoo, tmp_path):
    log = tmp_path / "access.jsonl"
    with ServerProcess(zoo["cnn"].onnx, "--access-log", "json", "--access-log-file", log) as proc:
        assert "http://127.0.0.1:" in proc.stderr  # loopback unless --host is given
        c = httpclient.InferenceServerClient(proc.url)
        i = httpclient.InferInput("image", [1, 1, 8, 8], "FP32")
        i.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
        c.infer("cnn", [i], request_id="abc")
        _get(proc.url, "/v2/models/zzz")
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    infer = next(l for l in lines if l["path"] == "/v2/models/cnn/infer")
    assert infer["status"] == 200 and infer["id"] == "abc" and infer["model"] == "cnn" and infer["ms"] > 0
    assert any(l["path"] == "/v2/models/zzz" and l["status"] == 404 for l in lines)


def test_startup_errors_are_one_line(zoo, tmp_path):
    assert "not found" in serve_fails(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert "could not load" in serve_fails(bad)
    assert "either a MODEL.onnx or --model-repository" in serve_fails()
    assert "no version folder" in serve_fails("--model-repository", (tmp_path / "r").mkdir() or tmp_path)
    repo = tmp_path / "repo"
    place(repo, "cnn", 1, zoo["cnn"].onnx, "max_batch_size: [oops\n")
    assert "config.pbtxt" in serve_fails("--model-repository", repo)
    assert "did you mean" in serve_fails(zoo["cnn"].onnx, "--provider", "cpux")


def test_a_taken_port_is_a_one_line_error_and_exit_1(zoo):
    import socket

    from serve_helpers import EDGEDL

    with socket.socket() as holder:  # another process's server on the port
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        proc = subprocess.run([*EDGEDL, "serve", str(zoo["cnn"].onnx), "--port", str(port)], capture_output=True,
                              text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}") and "pick another port" in lines[0]
    assert "Errno" not in lines[0] and "Traceback" not in proc.stderr


def _manifest(repo, tamper: bool = False) -> None:
    files = {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(repo.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    if tamper:
        files[next(iter(files))] = "0" * 64
    (repo / "manifest.json").write_text(json.dumps({"format": "edgedl-bundle/1", "scope": "repository",
                                                    "files": files}))


def test_bundle_manifest_is_verified_before_loading(zoo, tmp_path):
    pytest.importorskip("edgedl.runtime.manifest")
    repo = tmp_path / "repo"
    place(repo, "mlp", 1, zoo["mlp"].onnx)
    _manifest(repo, tamper=True)
    assert "sha256" in serve_fails("--model-repository", repo)
    _manifest(repo)
    with ServerProcess("--model-repository", repo) as proc:
        assert httpclient.InferenceServerClient(proc.url).is_model_ready("mlp")


PBTXT = """
name: "cnn"   # a comment
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  { name: "image", data_type: TYPE_FP32, dims: [ 1, 8, 8 ] }
]
output [ { name: "logits" data_type: TYPE_FP32 dims: [10] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 300
  default_queue_policy { max_queue_size: 12 }
}
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


def test_pbtxt_reader_agrees_with_protobuf(tmp_path):
    from edgedl.runtime.server.pbtxt import first, parse_pbtxt
    from edgedl.runtime.server.repository import BatchPolicy, read_config

    fields = parse_pbtxt(PBTXT)
    assert first(fields, "max_batch_size") == 16
    assert first(fields, "input")["dims"] == [1, 8, 8]
    assert first(first(fields, "dynamic_batching"), "preferred_batch_size") == 4
    path = tmp_path / "config.pbtxt"
    path.write_text(PBTXT)
    _, policy = read_config(path, BatchPolicy())
    assert policy == BatchPolicy(max_batch_size=16, max_queue_delay_us=300, max_queue=12, instances=2)
    # the same text through Triton's own protobuf schema (a test-only dependency) reads the same values
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    cfg = text_format.Parse(PBTXT, model_config_pb2.ModelConfig())
    assert cfg.max_batch_size == policy.max_batch_size
    assert cfg.dynamic_batching.max_queue_delay_microseconds == policy.max_queue_delay_us
    assert cfg.dynamic_batching.default_queue_policy.max_queue_size == policy.max_queue
    assert sum(g.count for g in cfg.instance_group) == policy.instances
    assert list(cfg.input[0].dims) == first(fields, "input")["dims"]


def test_server_module_runs_without_click(zoo, tmp_path):
    """The device side needs no click: build the app and answer a request through ASGI directly."""
    code = f"""
import sys, asyncio, json
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'click', 'rich'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from pathlib import Path
from edgedl.runtime.server import ServerConfig, build
app = build(ServerConfig(model=Path({str(zoo['mlp'].onnx)!r})))
app.started = True
body = json.dumps({{"inputs": [{{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}}]}}).encode()
sent = []
async def main():
    msgs = [{{"type": "http.request", "body": body, "more_body": False}}]
    async def receive(): return msgs.pop(0)
    async def send(m): sent.append(m)
    await app({{"type": "http", "method": "POST", "path": "/v2/models/mlp/infer", "headers": []}}, receive, send)
asyncio.run(main())
assert sent[0]["status"] == 200, sent
print(json.loads(sent[1]["body"])["outputs"][0]["shape"], sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'click')))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 10] []"


def test_cli_serve_never_imports_torch_or_onnx(zoo):
    """`edgedl serve` through the real CLI entry point with torch and onnx unimportable: it serves."""
    port = __import__("serve_helpers").free_port()
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'onnxscript', 'sklearn'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['edgedl', 'serve', {str(zoo['cnn'].onnx)!r}, '--port', '{port}']
from edgedl.cli import main
main()
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "ready in" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "server exited before it was ready"
        c = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        i = httpclient.InferInput("image", [1, 1, 8, 8], "FP32")
        i.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
        assert c.infer("cnn", [i]).as_numpy("logits").shape == (1, 10)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
