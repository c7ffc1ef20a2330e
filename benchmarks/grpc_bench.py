"""gRPC vs HTTP binary on the same `edgedl serve` process: requests per second at 1 / 8 / 32 clients on the zoo CNN,
server pinned to CPU 0 and the clients to CPU 1, rounds interleaved, medians.

Two kinds of client. C load generators, which cost the least next to the server: wrk (HTTP/1.1 binary
requests) and h2load (nghttp2's, gRPC unary calls: a pre-serialized ModelInferRequest over HTTP/2, one call
in flight per connection; it counts HTTP statuses, so the server's statistics check that every call
succeeded). Python clients, as users run them: pre-encoded HTTP requests on keep-alive connections
(serve_loadgen) and grpc.aio's raw calls (unary: one call per request, as tritonclient.grpc's infer; stream:
ModelStreamInfer with one request in flight per client, as perf_analyzer --streaming); a grpc.aio client costs
more CPU per call than the server it measures. For reference, grpcio's own asyncio server answering with a
canned reply (no model): what a gRPC call costs in grpcio before any model runs, the reason edgedl serves
gRPC with its own HTTP/2 layer.

usage: python benchmarks/grpc_bench.py [--rounds 5] [--seconds 2] [--batching]
needs wrk and h2load (apt-get install wrk nghttp2-client). Writes benchmarks/results/grpc_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_bench import (CLIENT_CPU, HOST, SERVER_CPU, _binary_body, free_port, v2_binary, wrk_throughput,  # noqa: E402
                         zoo_cnn)
from serve_loadgen import cpu_seconds, throughput  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CLIENTS = (1, 8, 32)
METHOD = "/inference.GRPCInferenceService/"


def grpc_request(model: str, name: str, x: np.ndarray) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=list(x.shape))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()]).SerializeToString()


def grpc_throughput(address: str, request: bytes, clients: int, seconds: float, stream: bool, server_pid: int,
                    warmup_s: float = 0.5) -> dict:
    import grpc

    counts = [0, 0, 0]  # measured requests, errors, all requests (the CPU window includes the warm-up)

    async def unary_client(channel, stop_at, warm_until):
        call = channel.unary_unary(METHOD + "ModelInfer")
        while (now := time.perf_counter()) < stop_at:
            try:
                await call(request)
                counts[0] += now >= warm_until
                counts[2] += 1
            except grpc.RpcError:
                counts[1] += 1

    async def stream_client(channel, stop_at, warm_until):
        call = channel.stream_stream(METHOD + "ModelStreamInfer")()
        while (now := time.perf_counter()) < stop_at:
            await call.write(request)
            reply = await call.read()
            counts[0 if reply[:1] == b"\x12" else 1] += now >= warm_until  # field 2: infer_response
            counts[2] += 1
        await call.done_writing()

    async def main():
        # one channel per client, as separate client processes would have (a shared channel is one connection)
        channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(clients)]
        now = time.perf_counter()
        warm_until, stop_at = now + warmup_s, now + warmup_s + seconds
        client = stream_client if stream else unary_client
        await asyncio.gather(*(client(c, stop_at, warm_until) for c in channels))
        for c in channels:
            await c.close()

    cpu0 = cpu_seconds(server_pid)
    asyncio.run(main())
    cpu = cpu_seconds(server_pid) - cpu0
    return {"clients": clients, "requests_per_s": counts[0] / seconds, "errors": counts[1],
            "requests_per_server_cpu_s": counts[2] / cpu if cpu else float("nan")}


def h2load_throughput(port: int, request: bytes, clients: int, seconds: float, server_pid: int, work: Path,
                      stats_port: int | None = None) -> dict:
    """h2load sending ``request`` (a serialized ModelInferRequest) as gRPC unary calls over ``clients``
    connections, one in flight on each. h2load checks HTTP statuses only: with ``stats_port``, the server's
    statistics must count every call as a success (gRPC's status travels in trailers)."""
    import subprocess

    body = work / f"h2load-{len(request)}.bin"
    body.write_bytes(len(request).to_bytes(5, "big") + request)  # flag 0, length: the gRPC message prefix
    before = _successes(stats_port) if stats_port else None
    cpu0 = cpu_seconds(server_pid)
    out = subprocess.run(["h2load", "-D", str(max(1, round(seconds))), "-c", str(clients), "-m", "1", "-d", str(body),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://{HOST}:{port}{METHOD}ModelInfer"], capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout
    cpu = cpu_seconds(server_pid) - cpu0
    line = next(x for x in out.splitlines() if x.startswith("finished in"))
    rate = float(line.split(",")[1].split()[0])
    codes = next(x for x in out.splitlines() if x.startswith("status codes:")).split()
    ok = int(codes[2])
    errors = 0
    if stats_port:
        errors = ok - (_successes(stats_port) - before)
    return {"clients": clients, "requests_per_s": rate, "errors": errors + int(codes[6]) + int(codes[8]),
            "requests_per_server_cpu_s": ok / cpu if cpu else float("nan")}


def _successes(port: int) -> int:
    import urllib.request

    doc = json.loads(urllib.request.urlopen(f"http://{HOST}:{port}/v2/models/cnn/stats", timeout=10).read())
    return doc["model_stats"][0]["inference_stats"]["success"]["count"]


def wrk_binary(port: int, x: np.ndarray, clients: int, seconds: float, server_pid: int, work: Path) -> dict:
    body, headers = _binary_body(x)
    cpu0 = cpu_seconds(server_pid)
    result = wrk_throughput(port, "/v2/models/cnn/infer", body, headers, clients, seconds, work)
    cpu = cpu_seconds(server_pid) - cpu0
    return {"clients": clients, **result,
            "requests_per_server_cpu_s": result["requests_per_s"] * max(1, round(seconds)) / cpu if cpu else float("nan")}


# the ceiling: grpcio's asyncio server answering every call with a canned reply, no model and no decoding
ECHO_SERVER = """
import asyncio, sys, grpc
async def main(port):
    server = grpc.aio.server()
    async def unary(request, context):
        return b"\\x0a\\x03cnn"
    async def stream(requests, context):
        async for request in requests:
            yield b"\\x12\\x05\\x0a\\x03cnn"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(unary),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()
try:
    import uvloop
    uvloop.run(main(int(sys.argv[1])))
except ImportError:
    asyncio.run(main(int(sys.argv[1])))
"""


def _client(protocol: str, port: int, server_pid: int, clients: int, seconds: float, stats_port: int = 0) -> dict:
    """One measurement, in this (fresh) process: grpc's core keeps threads busy in a process after its calls end,
    which would slow an HTTP client measured after it in the same process by 2x."""
    import tempfile

    os.sched_setaffinity(0, {CLIENT_CPU})
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    if protocol in ("wrk", "h2load"):
        with tempfile.TemporaryDirectory() as work:
            if protocol == "wrk":
                return wrk_binary(port, x, clients, seconds, server_pid, Path(work))
            return h2load_throughput(port, grpc_request("cnn", "image", x), clients, seconds, server_pid, Path(work),
                                     stats_port or None)
    if protocol == "http":
        return throughput(HOST, port, v2_binary(port, "cnn", "image", x), clients, seconds, server_pid=server_pid)
    return grpc_throughput(f"{HOST}:{port}", grpc_request("cnn", "image", x), clients, seconds,
                           protocol == "stream", server_pid)


def _measure(protocol: str, port: int, server_pid: int, clients: int, seconds: float, stats_port: int = 0) -> dict:
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--client", protocol, str(port), str(server_pid), str(clients),
                          str(seconds), str(stats_port)], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        protocol, port, pid, clients, seconds, stats_port = sys.argv[2:8]
        print(json.dumps(_client(protocol, int(port), int(pid), int(clients), float(seconds), int(stats_port))))
        return
    import subprocess
    import urllib.request

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batching", action="store_true", help="serve with --max-batch-size 32 (500 us)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    model = zoo_cnn()
    http_port, grpc_port = free_port(), free_port()
    extra = ["--max-batch-size", "32", "--max-queue-delay-us", "500"] if args.batching else []
    proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "edgedl", "serve", str(model),
                             "--port", str(http_port), "--grpc-port", str(grpc_port), "--threads", "1", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    echo_port = free_port()
    echo = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), sys.executable, "-c", ECHO_SERVER, str(echo_port)])
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"http://{HOST}:{http_port}/v2/health/ready", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        kinds = {"HTTP binary, wrk": ("wrk", http_port, proc.pid),
                 "gRPC unary, h2load": ("h2load", grpc_port, proc.pid),
                 "grpcio echo server, unary, h2load (no model)": ("h2load", echo_port, echo.pid),
                 "HTTP binary, Python client": ("http", http_port, proc.pid),
                 "gRPC unary, grpc.aio client": ("unary", grpc_port, proc.pid),
                 "gRPC stream, grpc.aio client": ("stream", grpc_port, proc.pid),
                 "grpcio echo server, unary, grpc.aio client (no model)": ("unary", echo_port, echo.pid),
                 "grpcio echo server, stream, grpc.aio client (no model)": ("stream", echo_port, echo.pid)}
        rounds: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in CLIENTS} for k in kinds}
        for _ in range(args.rounds):  # interleaved: each round measures every kind at every client count
            for n in CLIENTS:
                for kind, (protocol, port, pid) in kinds.items():
                    stats = http_port if port == grpc_port else 0
                    rounds[kind][n].append(_measure(protocol, port, pid, n, args.seconds, stats))
    finally:
        for server in (proc, echo):
            server.terminate()
            server.wait(30)
    table = {kind: {n: {key: statistics.median(r[key] for r in runs) for key in ("requests_per_s",
                                                                                  "requests_per_server_cpu_s")}
                    | {"errors": sum(r["errors"] for r in runs)} for n, runs in per.items()}
             for kind, per in rounds.items()}
    result = {"model": "zoo cnn [1,1,8,8] FP32", "batching": args.batching, "rounds": args.rounds,
              "seconds": args.seconds, "results": table}
    RESULTS.mkdir(exist_ok=True)
    stem = "grpc_bench_batching" if args.batching else "grpc_bench"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# gRPC vs HTTP binary, zoo CNN{' (batching 32 rows, 500 us)' if args.batching else ''}",
             f"`python benchmarks/grpc_bench.py --rounds {args.rounds} --seconds {args.seconds}"
             f"{' --batching' if args.batching else ''}` (server on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}, "
             "medians of interleaved rounds)", "",
             "| | " + " | ".join(f"req/s at {n}" for n in CLIENTS) + " | req per server CPU-s at 32 |",
             "|---|" + "---|" * (len(CLIENTS) + 1)]
    for kind, per in table.items():
        lines.append(f"| {kind} | " + " | ".join(f"{per[n]['requests_per_s']:,.0f}" for n in CLIENTS)
                     + f" | {per[32]['requests_per_server_cpu_s']:,.0f} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
