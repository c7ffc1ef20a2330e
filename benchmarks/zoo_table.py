"""The `make demo` table: for each exported zoo model, test accuracy, ONNX size, max abs diff vs PyTorch, and
PyTorch-eager vs onnxruntime latency at batch 1 (one thread each, medians of interleaved rounds).

usage: python benchmarks/zoo_table.py DIR [--json OUT.json]   (DIR holds NAME.onnx + NAME/ from train/export)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np


def measure_pair(name: str, directory: Path, rounds: int = 5, iterations: int = 300) -> dict:
    import torch

    from edgedl.recipe import load_recipe
    from edgedl.runtime import Runner, RunnerConfig, measure
    from edgedl.stages.torch_source import TorchSource

    onnx_path = directory / f"{name}.onnx"
    runner = Runner(onnx_path, RunnerConfig(intra_op_threads=1, inter_op_threads=1))
    recipe = load_recipe(runner.metadata["recipe_source"])
    model = TorchSource.from_json(runner.metadata["torch_source"]).build()
    torch.set_num_threads(1)
    feeds = recipe.make_inputs({d: 1 for d in recipe.dim_examples} | {
        d: s[0] for d, s in recipe.dim_examples.items() if d != "batch"}, seed=0)
    args = [torch.from_numpy(feeds[n]) for n in recipe.input_names]

    def eager():
        with torch.inference_mode():
            model(*args)

    # warm up for a fixed time, not only N runs: a few runs of a 10 us model leave an idle core below full clock
    # (the first model measured ~2x slow on both sides without this)
    for fn in (lambda: runner.run(feeds), eager):
        measure(fn, warmup=0, iterations=None, duration_s=0.3)
    ort_p50, torch_p50 = [], []
    for _ in range(rounds):  # interleave so drift on a noisy machine hits both sides alike
        ort_p50.append(measure(lambda: runner.run(feeds), warmup=20, iterations=iterations).p50_ms)
        torch_p50.append(measure(eager, warmup=20, iterations=iterations).p50_ms)
    ort_ms, torch_ms = statistics.median(ort_p50), statistics.median(torch_p50)
    meta = runner.metadata
    return {
        "model": name,
        "test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
        "onnx_kib": onnx_path.stat().st_size / 1024,
        "max_abs_diff": meta.get("validation", {}).get("max_abs_diff"),
        "torch_us": torch_ms * 1e3,
        "ort_us": ort_ms * 1e3,
        "speedup": torch_ms / ort_ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--models", default="mlp,cnn,lstm,transformer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    rows = [measure_pair(m, args.directory) for m in args.models.split(",")]
    table = Table(title="edgedl zoo: trained, exported, proven faithful (latency: batch 1, 1 thread, median)")
    for col in ("model", "test acc", "ONNX", "max abs diff", "PyTorch eager", "onnxruntime", "speed-up"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['test_accuracy']:.1%}", f"{r['onnx_kib']:.0f} KiB", f"{r['max_abs_diff']:.1e}",
                      f"{r['torch_us']:.1f} µs", f"{r['ort_us']:.1f} µs", f"{r['speedup']:.1f}×")
    Console(width=max(100, Console().width)).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
