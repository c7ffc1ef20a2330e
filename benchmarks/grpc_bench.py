"""gRPC vs HTTP binary on the same `edgedl serve` process: requests per second at 1 / 8 / 32 clients on the zoo CNN,
server pinned to CPU 0 and the clients (this process) to CPU 1, rounds interleaved, medians.

Both clients cost little next to the server they measure: HTTP requests are pre-encoded bytes on keep-alive
connections (serve_loadgen), gRPC requests a pre-serialized ModelInferRequest sent through grpc.aio's raw
unary call (unary: one call per request, as tritonclient.grpc's infer; stream: ModelStreamInfer with one
request in flight per client, as perf_analyzer --streaming). For reference, the same clients against grpcio's
asyncio server answering with a canned reply: what gRPC costs in Python before any model runs.

usage: python benchmarks/grpc_bench.py [--rounds 5] [--seconds 2] [--batching]
Writes benchmarks/results/grpc_bench.{json,md}.
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
from serve_bench import CLIENT_CPU, HOST, SERVER_CPU, free_port, v2_binary, zoo_cnn  # noqa: E402
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

    counts = [0, 0]  # measured requests, errors

    async def unary_client(channel, stop_at, warm_until):
        call = channel.unary_unary(METHOD + "ModelInfer")
        while (now := time.perf_counter()) < stop_at:
            try:
                await call(request)
                counts[0] += now >= warm_until
            except grpc.RpcError:
                counts[1] += 1

    async def stream_client(channel, stop_at, warm_until):
        call = channel.stream_stream(METHOD + "ModelStreamInfer")()
        while (now := time.perf_counter()) < stop_at:
            await call.write(request)
            reply = await call.read()
            counts[0 if reply[:1] == b"\x12" else 1] += now >= warm_until  # field 2: infer_response
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
            "requests_per_server_cpu_s": counts[0] / cpu if cpu else float("nan")}


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


def _client(protocol: str, port: int, server_pid: int, clients: int, seconds: float) -> dict:
    """One measurement, in this (fresh) process: grpc's core keeps threads busy in a process after its calls end,
    which would slow an HTTP client measured after it in the same process by 2x."""
    os.sched_setaffinity(0, {CLIENT_CPU})
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    if protocol == "http":
        return throughput(HOST, port, v2_binary(port, "cnn", "image", x), clients, seconds, server_pid=server_pid)
    return grpc_throughput(f"{HOST}:{port}", grpc_request("cnn", "image", x), clients, seconds,
                           protocol == "stream", server_pid)


def _measure(protocol: str, port: int, server_pid: int, clients: int, seconds: float) -> dict:
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--client", protocol, str(port), str(server_pid), str(clients),
                          str(seconds)], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        protocol, port, pid, clients, seconds = sys.argv[2:7]
        print(json.dumps(_client(protocol, int(port), int(pid), int(clients), float(seconds))))
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
        kinds = {"HTTP binary": ("http", http_port, proc.pid), "gRPC unary": ("unary", grpc_port, proc.pid),
                 "gRPC stream": ("stream", grpc_port, proc.pid),
                 "grpcio echo server, unary (no model)": ("unary", echo_port, echo.pid),
                 "grpcio echo server, stream (no model)": ("stream", echo_port, echo.pid)}
        rounds: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in CLIENTS} for k in kinds}
        for _ in range(args.rounds):  # interleaved: each round measures every kind at every client count
            for n in CLIENTS:
                for kind, (protocol, port, pid) in kinds.items():
                    rounds[kind][n].append(_measure(protocol, port, pid, n, args.seconds))
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
