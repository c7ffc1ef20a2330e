"""`edgedl debug speed` on the zoo's CNN, MLP and LSTM, dynamic and static int8, several times: the speed-up it
measures, the operator it blames, and how well the per-operator times add up to the measured latency (operators +
onnxruntime's executor vs the median of plain runs). Every number comes from `edgedl.stages.debug.speed.speed`, the
code behind the command, with its default settings.

usage: python benchmarks/debug_speed_zoo.py [--repeats N] [--batch B] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import find_or_build_zoo  # noqa: E402

MODELS = ("cnn", "mlp", "lstm")
MODES = ("dynamic", "static")


def quantize_all(zoo: Path, work: Path) -> dict[tuple[str, str], Path]:
    from edgedl.stages.quantize import GateConfig, QuantizeConfig, quantize

    out = {}
    for name in MODELS:
        for mode in MODES:
            path = work / f"{name}.{mode}.onnx"
            report = quantize(zoo / f"{name}.onnx", QuantizeConfig(output=path, mode=mode, progress=False,
                                                                  gates=GateConfig(speed_seconds=0)))
            assert report.accepted, report.reasons
            out[(name, mode)] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    from edgedl.stages.debug.speed import SpeedConfig, speed

    zoo = find_or_build_zoo()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = quantize_all(zoo, Path(tmp))
        for rep in range(args.repeats):
            for (name, mode), path in models.items():
                t0 = time.perf_counter()
                r = speed(SpeedConfig(zoo / f"{name}.onnx", path, batch=args.batch), show_progress=False)
                top = r.losers[0] if r.losers else None
                rows.append({"model": name, "mode": mode, "repeat": rep, "speedup": r.speedup,
                             "top_loser": f"{top.node} ({top.describe(top.int8_kernels)})" if top else None,
                             "float_agreement": r.float.times.agreement, "int8_agreement": r.int8.times.agreement,
                             "float_us": r.float.times.measured_us, "int8_us": r.int8.times.measured_us,
                             "off_cpu": max(r.float.times.off_cpu_share, r.int8.times.off_cpu_share),
                             "seconds": time.perf_counter() - t0, "load": os.getloadavg()[0]})
                print(json.dumps(rows[-1]), flush=True)
    import onnxruntime

    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "batch": args.batch,
            "command": "python benchmarks/debug_speed_zoo.py " + " ".join(sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "debug_speed_zoo.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / "debug_speed_zoo.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# `edgedl debug speed` on the zoo", "",
             f"Measured {meta['date']}, {meta['cores']} shared cores, onnxruntime {meta['onnxruntime']}, batch "
             f"{meta['batch']}, 1 thread, default settings (300 profiled runs and 1 s of plain runs per model, 20 "
             f"interleaved rounds). Command: `{meta['command']}`", "",
             "Agreement: (operators + executor) / measured median - 1, per model, over the repeats (min .. max). "
             "Off-CPU: the largest share of runs that other work pushed off the CPU (left out of both sides).", "",
             "| model | int8 | speed-up (float/int8) | where int8 loses most | float agreement | int8 agreement | "
             "off-CPU |", "|---|---|---|---|---|---|---|"]
    for name in MODELS:
        for mode in MODES:
            sel = [r for r in rows if r["model"] == name and r["mode"] == mode]
            if not sel:
                continue
            sp = [r["speedup"] for r in sel]
            fa = [r["float_agreement"] for r in sel]
            ia = [r["int8_agreement"] for r in sel]
            lines.append(f"| {name} | {mode} | {min(sp):.2f} .. {max(sp):.2f} | {sel[0]['top_loser'] or '-'} | "
                         f"{min(fa):+.1%} .. {max(fa):+.1%} | {min(ia):+.1%} .. {max(ia):+.1%} | "
                         f"{max(r['off_cpu'] for r in sel):.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
