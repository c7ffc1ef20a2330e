"""Serving benchmark: `edgedl serve` vs a hand-written FastAPI + onnxruntime JSON app, side by side in one run,
on loopback with every server pinned to CPU 0 and the clients (this process) to CPU 1.

Measures, for the zoo CNN: startup to ready, idle and under-load RSS, sequential round-trip p50/p99 vs the
in-process `Runner.run`, throughput at 1/8/32 clients (edgedl binary and JSON, with and without dynamic
batching; FastAPI JSON). For a dense model costing >= 1 ms per inference: throughput with and without batching
and the single-client latency batching adds. For a ResNet-18-sized model: a 1x3x224x224 input sent as binary
and as JSON vs the in-process run. Then, side by side with the real Triton 2.51 on the same models and
config.pbtxt (every process of both on the server CPU): sequential latency, wrk at 1 and 32 connections with and
without dynamic batching, Python HTTP / gRPC unary / gRPC stream clients at 32, a 3 MB JSON request, and a
1x3x224x224 input as binary, through system shared memory and in-process (needs wrk: apt-get install wrk).

usage: python benchmarks/serve_bench.py [--seconds 3] [--quick] [--triton with|only|skip]
Writes benchmarks/results/serve_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_loadgen import SyncClient, http_request, throughput  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SERVER_CPU, CLIENT_CPU = 0, 1
HOST = "127.0.0.1"


# --- models ------------------------------------------------------------------------------------------------------
def zoo_cnn() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_zoo

    return build_zoo(ROOT / "build" / "test-zoo")["cnn"].onnx


def dense_model(path: Path, width: int = 2048, depth: int = 4) -> Path:
    """[batch, 2048] -> 4 x (MatMul 2048x2048 + Relu) -> [batch, 10]: >= 1 ms per row here, weight-bound."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        prev = f"r{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((width, 10)).astype(np.float32), "head"))
    nodes.append(helper.make_node("MatMul", [prev, "head"], ["logits"]))
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def resnet18_like(path: Path) -> Path:
    """A ResNet-18-shaped network (random weights): 7x7 stem, 4 stages of 2 basic blocks, GAP, FC-1000."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    counter = [0]

    def conv(x, cin, cout, k, stride, relu=True):
        counter[0] += 1
        n = counter[0]
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{n}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{n}")])
        nodes.append(helper.make_node("Conv", [x, f"w{n}", f"b{n}"], [f"c{n}"], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4))
        if not relu:
            return f"c{n}"
        nodes.append(helper.make_node("Relu", [f"c{n}"], [f"r{n}"]))
        return f"r{n}"

    x = conv("image", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool", 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = conv(conv(x, cin, cout, 3, stride), cout, cout, 3, 1, relu=False)
            skip = conv(x, cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else x
            counter[0] += 1
            nodes += [helper.make_node("Add", [y, skip], [f"a{counter[0]}"]),
                      helper.make_node("Relu", [f"a{counter[0]}"], [f"o{counter[0]}"])]
            x, cin = f"o{counter[0]}", cout
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"])]
    inits += [numpy_helper.from_array((rng.standard_normal((512, 1000)) / 23).astype(np.float32), "fc"),
              numpy_helper.from_array(np.zeros(1000, np.float32), "fcb")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"]))
    graph = helper.make_graph(nodes, "resnet18_like",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


# --- requests ----------------------------------------------------------------------------------------------------
def v2_binary(port, model, name, x) -> bytes:
    head = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return http_request(HOST, port, f"/v2/models/{model}/infer", head + x.tobytes(),
                        {"Inference-Header-Content-Length": str(len(head))})


def v2_json(port, model, name, x) -> bytes:
    body = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    return http_request(HOST, port, f"/v2/models/{model}/infer", body)


def fastapi_json(port, x) -> bytes:
    return http_request(HOST, port, "/predict", json.dumps({"inputs": x.tolist()}).encode())


# --- servers -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, kind: str, model: Path | None, *extra: str, session: bool = False):
        self.port = free_port()
        if kind == "edgedl":
            cmd = [sys.executable, "-m", "edgedl", "serve", *([str(model)] if model else []), "--port", str(self.port),
                   "--threads", "1", *extra]
            ready = "/v2/health/ready"
        else:
            cmd = [sys.executable, str(ROOT / "benchmarks" / "fastapi_baseline.py"), str(model), str(self.port)]
            ready = "/health"
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), *cmd], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={**os.environ, "THREADS": "1"},
                                     start_new_session=session)
        while True:
            try:
                if urllib.request.urlopen(f"http://{HOST}:{self.port}{ready}", timeout=5).status == 200:
                    break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode())
                time.sleep(0.002)
        self.startup_s = time.perf_counter() - t0

    def rss(self, key="VmRSS") -> float:
        return rss_mib(self.proc.pid, key)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def sequential(port: int, request: bytes, iterations: int) -> dict:
    from edgedl.runtime import measure

    client = SyncClient(HOST, port)
    status, body = client.roundtrip(request)
    assert status == 200, body[:300]
    stats = measure(lambda: client.roundtrip(request), warmup=min(50, iterations), iterations=iterations)
    client.close()
    return {"p50_ms": stats.p50_ms, "p99_ms": stats.percentile_ms(99)}


def server_sums(port: int) -> dict:
    """Server-side totals from /metrics: request (body read to response), compute and queue seconds, count."""
    text = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10).read().decode()

    def total(prefix):
        return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(prefix))

    return {"request_ms": total("edgedl_inference_request_duration_seconds_sum"),
            "compute_ms": total("edgedl_inference_compute_duration_seconds_sum"),
            "queue_ms": total("edgedl_inference_queue_duration_seconds_sum"),
            "count": total("edgedl_inference_request_duration_seconds_count")}


class InProcess:
    """A worker process pinned to the server's CPU that times ``Runner.run`` on request, so in-process and
    server figures are measured on the same core, interleaved round by round."""

    CODE = """
