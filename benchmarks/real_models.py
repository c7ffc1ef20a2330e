"""The real-model acceptance models, measured: the trained ONNX models shipped in PyPI wheels (PP-OCRv4 text
detector and recognizer, PP-OCR direction classifier, silero-vad, nudenet's YOLOv8n) and models/silero_vad.py
exported from the package's weights.

Per shipped model: file size; `edgedl bench` p50 at batch 1 and 8 on 1 and 2 intra-op threads (synthetic inputs
at the acceptance sizes, each configuration in its own process); `edgedl serve` round trip p50 of one real request
(tritonclient HTTP, binary tensors, sequential, server on 1 thread) vs the same request in process (onnxruntime,
1 thread), median over interleaved rounds. For the recipe: export time, size, validation against PyTorch, and the
match with the shipped silero_vad.onnx on espeak-ng speech, chunk by chunk with the state carried.

usage: python benchmarks/real_models.py [--seconds 1] [--bench-rounds 3] [--rounds 5] [--requests 100]
                                         [--only NAME ...]
Writes benchmarks/results/real_models.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "acceptance")]  # tests/real_models.py, not this file
import real_models  # noqa: E402
from real_tasks import MODELS, frame_f1, onnxruntime_run, triton_run, vad_probabilities  # noqa: E402
from serve_helpers import ServerProcess  # noqa: E402 - put on the path by real_tasks

RESULTS = ROOT / "benchmarks" / "results"
EDGEDL = [sys.executable, "-m", "edgedl"]
BATCHES, THREADS = (1, 8), (1, 2)


def edgedl(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EDGEDL, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"edgedl {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def bench(name: str, seconds: float, rounds: int) -> dict[str, float]:
    """p50 per configuration, the median over ``rounds`` separate `edgedl bench` runs (load on a shared machine
    comes and goes; a run takes all configurations in turn)."""
    model = MODELS[name]
    p50: dict[str, list[float]] = {}
    for _ in range(rounds):
        report = json.loads(edgedl("bench", model.path, *model.options, "-b", ",".join(map(str, BATCHES)),
                                   "-t", ",".join(map(str, THREADS)), "-d", seconds, "--warmup", "2",
                                   "--no-placement", "--quiet", "--json").stdout)
        for r in report["results"]:
            p50.setdefault(f"b{r['batch']}_t{r['threads']}", []).append(r["latency_ms"]["p50_ms"])
    return {key: statistics.median(values) for key, values in p50.items()}


def one_row(name: str) -> dict[str, np.ndarray]:
    """The first request of the model's real batch (silero's state is batched on axis 1, its sr not at all)."""
    from edgedl.runtime import Runner
    from edgedl.runtime.signature import Signature

    model = MODELS[name]
    with Runner(model.path) as runner:
        return Signature.of_runner(runner).take(model.batch(), slice(0, 1))


def serve_overhead(name: str, rounds: int, requests: int) -> dict[str, float]:
    from edgedl.runtime.timing import measure
    import tritonclient.http as triton

    model = MODELS[name]
    feeds = one_row(name)
    local = onnxruntime_run(model.path)
    local_p50, served_p50 = [], []
    with ServerProcess(model.path, "--model-name", name, *model.options, "--threads", "1") as server:
        served = triton_run(triton.InferenceServerClient(server.url), name)
        for _ in range(rounds):  # interleaved: drift on a shared machine hits both alike
            local_p50.append(measure(lambda: local(feeds), warmup=3, iterations=requests, duration_s=1.0).p50_ms)
            served_p50.append(measure(lambda: served(feeds), warmup=3, iterations=requests, duration_s=1.0).p50_ms)
    local_ms, served_ms = statistics.median(local_p50), statistics.median(served_p50)
    return {"in_process_ms": local_ms, "served_ms": served_ms, "overhead_ms": served_ms - local_ms,
            "request_bytes": int(sum(v.nbytes for v in feeds.values()))}


def torch_baseline(path: Path, seconds: float) -> dict[str, float]:
    """`edgedl bench --baseline torch` at batch 1, 1 thread: p50 ms of onnxruntime and of PyTorch eager."""
    report = json.loads(edgedl("bench", path, "--baseline", "torch", "-b", "1", "-d", seconds, "--no-placement",
                               "--quiet", "--json").stdout)
    return {("torch" if "torch" in r["engine"] else "onnxruntime"): r["latency_ms"]["p50_ms"]
            for r in report["results"]}


def silero_recipe(seconds: float) -> list[dict]:
    """models/silero_vad.py exported from each of the package's weight files, next to the shipped ONNX."""
    windows = real_models.vad_windows(real_models.speech().audio)
    truth = real_models.speech().chunk_labels()
    shipped = vad_probabilities(onnxruntime_run(real_models.shipped("silero_vad")), windows)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for weights in real_models.SILERO_WEIGHTS:
            out = Path(tmp) / f"{Path(weights).stem}.onnx"  # its own path: onnxruntime_run keeps a session per path
            t0 = time.perf_counter()
            report = json.loads(edgedl("export", "silero_vad", "--checkpoint", real_models.silero_file(weights),
                                       "-o", out, "--json").stdout)
            export_s = time.perf_counter() - t0
            ours = vad_probabilities(onnxruntime_run(out), windows, sr=False)
            checks = report["validation"]["checks"]
            rows.append({"weights": weights, "export_s": export_s, "size_bytes": report["size_bytes"],
                         "opset": report["opset"], "validation_max_abs_diff": report["validation"]["max_abs_diff"],
                         # of the probability: the state's near-zero elements make its relative error meaningless
                         "validation_max_rel_diff": max(c["outputs"]["output"]["max_rel_diff"] for c in checks),
                         "bench_b1_p50_ms": torch_baseline(out, seconds),
                         "chunks": len(windows), "vs_shipped_max_abs_diff": float(np.abs(ours - shipped).max()),
                         "decision_agreement": float(((ours > 0.5) == (shipped > 0.5)).mean()),
                         "f1": frame_f1(ours > 0.5, truth), "shipped_f1": frame_f1(shipped > 0.5, truth)})
            print(weights, {k: v for k, v in rows[-1].items() if k != "weights"}, flush=True)
    return rows


