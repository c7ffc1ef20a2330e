"""Does `edgedl bench` report what a bare `session.run` loop measures? (issue 3: within 5 %)

For each zoo model (batch 1, 1 thread), rounds alternate between
  * the bench worker (`python -m edgedl.stages.bench.worker`, exactly what `edgedl bench` runs), and
  * a bare loop in its own process: `onnxruntime.InferenceSession` + `session.run(None, feeds)` timed with
    `time.perf_counter_ns`, no edgedl code at all,
on the same inputs (one .npz). The per-round medians are compared; the figures go to results/bench_agreement.*.

    .venv/bin/python benchmarks/bench_agreement.py [--rounds 7] [--iterations 3000] [--zoo DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, ZOO, find_or_build_zoo  # noqa: E402

BARE = r"""
import sys, time, numpy as np, onnxruntime as ort
model, data, n, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
feeds = dict(np.load(data))
for _ in range(warmup):
    sess.run(None, feeds)
samples = np.empty(n, dtype=np.int64)
clock = time.perf_counter_ns
for i in range(n):
    t0 = clock(); sess.run(None, feeds); samples[i] = clock() - t0
print(float(np.median(samples)) / 1e6)
"""


def bench_p50(model: Path, data: Path, n: int, warmup: int) -> float:
    cfg = {"model": str(model), "threads": 1, "batch": 1, "iterations": n, "duration_s": None, "warmup": warmup,
           "input_data": str(data), "placement": False}
    out = subprocess.run([sys.executable, "-m", "edgedl.stages.bench.worker", json.dumps(cfg)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["latency_ms"]["p50_ms"]


def bare_p50(model: Path, data: Path, n: int, warmup: int) -> float:
    out = subprocess.run([sys.executable, "-c", BARE, str(model), str(data), str(n), str(warmup)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--zoo", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from edgedl.runtime import Runner
    from edgedl.stages.bench.inputs import make_feeds, resolve_sizes

    zoo = find_or_build_zoo(args.zoo)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ZOO:
            model = zoo / f"{name}.onnx"
            with Runner(model) as r:
                feeds = make_feeds(r.inputs, r.metadata, resolve_sizes(r.inputs, r.metadata, 1, {}), seed=0)
            data = Path(tmp) / f"{name}.npz"
            np.savez(data, **feeds)
            bench, bare = [], []
            for i in range(args.rounds):  # alternate which goes first, so drift hits both equally
                pair = [("bench", bench_p50), ("bare", bare_p50)]
                for label, fn in (pair if i % 2 == 0 else pair[::-1]):
                    (bench if label == "bench" else bare).append(fn(model, data, args.iterations, args.warmup))
            b, s = statistics.median(bench), statistics.median(bare)
            diff = (b - s) / s * 100
            rows.append({"model": name, "bench_p50_ms": b, "bare_p50_ms": s, "diff_pct": diff,
                         "within_5pct": abs(diff) <= 5.0, "bench_rounds_ms": bench, "bare_rounds_ms": bare})
            print(f"{name:12s} bench p50 {b * 1000:8.2f} µs   bare session.run p50 {s * 1000:8.2f} µs   "
                  f"diff {diff:+5.1f} %  {'ok' if abs(diff) <= 5 else 'OUTSIDE 5 %'}", flush=True)
    from edgedl.stages.machine import environment

    env = environment()
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": args.rounds,
              "iterations": args.iterations, "batch": 1, "threads": 1, "environment": env, "models": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_agreement.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# edgedl bench vs a bare session.run loop (batch 1, 1 thread)", "",
             f"Measured {result['created']} on {env['cpu']['model']} ({env['cpu']['usable_cores']} cores, load "
             f"{env['load_average'][0]:.1f}), onnxruntime {env['onnxruntime']['version']}. {args.rounds} interleaved "
             f"rounds of {args.iterations} runs each; median of the per-round medians. "
             "Command: `.venv/bin/python benchmarks/bench_agreement.py`", "",
             "| model | edgedl bench p50 (µs) | bare session.run p50 (µs) | difference | within 5 % |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bench_p50_ms'] * 1000:.2f} | {r['bare_p50_ms'] * 1000:.2f} | "
                     f"{r['diff_pct']:+.1f} % | {'yes' if r['within_5pct'] else 'NO'} |")
    (args.out / "bench_agreement.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'bench_agreement.md'}")


if __name__ == "__main__":
    main()
