"""Serving benchmark: `edgedl serve` vs a hand-written FastAPI + onnxruntime JSON app, side by side in one run,
on loopback with every server pinned to CPU 0 and the clients (this process) to CPU 1.

Measures, for the zoo CNN: startup to ready, idle and under-load RSS, sequential round-trip p50/p99 vs the
in-process `Runner.run`, throughput at 1/8/32 clients (edgedl binary and JSON, with and without dynamic
batching; FastAPI JSON). For a dense model costing >= 1 ms per inference: throughput with and without batching
and the single-client latency batching adds. For a ResNet-18-sized model: a 1x3x224x224 input sent as binary
and as JSON vs the in-process run.

usage: python benchmarks/serve_bench.py [--seconds 3] [--quick]
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
    def __init__(self, kind: str, model: Path, *extra: str):
        self.port = free_port()
        if kind == "edgedl":
            cmd = [sys.executable, "-m", "edgedl", "serve", str(model), "--port", str(self.port), "--threads", "1", *extra]
            ready = "/v2/health/ready"
        else:
            cmd = [sys.executable, str(ROOT / "benchmarks" / "fastapi_baseline.py"), str(model), str(self.port)]
            ready = "/health"
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), *cmd], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={**os.environ, "THREADS": "1"})
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


# --- the benchmark -----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="per throughput measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians over rounds")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
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
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
