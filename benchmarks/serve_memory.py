"""What one large infer request costs the server: RSS before / peak / after, and how long liveness and a small
infer request stall while it is processed, for 1, 10 and 50 MiB requests sent as binary tensors and as JSON.

A fresh `edgedl serve ZOO_CNN.onnx --threads 1` (pinned to CPU 0) per case and round; the client on CPU 1.
Peak RSS is the kernel's high-water mark (VmHWM, reset through /proc/PID/clear_refs right before the request), so
no sampling can miss it. While the big request is in flight, two probe threads send GET /v2/health/live and a
1-row JSON infer every 5 ms on their own keep-alive connections; their round-trip times are the stall figures.
"After" is VmRSS 2 s after the response.

usage: python benchmarks/serve_memory.py --label before|after [--rounds 3] [--sizes 1,10,50]
The edgedl that serves is whatever `python -m edgedl` imports (set PYTHONPATH to measure another checkout).
Merges its figures under LABEL into benchmarks/results/serve_memory.json and rewrites serve_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import find_or_build_zoo  # noqa: E402
from serve_loadgen import SyncClient, http_request  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HOST = "127.0.0.1"
SERVER_CPU, CLIENT_CPU = 0, 1
ROW_BYTES = 64 * 4  # one 1x8x8 FP32 image
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def status_kib(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def binary_body(rows: int) -> tuple[bytes, dict]:
    x = np.random.default_rng(rows).random((rows, 1, 8, 8), dtype=np.float32)
    head = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def json_values(n: int, seed: int, kind: str) -> np.ndarray:
    """Random pixels as a client would send them: 'json' rounded to 6 decimals (~10 bytes each), 'json-f32' float32s
    whose shortest repr json.dumps writes (~19 bytes each, as `x.tolist()` of a float32 array gives)."""
    x = np.random.default_rng(seed).random(n)
    return np.round(x, 6) if kind == "json" else x.astype(np.float32)


def json_body(target_bytes: int, kind: str = "json") -> bytes:
    """A JSON request of about ``target_bytes`` of ``json_values``."""
    per_row = len(json.dumps(json_values(64 * 100, 0, kind).tolist())) / 100
    rows = max(int(target_bytes / per_row), 1)
    x = json_values(rows * 64, rows, kind)
    return json.dumps({"inputs": [{"name": "image", "shape": [rows, 1, 8, 8], "datatype": "FP32",
                                   "data": x.tolist()}]}).encode()


class Probe(threading.Thread):
    """Sends one request every ``gap_s`` on a keep-alive connection until stopped; keeps the round-trip times."""

    def __init__(self, port: int, request: bytes, gap_s: float = 0.005):
        super().__init__(daemon=True)
        self.client = SyncClient(HOST, port)
        self.request, self.gap_s = request, gap_s
        self.times: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            status, _ = self.client.roundtrip(self.request)
            self.times.append(time.perf_counter() - t0)
            self.failures += status != 200
            self.stop.wait(self.gap_s)
        self.client.close()

    def figures(self) -> dict:
        t = np.array(self.times) * 1e3
        return {"n": len(t), "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
                "max_ms": float(t.max()), "failures": self.failures}


class Server:
    def __init__(self, model: Path):
        self.port = free_port()
        cmd = [sys.executable, "-m", "edgedl", "serve", str(model), "--port", str(self.port), "--threads", "1"]
        self.proc = subprocess.Popen(["taskset", "-c", str(SERVER_CPU), *cmd], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if "ready in" in line:
                break
        else:
            raise RuntimeError(f"server exited: {self.proc.wait()}")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep draining its log

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def one_case(model: Path, kind: str, mib: int) -> dict:
    server = Server(model)
    try:
        if kind == "binary":
            body, headers = binary_body(mib * MIB // ROW_BYTES)
            payload = len(body) - int(headers["Inference-Header-Content-Length"])
        else:
            body, headers = json_body(mib * MIB, kind), {}
            payload = len(body)
        big = http_request(HOST, server.port, "/v2/models/cnn/infer", body, headers)
        live = f"GET /v2/health/live HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n\r\n".encode()
        small = http_request(HOST, server.port, "/v2/models/cnn/infer", json.dumps(
            {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}).encode())
        warm = SyncClient(HOST, server.port)
        for request in (small, live, http_request(HOST, server.port, "/v2/models/cnn/infer", *binary_body(1))):
            assert warm.roundtrip(request)[0] == 200
        time.sleep(0.5)
        pid = server.proc.pid
        before = status_kib(pid, "VmRSS")
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        probes = [Probe(server.port, live), Probe(server.port, small)]
        for p in probes:
            p.start()
        time.sleep(0.05)
        t0 = time.perf_counter()
        status, response = warm.roundtrip(big)
        seconds = time.perf_counter() - t0
        time.sleep(0.05)
        for p in probes:
            p.stop.set()
        for p in probes:
            p.join(120)
        peak = status_kib(pid, "VmHWM")
        time.sleep(2.0)
        after = status_kib(pid, "VmRSS")
        warm.close()
        if status != 200:
            raise RuntimeError(f"{kind} {mib} MiB: status {status}: {response[:300]!r}")
        return {"kind": kind, "mib": mib, "body_bytes": len(body), "payload_bytes": payload,
                "request_s": seconds, "rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024,
                "rss_after_mib": after / 1024, "peak_added_mib": (peak - before) / 1024,
                "after_added_mib": (after - before) / 1024, "peak_added_x_payload": (peak - before) * 1024 / payload,
                "liveness": probes[0].figures(), "small_infer": probes[1].figures()}
    finally:
        server.stop()


def median_case(rounds: list[dict]) -> dict:
    out = dict(rounds[0])
    for key, value in rounds[0].items():
        if isinstance(value, float):
            out[key] = float(np.median([r[key] for r in rounds]))
        elif isinstance(value, dict):
            out[key] = {k: float(np.median([r[key][k] for r in rounds])) for k in value}
    out["rounds"] = len(rounds)
    return out


def render(report: dict) -> str:
    lines = ["# What one large request costs `edgedl serve` (RSS and stalls)", "",
             "`python benchmarks/serve_memory.py --label LABEL --rounds N` (before: main's code through PYTHONPATH; "
             "after: this tree). Zoo CNN, `--threads 1`, server on CPU 0 and client on CPU 1, a fresh server per "
             "case and round; figures are medians over rounds. Peak = VmHWM reset right before the request; after = "
             "VmRSS 2 s after the response; stalls = round trips of liveness and of a 1-row JSON infer, sent every "
             "5 ms while the big request is in flight.", ""]
    for label, run in report.items():
        lines += [f"## {label} ({run['date']}, {run['machine']}, {run['cpus']} CPUs, load {run['load']})", "",
                  "| request | body MiB | time s | RSS before MiB | peak MiB | added at peak MiB | x payload | "
                  "after MiB | liveness p99 / max ms | small infer p99 / max ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for c in run["cases"]:
            lines.append(
                f"| {c['mib']} MiB {c['kind']} | {c['body_bytes'] / MIB:.1f} | {c['request_s']:.2f} | "
                f"{c['rss_before_mib']:.0f} | {c['rss_peak_mib']:.0f} | {c['peak_added_mib']:.0f} | "
                f"{c['peak_added_x_payload']:.2f} | {c['rss_after_mib']:.0f} | "
                f"{c['liveness']['p99_ms']:.1f} / {c['liveness']['max_ms']:.0f} | "
                f"{c['small_infer']['p99_ms']:.1f} / {c['small_infer']['max_ms']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="name of this run in the results (e.g. before, after)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1,10,50", help="request sizes in MiB")
    ap.add_argument("--kinds", default="binary,json", help="binary, json (6 decimals), json-f32 (float32 reprs)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    model = find_or_build_zoo() / "cnn.onnx"
    import edgedl

    cases = []
    for kind in args.kinds.split(","):
        for mib in (int(s) for s in args.sizes.split(",")):
            rounds = []
            for k in range(args.rounds):
                rounds.append(one_case(model, kind, mib))
                r = rounds[-1]
                print(f"{kind} {mib} MiB round {k + 1}: {r['request_s']:.2f} s, +{r['peak_added_mib']:.0f} MiB peak "
                      f"({r['peak_added_x_payload']:.2f}x), +{r['after_added_mib']:.0f} MiB after, liveness max "
                      f"{r['liveness']['max_ms']:.0f} ms", flush=True)
            cases.append(median_case(rounds))
    path = RESULTS / "serve_memory.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[args.label] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
                          "cpus": os.cpu_count(), "load": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
                          "edgedl": str(Path(edgedl.__file__).parent), "rounds": args.rounds,
                          "command": "python benchmarks/serve_memory.py " + " ".join(sys.argv[1:]), "cases": cases}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "serve_memory.md").write_text(render(report))
    print(render({args.label: report[args.label]}))


if __name__ == "__main__":
    main()
