"""The zoo results table: PyTorch eager vs onnxruntime, batch 1 and 32, threads 1 and 2.

Every configuration runs in its own process through `edgedl bench` (same code as the CLI); PyTorch eager runs
in the same run on the same inputs and thread count, right next to its onnxruntime row, so the ratios are side
by side. Extra model files (int8 / fp16 variants from `edgedl quantize`) join the table; their "vs torch"
ratio is against the eager run of the network they were made from (their `edgedl.recipe` metadata).

    .venv/bin/python benchmarks/bench_zoo.py [ZOO_DIR] [EXTRA.onnx ...] [--duration 0.5] [--out DIR]

ZOO_DIR holds mlp/cnn/lstm/transformer.onnx (default: the newest build/test-zoo cache, else trained and exported
into build/bench-zoo). Writes results/bench_zoo.{md,json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, ZOO, find_or_build_zoo  # noqa: E402

EXPECTED_BATCH1 = (3.4, 7.2)  # onnxruntime fp32 vs eager at batch 1, 1 thread, from the probe in issue 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, help="a zoo directory and/or extra .onnx files")
    ap.add_argument("--duration", type=float, default=0.5, help="seconds per configuration")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()

    from edgedl.stages.bench import BenchConfig, run_bench
    from edgedl.stages.bench.config import parse_int_list
    from edgedl.stages.bench.report import BenchReport

    dirs = [p for p in args.paths if p.is_dir()]
    extras = [p for p in args.paths if not p.is_dir()]
    if len(dirs) > 1:
        sys.exit("give at most one zoo directory")
    zoo = find_or_build_zoo(dirs[0] if dirs else None)
    threads, batches = parse_int_list(args.threads, "--threads"), parse_int_list(args.batch, "--batch")
    started = time.time()
    common = dict(threads=threads, batches=batches, duration_s=args.duration, warmup=20)
    report = run_bench(BenchConfig([zoo / f"{m}.onnx" for m in ZOO], baseline="torch", **common))
    if extras:
        more = run_bench(BenchConfig(extras, **common))
        report = BenchReport(report.config, report.environment, report.results + more.results)
    report.config["command"] = "benchmarks/bench_zoo.py " + " ".join(map(str, args.paths))
    args.out.mkdir(parents=True, exist_ok=True)
    report.save(args.out / "bench_zoo.json")
    if not args.no_plot:
        from edgedl.stages.bench.plot import plot_report

        plot_report(report, args.out / "bench_zoo.png")

    speed = report.speedups()
    lines = ["# Zoo benchmark: PyTorch eager vs onnxruntime", "",
             f"Regenerate: `.venv/bin/python benchmarks/bench_zoo.py` ({time.time() - started:.0f} s here; "
             f"{args.duration:g} s of queries per configuration, one process each, single-stream).", "",
             report.markdown(), "## onnxruntime vs PyTorch eager at batch 1, 1 thread (p50 ratio)", ""]
    lo, hi = EXPECTED_BATCH1
    fp32 = {str((zoo / f"{m}.onnx").resolve()) for m in ZOO}  # the band applies to the fp32 exports only
    for i, r in enumerate(report.results):
        if i in speed and r["batch"] == 1 and r["threads"] == 1:
            low = r["model"] in fp32 and speed[i] < lo * 0.8
            verdict = f" — BELOW the expected {lo}–{hi}× (a regression is a bug)" if low else ""
            lines.append(f"- {r['model_name']}: {speed[i]:.1f}×{verdict}")
    lines += ["", f"Expected from the probe in issue 3: {lo}–{hi}× at batch 1. The machine is shared: "
              "2-thread rows and p99 columns are the noisiest (see the load average above)."]
    if not args.no_plot:
        lines += ["", "![latency and throughput per configuration](bench_zoo.png)"]
    (args.out / "bench_zoo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
