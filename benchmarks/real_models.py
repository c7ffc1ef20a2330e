"""The real-model acceptance models, measured: the trained ONNX models shipped in PyPI wheels (PP-OCRv4 text
detector and recognizer, PP-OCR direction classifier, silero-vad, nudenet's YOLOv8n), models/silero_vad.py
exported from the package's weights, and the transformers architectures of tests/acceptance/hf_architectures.py.

Per shipped model: file size; `edgedl quantize` with the acceptance suite's options and task metric (its fp32 and
int8 task scores on the real evaluation data, int8 size); `edgedl bench` p50 of fp32 and int8 at batch 1 and 8 on
1 and 2 intra-op threads (synthetic inputs at the acceptance sizes; int8 speed-up = fp32 p50 / int8 p50);
`edgedl serve` round trip p50 of one real request (tritonclient HTTP, binary tensors, sequential, server on 1
thread) vs the same request in process (onnxruntime, 1 thread), median over interleaved rounds. For the recipe:
export time, size, validation against PyTorch, the match with the shipped silero_vad.onnx on espeak-ng speech,
chunk by chunk with the state carried, and its int8 model's VAD F1 and speed-up. Per transformers architecture:
`edgedl export` wall time (its own process, torch and transformers imports included), size, validation.

usage: python benchmarks/real_models.py [--seconds 1] [--bench-rounds 3] [--rounds 5] [--requests 100]
                                         [--only NAME ...] [--skip-exports]
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
from acceptance_cli import TaskFiles, quantize_args  # noqa: E402
from real_tasks import (MODELS, TASK_METRICS, _vad_data, frame_f1, onnxruntime_run, triton_run,  # noqa: E402
                        vad_probabilities)
from test_real_hf_export import ARCHITECTURES, FILE as HF_FILE  # noqa: E402
from serve_helpers import ServerProcess  # noqa: E402 - put on the path by real_tasks

RESULTS = ROOT / "benchmarks" / "results"
EDGEDL = [sys.executable, "-m", "edgedl"]
BATCHES, THREADS = (1, 8), (1, 2)


def edgedl(*args, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EDGEDL, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"edgedl {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def bench(paths: dict[str, Path], options: tuple[str, ...], seconds: float, rounds: int) -> dict[str, dict]:
    """p50 per model file and configuration, the median over ``rounds`` separate `edgedl bench` runs, the files
    interleaved within a round (load on a shared machine comes and goes; a run takes all configurations in turn)."""
    p50: dict[str, dict[str, list[float]]] = {key: {} for key in paths}
    for _ in range(rounds):
        for key, path in paths.items():
            report = json.loads(edgedl("bench", path, *options, "-b", ",".join(map(str, BATCHES)),
                                       "-t", ",".join(map(str, THREADS)), "-d", seconds, "--warmup", "2",
                                       "--no-placement", "--quiet", "--json").stdout)
            for r in report["results"]:
                p50[key].setdefault(f"b{r['batch']}_t{r['threads']}", []).append(r["latency_ms"]["p50_ms"])
    return {key: {c: statistics.median(v) for c, v in configs.items()} for key, configs in p50.items()}


def speedup(fp32: dict[str, float], int8: dict[str, float]) -> dict[str, float]:
    return {config: fp32[config] / int8[config] for config in fp32}


def quantize(name: str, directory: Path) -> dict:
    """`edgedl quantize` as the acceptance suite runs it (its options, task metric, separate real calibration and
    evaluation data): the task scores it judged, or the one line it refused with."""
    model = MODELS[name]
    files = TaskFiles(directory / f"{name}.eval.npz", directory / f"{name}.calibration.npz")
    data = model.data()
    np.savez(files.evaluation, **data.inputs, labels=data.labels)
    np.savez(files.calibration, **model.calibration())
    out = directory / f"{name}.int8.onnx"
    t0 = time.perf_counter()
    proc = edgedl(*quantize_args(model.path, model, files, out), check=False)
    quantize_s = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"options": list(model.quantize), "refused": proc.stderr.strip()}
    acc = json.loads(proc.stdout)["accuracy"]
    return {"options": list(model.quantize), "path": str(out), "quantize_s": quantize_s,
            "size_bytes": out.stat().st_size, "metric": model.metric, "samples": acc["samples"],
            "fp32_metric": acc["fp32_metric"], "int8_metric": acc["metric"], "metric_drop": acc["metric_drop"]}


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


def silero_int8(source: Path, directory: Path, seconds: float, rounds: int) -> dict:
    """The recipe's export quantized statically (as test_real_quantize does) with the VAD metric on the speech;
    the int8 model streamed over the speech with its own state, and its speed-up."""
    data = _vad_data()
    evaluation, calibration = directory / "speech.npz", directory / "speech-calibration.npz"
    np.savez(evaluation, input=data.inputs["input"], state=data.inputs["state"], labels=data.labels)
    np.savez(calibration, input=data.inputs["input"][1::2], state=data.inputs["state"][:, 1::2])
    out = directory / f"{source.stem}.int8.onnx"
    acc = json.loads(edgedl("quantize", source, "-o", out, "--mode", "static", "--calibration", calibration,
                            "--eval", evaluation, "--metric", f"{TASK_METRICS}:vad_frame_f1", "--speed-seconds",
                            "0", "--no-progress", "--json").stdout)["accuracy"]
    streamed = vad_probabilities(onnxruntime_run(out), data.inputs["input"], sr=False)
    p50 = bench({"fp32": source, "int8": out}, (), seconds, rounds)
    return {"size_bytes": out.stat().st_size, "fp32_metric": acc["fp32_metric"], "int8_metric": acc["metric"],
            "streamed_int8_f1": frame_f1(streamed > 0.5, data.labels), "bench_p50_ms": p50,
            "speedup": speedup(p50["fp32"], p50["int8"])}


def hf_exports() -> list[dict]:
    """Each transformers architecture through `edgedl export` in its own process, as the acceptance test runs it."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHITECTURES:
            out = Path(tmp) / f"{arch.name}.onnx"
            names = () if "--output-name" in arch.args else tuple(a for o in arch.outputs for a in ("--output-name", o))
            t0 = time.perf_counter()
            report = json.loads(edgedl("export", f"{HF_FILE}:{arch.name}", *arch.args, *names, "-o", out,
                                       "--json").stdout)
            v = report["validation"]
            rows.append({"architecture": arch.name, "export_s": time.perf_counter() - t0,
                         "size_bytes": report["size_bytes"], "exporter": report["exporter"],
                         "opset": report["opset"], "input_shapes": v["checks"][0]["input_shapes"],
                         "validation_max_abs_diff": v["max_abs_diff"], "validation_max_rel_diff": v["max_rel_diff"],
                         "degenerate": v["degenerate"]})
            print(arch.name, rows[-1], flush=True)
    return rows


