"""Quantize every zoo model and write the figures: dynamic and static int8 accuracy drop, size ratio, speed-up at
batch 1 and 32 (and fp16), and what `--mode auto` picks. Every number comes from `edgedl.stages.quantize.quantize`,
i.e. the code behind `edgedl quantize`: accuracy on the 360-image digits test split, latency as medians of
interleaved `edgedl.runtime.timing.measure` rounds, one intra-op thread, CPU provider.

usage: python benchmarks/quantize_zoo.py [DIR] [--seconds S] [--threads N] [--out benchmarks/results]
       DIR holds NAME.onnx for mlp, cnn, lstm, transformer (make demo's build/demo, or the test zoo cache);
       default: the newest build/test-zoo/* with all four, else build/demo.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = ("mlp", "cnn", "lstm", "transformer")


def find_zoo(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    dirs = sorted((ROOT / "build/test-zoo").glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True)
    for d in [*dirs, ROOT / "build/demo"]:
        if all((d / f"{m}.onnx").is_file() for m in ZOO):
            return d
    sys.exit("no exported zoo found: run `make demo` (build/demo) or the tests first, or pass DIR")


def run_model(path: Path, seconds: float, threads: int, workdir: Path) -> dict:
    from edgedl.stages.quantize import GateConfig, QuantizeConfig, quantize

    gates = GateConfig(speed_seconds=seconds, threads=threads, speed_batch=32)
    auto = quantize(path, QuantizeConfig(output=workdir / f"{path.stem}.auto.onnx", mode="auto", gates=gates,
                                         progress=False)).to_json()
    fp16 = quantize(path, QuantizeConfig(output=workdir / f"{path.stem}.fp16.onnx", mode="fp16", gates=gates,
                                         progress=False)).to_json()
    rows = {c["mode"]: c for c in auto["candidates"]}
    rows["fp16"] = fp16["candidates"][0]
    return {"fp32": {"accuracy": auto["accuracy"]["fp32"], "size_bytes": auto["size_bytes"]["fp32"],
                     "latency_ms": auto["latency_ms"]["fp32"]},
            "candidates": rows, "auto": auto["mode"], "auto_speedup": auto["speedup"],
            "ops_left_float": {m: c["ops_left_float"] for m, c in rows.items()},
            "notes": auto["notes"]}


def markdown(results: dict, meta: dict) -> str:
    lines = [f"# `edgedl quantize` on the zoo", "",
             f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores, shared), onnxruntime "
             f"{meta['onnxruntime']}, {meta['threads']} intra-op thread, CPU provider, "
             f"{meta['seconds']} s per model and batch size in 3 interleaved rounds (medians).",
             f"Command: `{meta['command']}`", "",
             "Accuracy: top-1 % on the 360-image digits test split (drop in points vs fp32). Size: quantized / fp32 "
             "file size. Speed-up: fp32 median / quantized median (> 1 is faster). `auto` judges speed at batch 32 "
             "and needs >= 1.05x; fp16 is not an auto candidate on a CPU target.",
             "Noise: on 2 shared cores the batch-1 ratios of these 6-75 µs models move by up to ~±30 % between "
             "runs (fp16 at batch 1 read 0.6-1.2x across runs, while at batch 32 it stayed at 0.90-1.00x); "
             "batch-32 ratios moved by ~±15 %. Read single batch-1 figures as 'about the same'.", "",
             "| model | fp32 top-1 | mode | top-1 (drop) | size ratio | speed-up b1 | speed-up b32 |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for mode in ("dynamic", "static", "fp16"):
            c = r["candidates"][mode]
            lines.append(f"| {name} | {r['fp32']['accuracy']:.2f} | {mode}{' (auto)' if r['auto'] == mode else ''} | "
                         f"{c['accuracy']:.2f} ({c['drop_points']:+.2f}) | "
                         f"{c['size_bytes'] / r['fp32']['size_bytes']:.2f} | {c['speedup']['1']:.2f} | "
                         f"{c['speedup']['32']:.2f} |")
    lines += ["", "| model | auto picks | speed-up b32 of the pick | fp32 latency b1 / b32 (ms) |", "|---|---|---|---|"]
    for name, r in results.items():
        lat = r["fp32"]["latency_ms"]
        lines.append(f"| {name} | {r['auto']} | {r['auto_speedup'].get('32', 1.0):.2f} | "
                     f"{lat['1']:.4f} / {lat['32']:.4f} |")
    lines += ["", "Ops left float (int8 modes):", ""]
    for name, r in results.items():
        for mode in ("dynamic", "static"):
            left = ", ".join(f"{k}×{len(v)}" for k, v in r["ops_left_float"][mode].items()) or "none"
            lines.append(f"- {name} {mode}: {left}")
    return "\n".join(lines) + "\n"


def demo_table(results: dict) -> str:
    """The `make demo` quantization table: what auto picked and what it cost or gained."""
    head = f"{'model':12s} {'auto picks':10s} {'top-1 fp32 -> picked':>22s} {'size KiB fp32 -> picked':>24s} " \
           f"{'speed-up b1':>11s} {'b32':>6s}"
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        pick = r["candidates"].get(r["auto"])
        acc = pick["accuracy"] if pick else r["fp32"]["accuracy"]
        size = pick["size_bytes"] if pick else r["fp32"]["size_bytes"]
        speed = pick["speedup"] if pick else {"1": 1.0, "32": 1.0}
        rows.append(f"{name:12s} {r['auto']:10s} {r['fp32']['accuracy']:>10.2f} -> {acc:<8.2f} "
                    f"{r['fp32']['size_bytes'] / 1024:>12.1f} -> {size / 1024:<8.1f} {speed['1']:>11.2f} "
                    f"{speed['32']:>6.2f}")
    return "\n".join(rows)


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    modes = ("dynamic", "static", "fp16")
    for ax, batch in zip(axes, ("1", "32")):
        for i, mode in enumerate(modes):
            xs = [j + (i - 1) * 0.27 for j in range(len(results))]
            ax.bar(xs, [r["candidates"][mode]["speedup"][batch] for r in results.values()], width=0.27, label=mode)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(results)), list(results))
        ax.set_title(f"speed-up vs fp32, batch {batch} (1 thread, CPU)")
    axes[0].set_ylabel("fp32 median / quantized median")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", nargs="?")
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per model and batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--models", default=",".join(ZOO))
    args = parser.parse_args()
    import onnxruntime

    zoo = find_zoo(args.zoo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            t0 = time.time()
            results[name] = run_model(zoo / f"{name}.onnx", args.seconds, args.threads, Path(tmp))
            r = results[name]
            print(f"{name:12s} auto -> {r['auto']:8s} " + "  ".join(
                f"{m} {c['accuracy']:.2f}% ({c['drop_points']:+.2f}) x{c['size_bytes'] / r['fp32']['size_bytes']:.2f} "
                f"b1 {c['speedup']['1']:.2f}x b32 {c['speedup']['32']:.2f}x" for m, c in r["candidates"].items())
                + f"  [{time.time() - t0:.0f}s]", flush=True)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu, "cores": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__, "threads": args.threads, "seconds": args.seconds,
            "command": "python benchmarks/quantize_zoo.py" + (f" --seconds {args.seconds}" if args.seconds != 1.5 else ""),
            "zoo": str(zoo), "wall_s": round(time.time() - start, 1)}
    (out / "quantize_zoo.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    (out / "quantize_zoo.md").write_text(markdown(results, meta))
    figure(results, out / "quantize_zoo.png")
    print()
    print(demo_table(results))
    print(f"\nwrote {out / 'quantize_zoo.md'}, .json, .png in {meta['wall_s']} s")


if __name__ == "__main__":
    main()