import sys, json, time, numpy as np
from pathlib import Path
from edgedl.runtime import Runner, RunnerConfig, measure
runners = {}
for line in sys.stdin:
    path, shape, n, gap = json.loads(line)
    r = runners.get(path) or runners.setdefault(path, Runner(Path(path), RunnerConfig(intra_op_threads=1,
                                                              inter_op_threads=1, spinning=False)))
    feeds = {r.inputs[0].name: np.random.default_rng(0).random(tuple(shape), dtype=np.float32)}
    if gap == 0:  # back to back: the conservative (hot-cache) reference for tiny models
        st = measure(lambda: r.run(feeds), warmup=50, iterations=n)
        print(json.dumps({"p50_ms": st.p50_ms, "p99_ms": st.percentile_ms(99)}), flush=True)
        continue
    measure(lambda: r.run(feeds), warmup=3, iterations=1)
    samples = []
    for _ in range(n):  # spaced like sequential requests: on a shared CPU the scheduler favours a process that
        time.sleep(gap)  # sleeps between runs over one that computes back to back, and a server always sleeps
        samples.append(measure(lambda: r.run(feeds), warmup=0, iterations=1).samples_ns[0])
    samples = np.array(samples)
    print(json.dumps({"p50_ms": float(np.percentile(samples, 50)) / 1e6,
                      "p99_ms": float(np.percentile(samples, 99)) / 1e6}), flush=True)
"""

    def __init__(self):
        self.proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), sys.executable, "-c", self.CODE],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, model: Path, shape, iterations: int, gap_s: float = 0.0005) -> dict:
        self.proc.stdin.write(json.dumps([str(model), list(shape), iterations, gap_s]) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def median_of(rounds: list[dict]) -> dict:
    keys = rounds[0].keys()
    return {k: float(np.median([r[k] for r in rounds])) if isinstance(rounds[0][k], (int, float)) else rounds[0][k]
            for k in keys} | {"rounds": len(rounds)}


# --- the real Triton 2.51, side by side ---------------------------------------------------------------------------
# Triton's Python backend hands model.py every request the dynamic batcher gathered; this one runs them as one
# onnxruntime call (concatenated along the batch axis, one intra-op thread) and splits the result, as Triton's
# onnxruntime backend would - so Triton batches for real. (tests/triton_qa's model.py runs requests one by one.)
TRITON_BATCHING_MODEL_PY = '''\
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def execute(self, requests):
        parts = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        out = self.session.run(None, {self.input: parts[0] if len(parts) == 1 else np.concatenate(parts)})[0]
        ends = np.cumsum([len(p) for p in parts])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output, np.ascontiguousarray(o))])
                for o in np.split(out, ends)]
'''

# name -> (input dims, output dims, max_batch_size, extra config)
PEER_MODELS = {
    "cnn": ((1, 8, 8), (10,), 32, ""),
    "cnn_batched": ((1, 8, 8), (10,), 32, "dynamic_batching { max_queue_delay_microseconds: 500 }"),
    "resnet": ((3, 224, 224), (1000,), 1, ""),
}


def peer_repository(root: Path, flavour: str, onnx_files: dict[str, Path]) -> Path:
    """The same models and config.pbtxt for both servers; Triton's run model.onnx from a Python-backend model.py."""
    for name, (dims, out_dims, max_batch, extra) in PEER_MODELS.items():
        folder = root / name
        (folder / "1").mkdir(parents=True)
        backend = 'backend: "python"' if flavour == "triton" else 'platform: "onnxruntime_onnx"'
        (folder / "config.pbtxt").write_text(
            f'name: "{name}"\n{backend}\nmax_batch_size: {max_batch}\n'
            f'input [ {{ name: "image" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims))} ] }} ]\n'
            f'output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {", ".join(map(str, out_dims))} ] }} ]\n'
            f'instance_group [ {{ count: 1 kind: KIND_CPU }} ]\n{extra}\n')
        (folder / "1" / "model.onnx").write_bytes(onnx_files[name].read_bytes())
        if flavour == "triton":
            (folder / "1" / "model.py").write_text(TRITON_BATCHING_MODEL_PY)
    return root