def silero_recipe(seconds: float, rounds: int) -> list[dict]:
    """models/silero_vad.py exported from each of the package's weight files, next to the shipped ONNX; the export
    of silero_vad.jit (the shipped model's weights) also quantized."""
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
                         "validation_max_rel_diff": max(c["outputs"]["output"]["rel_diff"] for c in checks),
                         "bench_b1_p50_ms": torch_baseline(out, seconds),
                         "chunks": len(windows), "vs_shipped_max_abs_diff": float(np.abs(ours - shipped).max()),
                         "decision_agreement": float(((ours > 0.5) == (shipped > 0.5)).mean()),
                         "f1": frame_f1(ours > 0.5, truth), "shipped_f1": frame_f1(shipped > 0.5, truth)})
            if weights == "silero_vad.jit":
                rows[-1]["int8"] = silero_int8(out, Path(tmp), seconds, rounds)
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
    lines += _int8_table(report)
    if report.get("transformers"):
        lines += ["", "transformers architectures built from tiny configs (`tests/acceptance/hf_architectures.py`, "
                  "random weights made to give unit-scale outputs) through `edgedl export FILE:CLASS` with a dynamic "
                  "batch, validated at batch 2 and 5 (export s: the whole process, torch and transformers imports "
                  "included):", "",
                  "| architecture | input | exporter | export s | KiB | max abs diff | max rel diff |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in report["transformers"]:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r["input_shapes"].items())
            lines.append(f"| {r['architecture']} | {shapes} | {r['exporter']} | {r['export_s']:.1f} | "
                         f"{r['size_bytes'] / 1024:.0f} | {r['validation_max_abs_diff']:.1e} | "
                         f"{r['validation_max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def _int8_table(report: dict) -> list[str]:
    rows = [(name, r["int8"], r["size_bytes"]) for name, r in report["models"].items() if "int8" in r]
    recipe = next((r for r in report.get("silero_recipe", ()) if "int8" in r), None)
    if recipe:
        rows.append(("silero_vad recipe (silero_vad.jit)", {**recipe["int8"], "options": ["--mode", "static"],
                                                            "metric": "vad_frame_f1"}, recipe["size_bytes"]))
    if not rows:
        return []
    lines = ["", "int8: `edgedl quantize` with the acceptance suite's options, its task metric (`--metric "
             "tests/fixtures/task_metrics.py:FUNCTION`) on real evaluation data, separate real calibration data; "
             "speed-up = fp32 p50 / int8 p50 of `edgedl bench` at batch (b) and threads (t), the files "
             "interleaved:", "",
             "| model | quantize | task metric | fp32 | int8 | MiB fp32 -> int8 | b1 t1 | b1 t2 | b8 t1 | b8 t2 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, q, size in rows:
        if "refused" in q:
            lines.append(f"| {name} | `{' '.join(q['options'])}` | refused: "
                         f"{q['refused'].removeprefix('error: ').split(' - nothing written')[0]}"
                         " | | | | | | | |")
            continue
        up = q["speedup"]
        lines.append(f"| {name} | `{' '.join(q['options'])}` | {q['metric'].replace('_', ' ')} | "
                     f"{q['fp32_metric']:.1f} | {q['int8_metric']:.1f} | {size / 2**20:.2f} -> "
                     f"{q['size_bytes'] / 2**20:.2f} | "
                     + " | ".join(f"{up[f'b{n}_t{t}']:.2f}x" for n in BATCHES for t in THREADS) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="bench time per configuration and round")
    ap.add_argument("--bench-rounds", type=int, default=3, help="edgedl bench runs per model (median)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100, help="serve: requests per round (at most 1 s of them)")
    ap.add_argument("--only", nargs="*", choices=list(MODELS), help="measure only these models (printed, not written)")
    ap.add_argument("--skip-exports", action="store_true", help="leave out the transformers architectures")
    args = ap.parse_args()
    import onnxruntime

    report = {"machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} usable cores",
              "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": args.seconds,
              "bench_rounds": args.bench_rounds,
              "load_average_start": os.getloadavg(),
              "rounds": args.rounds, "requests": args.requests,
              "command": "python benchmarks/real_models.py " + " ".join(sys.argv[1:]), "models": {}}
    if not args.only:  # first: the exports (a failure there costs least)
        report["silero_recipe"] = silero_recipe(args.seconds, args.bench_rounds)
        report["transformers"] = [] if args.skip_exports else hf_exports()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or MODELS:
            model = MODELS[name]
            int8 = quantize(name, Path(tmp))
            paths = {"fp32": model.path, **({"int8": Path(int8["path"])} if "path" in int8 else {})}
            p50 = bench(paths, model.options, args.seconds, args.bench_rounds)
            if "int8" in p50:
                int8.update(bench_p50_ms=p50["int8"], speedup=speedup(p50["fp32"], p50["int8"]))
            report["models"][name] = {"size_bytes": model.path.stat().st_size, "bench_p50_ms": p50["fp32"],
                                      "int8": int8, "serve": serve_overhead(name, args.rounds, args.requests)}
            print(name, report["models"][name], flush=True)
    if args.only:  # a partial run is printed, never written over the full results
        print(markdown(report))
        return
    report["load_average_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "real_models.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (RESULTS / "real_models.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
