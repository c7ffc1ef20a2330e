"""Triton's own perf_analyzer against `edgedl serve` and the real Triton 2.51, side by side: the zoo CNN with
dynamic batching (32 rows, 500 us) and without, over HTTP and gRPC, at concurrency 1, 8 and 32. Both servers (all
their processes) on CPU 0, perf_analyzer on CPU 1; the models and config.pbtxt are serve_bench.py's.

perf_analyzer is the binary from the tritonclient 2.40 wheel (cached under build/perf-analyzer-2.40, as the tests
use it); its throughput is its own (a C++ client, one thread per concurrent request), next to our Python load
generator's in serve_bench.md.

usage: python benchmarks/perf_analyzer_bench.py [--window-ms 2000]
Writes benchmarks/results/perf_analyzer_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: F401  (serve_bench's models)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "triton_qa"))
sys.path.insert(0, str(ROOT / "tests"))
from serve_bench import CLIENT_CPU, HOST, SERVER_CPU, Peer, peer_repository, resnet18_like, zoo_cnn  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LEVELS = (1, 8, 32)


def run(tool, model: str, url: str, protocol: str, window_ms: int, report: Path) -> list[dict]:
    rows = []
    for level in LEVELS:  # one run per level: a level that does not stabilise does not lose the others
        args = [str(tool.binary), "-m", model, "-u", url, "-i", protocol, "--concurrency-range", f"{level}:{level}",
                "--measurement-interval", str(window_ms), "--input-data", "zero", "--stability-percentage", "50",
                "--max-trials", "8", "-f", str(report)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=300, env=tool.env())
        if out.returncode != 0:
            rows.append({"concurrency": level, "error": (out.stdout + out.stderr).strip().splitlines()[-1]})
            continue
        row = next(csv.DictReader(report.open()))
        rows.append({"concurrency": level, "infer_per_s": float(row["Inferences/Second"]),
                     "p50_us": int(row["p50 latency"]), "p99_us": int(row["p99 latency"])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window-ms", type=int, default=2000, help="perf_analyzer's --measurement-interval")
    args = ap.parse_args()
    from real_triton import perf_analyzer_install, triton_install

    os.sched_setaffinity(0, {CLIENT_CPU})
    tool, install = perf_analyzer_install(), triton_install()
    work = Path(tempfile.mkdtemp(prefix="edgedl-pa-bench-"))
    cnn = zoo_cnn()
    files = {"cnn": cnn, "cnn_batched": cnn, "resnet": resnet18_like(work / "resnet.onnx")}
    results: dict = {}
    for kind in ("edgedl", "triton"):  # one server at a time: perf_analyzer's threads use CPU 1 fully
        peer = Peer(kind, peer_repository(work / f"repo-{kind}", kind, files), install)
        try:
            for model in ("cnn", "cnn_batched"):
                for protocol, port in (("http", peer.http), ("grpc", peer.grpc)):
                    results[f"{kind}|{model}|{protocol}"] = run(tool, model, f"{HOST}:{port}", protocol,
                                                                args.window_ms, work / "pa.csv")
                    print(kind, model, protocol, results[f"{kind}|{model}|{protocol}"], flush=True)
        finally:
            peer.stop()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average_at_start": os.getloadavg(),
              "command": "python benchmarks/perf_analyzer_bench.py " + " ".join(sys.argv[1:]), "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "perf_analyzer_bench.json").write_text(json.dumps(report, indent=1))
    lines = [f"# perf_analyzer 2.40 (tritonclient wheel) vs edgedl and Triton 2.51 ({report['date']})", "",
             f"`{report['command']}`: zoo CNN, --input-data zero, servers on CPU {SERVER_CPU}, perf_analyzer on CPU "
             f"{CLIENT_CPU}; inferences/s (p50 latency µs).", "",
             "| model | protocol | server | " + " | ".join(f"concurrency {n}" for n in LEVELS) + " |",
             "|---|---|---|" + "---:|" * len(LEVELS)]
    for model in ("cnn", "cnn_batched"):
        for protocol in ("http", "grpc"):
            for kind in ("edgedl", "triton"):
                cells = [f"{r['infer_per_s']:,.0f} ({r['p50_us']:,})" if "error" not in r else f"failed: {r['error']}"
                         for r in results[f"{kind}|{model}|{protocol}"]]
                lines.append(f"| {model} | {protocol} | {kind} | " + " | ".join(cells) + " |")
    (RESULTS / "perf_analyzer_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