def _load(values) -> str:
    return ", ".join(f"{v:.1f}" for v in values) if values else "?"


def markdown(report: dict) -> str:
    lines = [f"# Real models ({report['date']}, {report['machine']}, onnxruntime {report['onnxruntime']})", "",
             f"`{report['command']}`; load average {_load(report.get('load_average_start'))} at the start, "
             f"{_load(report.get('load_average_end'))} at the end (other jobs share this machine).", "",
             "Shipped ONNX models at the acceptance sizes: `edgedl bench` p50 (ms, synthetic inputs, "
             f"{report['seconds']} s per configuration, median of {report.get('bench_rounds', 1)} runs); serve: one "
             "real request, tritonclient HTTP binary, "
             f"sequential, server on 1 thread, vs onnxruntime in process on 1 thread (ms, median of "
             f"{report['rounds']} interleaved rounds of up to {report['requests']} requests or 1 s).", "",
             "| model | sizes | MiB | b1 t1 | b1 t2 | b8 t1 | b8 t2 | in-process | served | overhead |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report["models"].items():
        b, s = r["bench_p50_ms"], r["serve"]
        sizes = " ".join(o for o in MODELS[name].options if "=" in o and not o.startswith(("output", "stateN")))
        lines.append(f"| {name} | {sizes} | {r['size_bytes'] / 2**20:.1f} | "
                     + " | ".join(f"{b[f'b{n}_t{t}']:.2f}" for n in BATCHES for t in THREADS)
                     + f" | {s['in_process_ms']:.3f} | {s['served_ms']:.3f} | {s['overhead_ms']:+.3f} |")
    if report.get("silero_recipe"):
        lines += ["", "`models/silero_vad.py` exported by `edgedl export silero_vad --checkpoint WEIGHTS`, then "
                  "streamed over espeak-ng speech next to the shipped `silero_vad.onnx` (state carried; decision: "
                  "probability > 0.5; F1 against the speech segments):", "",
                  "| weights | export s | KiB | vs torch max abs / rel | ort / torch p50 ms (b1) | chunks | "
                  "vs shipped max abs | decisions agree | F1 (shipped) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in report["silero_recipe"]:
            b = r["bench_b1_p50_ms"]
            lines.append(f"| {r['weights']} | {r['export_s']:.1f} | {r['size_bytes'] / 1024:.0f} | "
                         f"{r['validation_max_abs_diff']:.1e} / {r['validation_max_rel_diff']:.1e} | "
                         f"{b['onnxruntime']:.3f} / {b['torch']:.3f} | {r['chunks']} | "
                         f"{r['vs_shipped_max_abs_diff']:.1e} | {r['decision_agreement']:.1%} | "
                         f"{r['f1']:.3f} ({r['shipped_f1']:.3f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="bench time per configuration and round")
    ap.add_argument("--bench-rounds", type=int, default=3, help="edgedl bench runs per model (median)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100, help="serve: requests per round (at most 1 s of them)")
    ap.add_argument("--only", nargs="*", choices=list(MODELS), help="measure only these models (printed, not written)")
    args = ap.parse_args()
    import onnxruntime

    report = {"machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} usable cores",
              "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": args.seconds,
              "bench_rounds": args.bench_rounds,
              "load_average_start": os.getloadavg(),
              "rounds": args.rounds, "requests": args.requests,
              "command": "python benchmarks/real_models.py " + " ".join(sys.argv[1:]), "models": {}}
    for name in args.only or MODELS:
        report["models"][name] = {"size_bytes": MODELS[name].path.stat().st_size,
                                  "bench_p50_ms": bench(name, args.seconds, args.bench_rounds),
                                  "serve": serve_overhead(name, args.rounds, args.requests)}
        print(name, report["models"][name], flush=True)
    if args.only:  # a partial run is printed, never written over the full results
        print(markdown(report))
        return
    report["silero_recipe"] = silero_recipe(args.seconds)
    report["load_average_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "real_models.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (RESULTS / "real_models.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