def _group(pid: int) -> list[int]:
    """The processes of the session ``pid`` leads (Triton and its Python backend stubs)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == pid:
                out.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return out


class Peer:
    """One server of the side-by-side run: ``http`` / ``grpc`` ports, ``pid`` (the process whose CPU time the gRPC
    and HTTP clients read), ``pids`` (all of its processes), startup time and idle RSS (all processes)."""

    def __init__(self, kind: str, repo: Path, install=None):
        self.kind = kind
        t0 = time.perf_counter()
        if kind == "edgedl":
            grpc_port = free_port()
            self.server = Server("edgedl", None, "--model-repository", str(repo), "--grpc-port", str(grpc_port),
                                 session=True)
            self.http, self.grpc, self.pid = self.server.port, grpc_port, self.server.proc.pid
            self.startup_s = self.server.startup_s
        else:
            from real_triton import TritonServer

            self.server = TritonServer(install, repo, log=repo.parent / "triton.log")
            self.startup_s = time.perf_counter() - t0
            self.http, self.grpc = int(self.server.http.split(":")[1]), int(self.server.grpc.split(":")[1])
            self.pid = self.server.proc.pid
        self.pids = _group(self.pid)
        for pid in self.pids:  # every thread of every process onto the server CPU (Triton was started unpinned)
            subprocess.run(["taskset", "-a", "-p", "-c", str(SERVER_CPU), str(pid)], check=True,
                           stdout=subprocess.DEVNULL)
        time.sleep(1.0)
        self.idle_rss_mib = sum(rss_mib(pid) for pid in self.pids)

    def cpu_s(self) -> float:
        from serve_loadgen import cpu_seconds

        return sum(cpu_seconds(pid) for pid in self.pids)

    def measured(self, measure, seconds: float) -> dict:
        """``measure()``'s result plus requests per second of CPU time all the server's processes used meanwhile:
        on a machine shared with other jobs the raw rate depends on them, the rate per CPU-second much less."""
        cpu0 = self.cpu_s()
        result = measure()
        cpu = self.cpu_s() - cpu0
        return result | {"requests_per_server_cpu_s": result["requests_per_s"] * seconds / cpu if cpu else float("nan")}

    def stop(self):
        self.server.stop()


def wrk_throughput(port: int, request_path: str, body: bytes, headers: dict, connections: int, seconds: float,
                   work: Path) -> dict:
    """wrk (one thread, on the client CPU) posting ``body`` over ``connections`` keep-alive connections."""
    body_file = work / f"wrk-{port}-{len(body)}.bin"
    body_file.write_bytes(body)
    script = work / f"wrk-{port}-{len(body)}.lua"
    script.write_text('wrk.method = "POST"\n' + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
                      + f'local f = assert(io.open("{body_file}", "rb"))\nwrk.body = f:read("*a")\nf:close()\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script),
                          f"http://{HOST}:{port}{request_path}"], capture_output=True, text=True, timeout=seconds + 60,
                         check=True).stdout
    if "Requests/sec:" not in out:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec:")))
    errors = sum(int(line.split()[-1]) for line in out.splitlines() if line.strip().startswith("Non-2xx"))
    return {"requests_per_s": rps, "errors": errors}


def _binary_body(x: np.ndarray) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                "Content-Type": "application/octet-stream"}


class SharedMemoryPath:
    """A 1x3x224x224 input handed over in a system shared-memory region and the output read back from another, as a
    camera process on the device would: per request, copy the frame into the region, send the small JSON request,
    read the logits out of the output region."""

    def __init__(self, port: int, tag: str, x: np.ndarray, out_bytes: int = 4000):
        import tritonclient.utils.shared_memory as shm

        self.shm, self.port, self.x = shm, port, x
        self.names = (f"bench_in_{tag}", f"bench_out_{tag}")
        self.handles = [shm.create_shared_memory_region(n, f"/{n}", size)
                        for n, size in zip(self.names, (x.nbytes, out_bytes))]
        for name, size in zip(self.names, (x.nbytes, out_bytes)):
            body = json.dumps({"key": f"/{name}", "offset": 0, "byte_size": size}).encode()
            req = http_request(HOST, port, f"/v2/systemsharedmemory/region/{name}/register", body)
            client = SyncClient(HOST, port)
            status, reply = client.roundtrip(req)
            client.close()
            assert status == 200, reply
        self.request = http_request(HOST, port, "/v2/models/resnet/infer", json.dumps({
            "inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"shared_memory_region": self.names[0], "shared_memory_byte_size": x.nbytes}}],
            "outputs": [{"name": "logits", "parameters": {"shared_memory_region": self.names[1],
                                                          "shared_memory_byte_size": out_bytes}}]}).encode())

    def sequential(self, iterations: int) -> dict:
        from edgedl.runtime import measure

        client = SyncClient(HOST, self.port)

        def once():
            self.shm.set_shared_memory_region(self.handles[0], [self.x])
            status, body = client.roundtrip(self.request)
            assert status == 200, body[:300]
            return self.shm.get_contents_as_numpy(self.handles[1], np.float32, [1, 1000]).copy()

        once()
        stats = measure(once, warmup=2, iterations=iterations)
        client.close()
        return {"p50_ms": stats.p50_ms, "p99_ms": stats.percentile_ms(99)}

    def close(self):
        client = SyncClient(HOST, self.port)
        client.roundtrip(http_request(HOST, self.port, "/v2/systemsharedmemory/unregister", b""))
        client.close()
        for handle in self.handles:
            self.shm.destroy_shared_memory_region(handle)


TRITON_CASES = ("sequential", "wrk", "batched", "python", "binary", "json", "shm")


def _triton_cases(text: str) -> str:
    unknown = set(text.split(",")) - set(TRITON_CASES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown case(s) {', '.join(sorted(unknown))}; choose from "
                                         f"{', '.join(TRITON_CASES)}")
    return text


def triton_side_by_side(args, work: Path, inproc: "InProcess", cnn: Path, resnet: Path) -> dict:
    """edgedl and the real Triton 2.51 serving the same models (zoo CNN unbatched and batched 32 rows / 500 us, a
    ResNet-18-sized network), both pinned to the server CPU, measured round by round by the same clients."""
    sys.path.insert(0, str(ROOT / "tests" / "triton_qa"))
    sys.path.insert(0, str(ROOT / "tests"))
    from grpc_bench import _measure as grpc_measure
    from real_triton import triton_install

    cases = set(args.triton_cases.split(","))
    install = triton_install()
    onnx_files = {"cnn": cnn, "cnn_batched": cnn, "resnet": resnet}
    peers = {kind: Peer(kind, peer_repository(work / f"repo-{kind}", kind, onnx_files), install)
             for kind in ("edgedl", "triton")}
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    xl = np.random.default_rng(2).random((1, 3, 224, 224), dtype=np.float32)
    body, headers = _binary_body(x)
    seq_n, n_large = (300, 8) if args.quick else (1000, 15)
    json_large = {k: v2_json(p.http, "resnet", "image", xl) for k, p in peers.items()}
    shared = {k: SharedMemoryPath(p.http, k, xl) for k, p in peers.items()}
    R = {"models": {k: list(v) for k, v in PEER_MODELS.items()}, "json_request_bytes": len(json_large["edgedl"]),
         "triton_build": "tritonserver 2.51 (nvidia-pytriton 0.7.0), Python backend running the same model.onnx",
         "peers": {k: {"startup_to_ready_s": p.startup_s, "idle_rss_mib": p.idle_rss_mib, "processes": len(p.pids)}
                   for k, p in peers.items()}}
    rounds: dict[str, list] = {}

    def add(key, value):
        rounds.setdefault(key, []).append(value)

    try:
        for k in range(args.rounds):
            add("in_process|resnet", inproc(resnet, xl.shape, n_large, 0.005))
            for kind, p in peers.items():
                if "sequential" in cases:
                    add(f"{kind}|cnn_sequential_binary", sequential(p.http, v2_binary(p.http, "cnn", "image", x), seq_n))
                seconds = max(1, round(args.seconds))  # wrk takes whole seconds
                if "wrk" in cases:
                    add(f"{kind}|cnn_wrk_32", p.measured(lambda: wrk_throughput(
                        p.http, "/v2/models/cnn/infer", body, headers, 32, seconds, work), seconds))
                for c in (1, 32) if "batched" in cases else ():
                    add(f"{kind}|cnn_batched_wrk_{c}", p.measured(lambda: wrk_throughput(
                        p.http, "/v2/models/cnn_batched/infer", body, headers, c, seconds, work), seconds))
                for proto in ("http", "unary", "stream") if "python" in cases else ():  # each in a fresh process
                    add(f"{kind}|cnn_{proto}_py_32", p.measured(lambda: grpc_measure(
                        proto, p.grpc if proto != "http" else p.http, p.pid, 32, args.seconds), args.seconds))
                if "binary" in cases:
                    add(f"{kind}|resnet_binary", sequential(p.http, v2_binary(p.http, "resnet", "image", xl), n_large))
                if "json" in cases:
                    add(f"{kind}|resnet_json", sequential(p.http, json_large[kind], n_large))
                if "shm" in cases:
                    add(f"{kind}|resnet_shared_memory", shared[kind].sequential(n_large))
            print(f"triton side by side: round {k + 1}/{args.rounds} done", flush=True)
    finally:
        for s in shared.values():
            s.close()
        for p in peers.values():
            p.stop()
    for key, values in rounds.items():
        kind, metric = key.split("|")
        R.setdefault(kind, {})[metric] = median_of(values)
        theirs = rounds.get(f"triton|{metric}") if kind == "edgedl" else None
        fields = ("requests_per_s", "requests_per_server_cpu_s") if "requests_per_s" in values[0] else ("p50_ms",)
        for field in fields if theirs else ():
            if field in values[0]:  # each round's edgedl / Triton: the two ran seconds apart, so drift cancels
                R.setdefault("paired", {}).setdefault(metric, {})[field] = float(np.median(
                    [ours[field] / other[field] for ours, other in zip(values, theirs)]))
    return R


def render_triton(t: dict) -> list[str]:
    e, tr, ip = t["edgedl"], t["triton"], t["in_process"]["resnet"]["p50_ms"]
    rps = lambda side, key: side[key]["requests_per_s"]  # noqa: E731
    cpu = lambda side, key: side[key]["requests_per_server_cpu_s"]  # noqa: E731
    rows = [
        ("sequential p50, binary, zoo CNN (ms)", e["cnn_sequential_binary"]["p50_ms"], tr["cnn_sequential_binary"]["p50_ms"], "{:.3f}", "lower"),
        ("req/s, wrk 32 connections, batching off", rps(e, "cnn_wrk_32"), rps(tr, "cnn_wrk_32"), "{:,.0f}", "higher"),
        ("req/s, wrk 32 connections, batching on (32 rows, 500 µs)", rps(e, "cnn_batched_wrk_32"), rps(tr, "cnn_batched_wrk_32"), "{:,.0f}", "higher"),
        ("req/s, wrk 1 connection, batching on", rps(e, "cnn_batched_wrk_1"), rps(tr, "cnn_batched_wrk_1"), "{:,.0f}", "higher"),
        ("req/s, 32 Python clients, HTTP binary", rps(e, "cnn_http_py_32"), rps(tr, "cnn_http_py_32"), "{:,.0f}", "higher"),
        ("req/s, 32 Python clients, gRPC unary", rps(e, "cnn_unary_py_32"), rps(tr, "cnn_unary_py_32"), "{:,.0f}", "higher"),
        ("req/s, 32 Python clients, gRPC stream", rps(e, "cnn_stream_py_32"), rps(tr, "cnn_stream_py_32"), "{:,.0f}", "higher"),
        ("req per server CPU-s, wrk 32, batching off", cpu(e, "cnn_wrk_32"), cpu(tr, "cnn_wrk_32"), "{:,.0f}", "higher"),
        ("req per server CPU-s, wrk 32, batching on", cpu(e, "cnn_batched_wrk_32"), cpu(tr, "cnn_batched_wrk_32"), "{:,.0f}", "higher"),
        ("req per server CPU-s, 32 Python clients, HTTP binary", cpu(e, "cnn_http_py_32"), cpu(tr, "cnn_http_py_32"), "{:,.0f}", "higher"),
        ("req per server CPU-s, 32 Python clients, gRPC unary", cpu(e, "cnn_unary_py_32"), cpu(tr, "cnn_unary_py_32"), "{:,.0f}", "higher"),
        ("req per server CPU-s, 32 Python clients, gRPC stream", cpu(e, "cnn_stream_py_32"), cpu(tr, "cnn_stream_py_32"), "{:,.0f}", "higher"),
        ("idle RSS, all processes (MiB)", t["peers"]["edgedl"]["idle_rss_mib"], t["peers"]["triton"]["idle_rss_mib"], "{:.0f}", "lower"),
        ("start to ready (s)", t["peers"]["edgedl"]["startup_to_ready_s"], t["peers"]["triton"]["startup_to_ready_s"], "{:.2f}", "lower"),
        (f"1x3x224x224, {t['json_request_bytes'] / 1e6:.1f} MB JSON request, p50 (ms)", e["resnet_json"]["p50_ms"], tr["resnet_json"]["p50_ms"], "{:.1f}", "lower"),
        ("1x3x224x224 binary, p50 (ms)", e["resnet_binary"]["p50_ms"], tr["resnet_binary"]["p50_ms"], "{:.2f}", "lower"),
        ("1x3x224x224 system shared memory, p50 (ms)", e["resnet_shared_memory"]["p50_ms"], tr["resnet_shared_memory"]["p50_ms"], "{:.2f}", "lower"),
    ]
    out = ["", "## Side by side with the real Triton 2.51", "",
           f"{t['triton_build']}; both servers and all their processes on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}, "
           "the same models and config.pbtxt (Triton's model.py runs a gathered batch as one onnxruntime call). "
           f"In-process `Runner.run` of the ResNet-18-sized model: {ip:.2f} ms.", "",
           "| | edgedl | Triton 2.51 | edgedl / Triton | better |", "|---|---:|---:|---:|---|"]
    for label, ours, theirs, fmt, better in rows:
        ratio = ours / theirs if theirs else float("nan")
        wins = (ours > theirs) if better == "higher" else (ours < theirs)
        out.append(f"| {label} | {fmt.format(ours)} | {fmt.format(theirs)} | {ratio:.2f}x | "
                   f"{'edgedl' if wins else 'Triton'} |")
    out += ["", f"Load average {', '.join(f'{v:.1f}' for v in t['load_average_at_start'])} at the start (other jobs "
            "ran on both CPUs): req/s depend on them, 'req per server CPU-s' (responses / CPU time of all the server's "
            "processes in the window) much less.", ""]
    paired = t.get("paired", {})
    ratios = [f"{metric} {v['requests_per_s']:.2f}x req/s, {v['requests_per_server_cpu_s']:.2f}x per server CPU-s"
              for metric, v in sorted(paired.items()) if "requests_per_server_cpu_s" in v]
    ratios += [f"{metric} {v['p50_ms']:.2f}x p50 latency" for metric, v in sorted(paired.items()) if "p50_ms" in v]
    if ratios:
        out += ["Median of each round's edgedl / Triton ratio (the two measured seconds apart in the same round, so a "
                "slow spell of the machine hits both): " + "; ".join(ratios) + ".", ""]
    out += ["Added to the in-process run (1x3x224x224): " + "; ".join(
        f"{kind} binary +{side['resnet_binary']['p50_ms'] - ip:.2f} ms, shared memory "
        f"+{side['resnet_shared_memory']['p50_ms'] - ip:.2f} ms" for kind, side in (("edgedl", e), ("Triton", tr))) + "."]
    return out


# --- the benchmark -----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="per throughput measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians over rounds")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument("--triton", choices=("with", "only", "skip"), default="with",
                    help="the side-by-side run with the real Triton 2.51 (downloaded once into build/triton-2.51; "
                         "needs wrk): after the rest, only it (kept with the other figures of the last run), or not "
                         "(its figures of the last run kept)")
    ap.add_argument("--triton-cases", default=",".join(TRITON_CASES), type=_triton_cases,
                    help="the side-by-side cases to measure, comma-separated (with --triton only, the others keep "
                         f"their last figures): {', '.join(TRITON_CASES)}")
    args = ap.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    seq_n = 300 if args.quick else 1000
    work = Path(tempfile.mkdtemp(prefix="edgedl-serve-bench-"))
    cnn = zoo_cnn()
    dense = dense_model(work / "dense.onnx")
    resnet = resnet18_like(work / "resnet18_like.onnx")
    load = os.getloadavg()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
              "cpus": os.cpu_count(), "command": "python benchmarks/serve_bench.py " + " ".join(sys.argv[1:]),
              "pinning": f"servers taskset -c {SERVER_CPU}, clients on CPU {CLIENT_CPU}",
              "load_average_at_start": load, "cnn": {}, "dense": {}, "large": {}}
    inproc = InProcess()
    if args.triton == "only":
        previous = json.loads((RESULTS / "serve_bench.json").read_text())
        measured = triton_side_by_side(args, work, inproc, cnn, resnet)
        stamp = {"date": report["date"], "command": report["command"], "load_average_at_start": load}
        if set(args.triton_cases.split(",")) == set(TRITON_CASES):
            previous["triton_side_by_side"] = measured | stamp
        else:  # some cases: their figures replace the last ones, the rest stay, and the table says which is which
            kept = previous["triton_side_by_side"]
            large_cases = {"binary", "json", "shm"} & set(args.triton_cases.split(","))
            for kind in ("edgedl", "triton", "in_process", "paired"):
                if kind != "in_process" or large_cases:  # the in-process figure goes with the large cases
                    kept[kind] = kept.get(kind, {}) | measured.get(kind, {})
            kept.setdefault("updates", []).append({**stamp, "cases": args.triton_cases,
                                                   "metrics": sorted(measured.get("edgedl", {}))})
        inproc.close()
        (RESULTS / "serve_bench.json").write_text(json.dumps(previous, indent=2))
        (RESULTS / "serve_bench.md").write_text(render(previous))
        print("\n".join(render_triton(previous["triton_side_by_side"])))
        return

    # --- CNN: edgedl (no batching), edgedl (batching), FastAPI; all up at once, measured round by round -----------
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    R = report["cnn"]
    servers = {"edgedl": Server("edgedl", cnn), "edgedl batching": Server("edgedl", cnn, "--max-batch-size", "32"),
               "fastapi": Server("fastapi", cnn)}
    requests = {}
    for label, server in servers.items():
        R[label] = {"startup_to_ready_s": server.startup_s, "idle_rss_mib": server.rss()}
        requests[label] = ({"json": fastapi_json(server.port, x)} if label == "fastapi" else
                           {"binary": v2_binary(server.port, "cnn", "image", x),
                            "json": v2_json(server.port, "cnn", "image", x)})
    rounds: dict[str, list] = {}
    for k in range(args.rounds):
        rounds.setdefault("in_process_runner_run", []).append(inproc(cnn, x.shape, seq_n * 5, 0.0))
        for label, server in servers.items():
            for proto, req in requests[label].items():
                rounds.setdefault(f"{label}|sequential_{proto}", []).append(sequential(server.port, req, seq_n))
                for clients in (1, 8, 32):
                    rounds.setdefault(f"{label}|throughput_{proto}_{clients}", []).append(
                        throughput(HOST, server.port, req, clients, args.seconds, server_pid=server.proc.pid))
        print(f"cnn round {k + 1}/{args.rounds} done", flush=True)
    R["in_process_runner_run"] = median_of(rounds.pop("in_process_runner_run"))
    for key, values in rounds.items():
        label, metric = key.split("|")
        R[label][metric] = median_of(values)
    for label, server in servers.items():
        R[label]["peak_rss_mib"] = server.rss("VmHWM")
        server.stop()

    # --- dense (>= 1 ms per inference): batching at 32 clients, and what it costs one client ------------------------
    xd = np.random.default_rng(1).random((1, 2048), dtype=np.float32)
    D = report["dense"]
    modes = {"no batching": Server("edgedl", dense),
             "batching 32 / 500 us": Server("edgedl", dense, "--max-batch-size", "32", "--max-queue-delay-us", "500")}
    rounds = {}
    for k in range(args.rounds):
        rounds.setdefault("in_process_runner_run", []).append(inproc(dense, xd.shape, 200, 0.002))
        for label, server in modes.items():
            req = v2_binary(server.port, "dense", "x", xd)
            rounds.setdefault(f"{label}|sequential_binary", []).append(sequential(server.port, req, 200))
            rounds.setdefault(f"{label}|throughput_32", []).append(throughput(HOST, server.port, req, 32, args.seconds, server_pid=server.proc.pid))
    D["in_process_runner_run"] = median_of(rounds.pop("in_process_runner_run"))
    for key, values in rounds.items():
        label, metric = key.split("|")
        D.setdefault(label, {})[metric] = median_of(values)
    for server in modes.values():
        server.stop()
    print("dense", D, flush=True)

    # --- large tensor: 1x3x224x224 as binary vs JSON vs in-process ------------------------------------------------
    xl = np.random.default_rng(2).random((1, 3, 224, 224), dtype=np.float32)
    L = report["large"]
    n = 8 if args.quick else 15
    server = Server("edgedl", resnet)
    L["startup_to_ready_s"] = server.startup_s
    rounds = {}
    for k in range(args.rounds):
        rounds.setdefault("in_process_runner_run", []).append(inproc(resnet, xl.shape, n, 0.005))
        before = server_sums(server.port)
        rounds.setdefault("binary", []).append(sequential(server.port, v2_binary(server.port, "resnet18_like", "image", xl), n))
        after = server_sums(server.port)
        count = after["count"] - before["count"]
        rounds.setdefault("binary_server_side", []).append(
            {k: (after[k] - before[k]) / count * 1e3 for k in ("request_ms", "compute_ms", "queue_ms")})
        rounds.setdefault("json", []).append(sequential(server.port, v2_json(server.port, "resnet18_like", "image", xl), n))
    for key, values in rounds.items():
        L[key] = median_of(values)
    server.stop()
    if args.triton == "with":
        report["triton_side_by_side"] = triton_side_by_side(args, work, inproc, cnn, resnet) | {
            "date": report["date"], "command": report["command"], "load_average_at_start": load}
    elif (RESULTS / "serve_bench.json").is_file():  # skip: the side-by-side figures of the last run stay
        previous = json.loads((RESULTS / "serve_bench.json").read_text()).get("triton_side_by_side")
        if previous:
            report["triton_side_by_side"] = previous
    inproc.close()
    print("large", L, flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_bench.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "serve_bench.md").write_text(render(report))
    print(render(report))


def render(r: dict) -> str:
    c = r["cnn"]
    base = c["in_process_runner_run"]["p50_ms"]
    out = [f"# edgedl serve benchmark ({r['date']}, {r['machine']}, {r['cpus']} CPUs; {r['pinning']})", "",
           f"Shared machine: load average {', '.join(f'{v:.1f}' for v in r['load_average_at_start'])} at start "
           "(other jobs ran on both CPUs); every figure is the median of interleaved rounds.", "",
           f"`{r['command']}`. Loopback, keep-alive connections, pre-encoded requests (benchmarks/serve_loadgen.py);",
           "the FastAPI app is benchmarks/fastapi_baseline.py on the same uvicorn + httptools + uvloop; onnxruntime "
           "uses 1 intra-op thread everywhere.", "",
           "In-process figures come from a worker pinned to the server's CPU (for the dense and large models, runs "
           "spaced by a short sleep like sequential requests: the scheduler favours a process that sleeps).", "",
           "'req per server CPU-s' divides responses by the CPU time the server process used in the window: other "
           "jobs on the server's CPU change req/s a lot, this figure much less.", "",
           f"## Zoo CNN (1x1x8x8), in-process `Runner.run` p50 {base * 1e3:.1f} µs", "",
           "| server | request | sequential p50 ms | p99 ms | overhead vs in-process µs | req/s 1 client | 8 | 32 | "
           "req per server CPU-s at 1 / 8 / 32 | startup s | idle RSS MiB | peak RSS MiB |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label in ("edgedl", "edgedl batching", "fastapi"):
        e = c[label]
        for proto in ("binary", "json"):
            if f"sequential_{proto}" not in e:
                continue
            s = e[f"sequential_{proto}"]
            t = [e[f"throughput_{proto}_{n}"]["requests_per_s"] for n in (1, 8, 32)]
            u = " / ".join(f"{e[f'throughput_{proto}_{n}']['requests_per_server_cpu_s']:,.0f}" for n in (1, 8, 32))
            out.append(f"| {label} | {proto} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {(s['p50_ms'] - base) * 1e3:.0f} | "
                       f"{t[0]:,.0f} | {t[1]:,.0f} | {t[2]:,.0f} | {u} | {e['startup_to_ready_s']:.2f} | "
                       f"{e['idle_rss_mib']:.1f} | {e['peak_rss_mib']:.1f} |")
    fa = c["fastapi"]["throughput_json_32"]
    for key, what in (("requests_per_s", "req/s"), ("requests_per_server_cpu_s", "req per server CPU-s")):
        out += ["", f"At 32 clients vs FastAPI (JSON), {what}: " + ", ".join(
            f"{label} {proto} {c[label][f'throughput_{proto}_32'][key] / fa[key]:.2f}x"
            for label in ("edgedl", "edgedl batching") for proto in ("binary", "json")) + "."]
    d = r["dense"]
    out += ["", f"## Dense model (4x2048 MatMul, in-process p50 {d['in_process_runner_run']['p50_ms']:.2f} ms), binary",
            "", "| mode | sequential p50 ms | req/s 32 clients | req per server CPU-s | p50 ms at 32 |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for label in ("no batching", "batching 32 / 500 us"):
        e = d[label]
        out.append(f"| {label} | {e['sequential_binary']['p50_ms']:.3f} | "
                   f"{e['throughput_32']['requests_per_s']:,.0f} | {e['throughput_32']['requests_per_server_cpu_s']:,.0f} | "
                   f"{e['throughput_32']['p50_ms']:.2f} |")
    nb, b = d["no batching"], d["batching 32 / 500 us"]
    out += ["", f"Batching gain at 32 clients: {b['throughput_32']['requests_per_s'] / nb['throughput_32']['requests_per_s']:.2f}x; "
            f"single-client latency added: {(b['sequential_binary']['p50_ms'] - nb['sequential_binary']['p50_ms']) * 1e3:.0f} µs "
            "(queue delay 500 µs)."]
    L = r["large"]
    ip = L["in_process_runner_run"]["p50_ms"]
    out += ["", "## Large tensor: 1x3x224x224 FP32 into a ResNet-18-sized model", "",
            "| path | p50 ms | added vs in-process |", "| --- | ---: | ---: |",
            f"| in-process `Runner.run` | {ip:.2f} | - |",
            f"| edgedl serve, binary | {L['binary']['p50_ms']:.2f} | {(L['binary']['p50_ms'] / ip - 1) * 100:.1f} % |",
            f"| edgedl serve, JSON | {L['json']['p50_ms']:.2f} | {(L['json']['p50_ms'] / ip - 1) * 100:.1f} % |"]
    if "binary_server_side" in L:
        b = L["binary_server_side"]
        out += ["", f"Server side, binary (mean per request, from /metrics): {b['request_ms']:.2f} ms from request to "
                f"response, of which {b['compute_ms']:.2f} ms onnxruntime and {b['queue_ms']:.2f} ms queue: the protocol "
                f"work is {b['request_ms'] - b['compute_ms']:.2f} ms; the rest of the round trip is loopback TCP and "
                "the client."]
    if "triton_side_by_side" in r:
        t = r["triton_side_by_side"]
        out += render_triton(t)
        if t.get("date") != r["date"]:
            out += ["", f"(The side-by-side section was measured {t['date']} with `{t['command']}`.)"]
        for u in t.get("updates", []):
            out += ["", f"(Re-measured {u['date']}, load average {', '.join(f'{v:.1f}' for v in u['load_average_at_start'])}"
                    f", both servers again side by side: {', '.join(u['metrics'])}, with `{u['command']}`.)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
