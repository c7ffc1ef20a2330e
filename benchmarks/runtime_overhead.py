"""Runtime overhead and idle memory: ``Runner.run`` vs a bare ``InferenceSession.run`` on the zoo at batch 1
(interleaved rounds, medians, same process), and the idle RSS of a process that holds a Runner (and one that
serves the model) vs a bare ``python -c "import onnxruntime, numpy; InferenceSession(...)"`` process.

usage: python benchmarks/runtime_overhead.py [ZOO_DIR] [--rounds 7] [--iterations 3000]
       (ZOO_DIR holds NAME.onnx; default: the test zoo under build/test-zoo, built if missing)
Writes benchmarks/results/runtime_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ZOO = ("mlp", "cnn", "lstm", "transformer")


def zoo_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_zoo  # the same cached, trained + exported zoo the tests use

    return build_zoo(ROOT / "build" / "test-zoo")["mlp"].onnx.parent


def overhead(path: Path, rounds: int, iterations: int) -> dict:
    import onnxruntime as ort

    from edgedl.runtime import Runner, RunnerConfig, measure

    runner = Runner(path, RunnerConfig(intra_op_threads=1, inter_op_threads=1))
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    bare = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = runner.example_inputs({"batch": 1, "seq": 8})
    array = next(iter(feeds.values()))
    names = [o.name for o in bare.get_outputs()]
    calls = {
        "bare InferenceSession.run": lambda: bare.run(names, feeds),
        "Runner.run(dict)": lambda: runner.run(feeds),
        "Runner.run(array)": lambda: runner.run(array),
    }
    p50 = {k: [] for k in calls}
    for _ in range(rounds):  # interleaved: drift on a shared machine hits every variant alike
        for key, fn in calls.items():
            p50[key].append(measure(fn, warmup=200, iterations=iterations).p50_ms * 1000)
    med = {k: statistics.median(v) for k, v in p50.items()}
    base = med["bare InferenceSession.run"]
    return {"p50_us": med, "ratio_vs_bare": {k: v / base for k, v in med.items()}, "rounds_p50_us": p50}


RSS = "import re; print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"


def rss_kib(code: str) -> int:
    out = subprocess.run([sys.executable, "-c", code + "\n" + RSS], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def idle_rss(path: Path, repeats: int = 3) -> dict:
    p = str(path)
    variants = {
        "bare onnxruntime + numpy + InferenceSession": f"import onnxruntime, numpy\ns = onnxruntime.InferenceSession({p!r})",
        "edgedl.runtime.load + warmup": f"from edgedl.runtime import load\nr = load({p!r})\nr.warmup()",
        "edgedl serve app (models loaded + warm, no socket)": (
            f"from pathlib import Path\nfrom edgedl.runtime.server import ServerConfig, build\n"
            f"import uvicorn, httptools, uvloop\napp = build(ServerConfig(model=Path({p!r})))"),
    }
    out = {k: statistics.median(rss_kib(code) for _ in range(repeats)) for k, code in variants.items()}
    base = out["bare onnxruntime + numpy + InferenceSession"]
    return {"rss_mib": {k: v / 1024 for k, v in out.items()}, "ratio_vs_bare": {k: v / base for k, v in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", nargs="?")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iterations", type=int, default=3000)
    args = ap.parse_args()
    directory = zoo_dir(args.zoo)
    import onnxruntime

    report = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
              "onnxruntime": onnxruntime.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python benchmarks/runtime_overhead.py " + " ".join(sys.argv[1:]), "models": {}}
    for name in ZOO:
        report["models"][name] = overhead(directory / f"{name}.onnx", args.rounds, args.iterations)
        print(name, {k: round(v, 2) for k, v in report["models"][name]["p50_us"].items()}, flush=True)
    report["idle_rss"] = idle_rss(directory / "cnn.onnx")
    print(report["idle_rss"], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtime_overhead.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Runtime overhead ({report['date']}, {report['machine']}, onnxruntime {report['onnxruntime']})", "",
             f"`{report['command']}` - batch 1, 1 intra-op thread, median of {args.rounds} interleaved rounds of "
             f"{args.iterations} calls (p50 per round).", "",
             "| model | bare `InferenceSession.run` µs | `Runner.run(dict)` µs | ratio | `Runner.run(array)` µs | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report["models"].items():
        p, q = r["p50_us"], r["ratio_vs_bare"]
        lines.append(f"| {name} | {p['bare InferenceSession.run']:.2f} | {p['Runner.run(dict)']:.2f} | "
                     f"{q['Runner.run(dict)']:.3f} | {p['Runner.run(array)']:.2f} | {q['Runner.run(array)']:.3f} |")
    lines += ["", "Idle RSS (cnn, median of 3 fresh processes):", "", "| process | RSS MiB | ratio vs bare |",
              "| --- | ---: | ---: |"]
    for k, v in report["idle_rss"]["rss_mib"].items():
        lines.append(f"| {k} | {v:.1f} | {report['idle_rss']['ratio_vs_bare'][k]:.2f} |")
    (RESULTS / "runtime_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
