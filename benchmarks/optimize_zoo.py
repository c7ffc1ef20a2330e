"""`edgedl optimize` on the zoo: what it chooses within a budget, checked against fp32 and against
`edgedl quantize --mode auto` at the same accuracy budget, and what the cache saves on a second run.

Per model: (1) `edgedl optimize MODEL --target x86-server --batch 32 --budget B --json -o DIR` in a fresh
process with an empty cache, (2) the same command again (cache warm), wall times of both processes, (3)
`edgedl quantize MODEL --mode auto` (its defaults: batch-32 speed gate, 1 thread) with the same
--max-accuracy-drop, (4) an interleaved comparison of fp32, auto's model and optimize's choice, all through the
bench worker: R rounds, each of the three timed once per round in rotated order, in fresh processes; "faster"
needs a sign test over the paired rounds at p <= 0.05 (8 of 9 rounds) and a >= 3 % median margin (optimize's
own rule), else "tie". Auto's model runs with
the profile's default session settings (what deploying it does) and, as a second row, with optimize's chosen
session settings (so the model choice is compared apart from the session).

usage: python benchmarks/optimize_zoo.py [--budget 3m] [--models mlp,cnn,lstm,transformer] [--rounds 9]
       [--seconds 1.0] [--acceptance ppocr_cls] [--out benchmarks/results]

--acceptance adds shipped models of the acceptance suite (tests/acceptance/real_tasks.py), each with its size
options, real calibration and evaluation data and its task metric (gate: metric drop <= 1 point), given to both
optimize and quantize.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_common import ZOO, find_or_build_zoo  # noqa: E402

MAX_DROP = 1.0
TARGET = "x86-server"


def edgedl(*args, env=None) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgedl", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"edgedl {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return json.loads(proc.stdout), wall


def compare(models: dict[str, tuple[Path, object]], batch: int, rounds: int, seconds: float,
            inputs: Path | None) -> dict[str, dict]:
    """Interleaved rounds through optimize's own device and noise rule; fp32 is the reference."""
    from edgedl.stages.optimize.device import LocalDevice, Request, Scenario
    from edgedl.stages.optimize.front import Member, speedup, verdict

    device = LocalDevice()
    scenario = Scenario("single-stream", "cpu", {}, inputs, 0)
    names = list(models)
    timings: dict[str, list] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        results = device.measure(scenario, [Request(models[n][1], models[n][0], seconds) for n in order])
        for n, t in zip(order, results):
            if isinstance(t, Exception):
                raise SystemExit(f"timing {n} failed: {t}")
            timings[n].append(t)
    members = {n: Member(None, timings[n]) for n in names}
    fp32 = members["fp32"]
    out = {}
    for n, m in members.items():
        m.baseline = fp32
        out[n] = {"p50_ms": m.p50_ms, "speedup": speedup(m, False), "vs_fp32": verdict(m, fp32, False),
                  "rounds_p50_ms": [t.p50_ms for t in m.rounds]}
    for n in names:
        if n != "optimize":
            out["optimize"][f"vs_{n}"] = verdict(members["optimize"], members[n], False)
    return out


@dataclass(frozen=True)
class Subject:
    """A model to optimize: its file, the options both optimize and quantize get (sizes, data, metric) and the
    real inputs the comparison times it on."""

    name: str
    path: Path
    options: tuple = ()
    inputs: Path | None = None
    gate: str = "top-1"


def zoo_subject(name: str, zoo: Path, work: Path) -> Subject:
    import numpy as np

    from edgedl.recipe import load_recipe

    inputs = work / f"{name}-inputs.npz"
    np.savez(inputs, **load_recipe(name).split("test").inputs)
    return Subject(name, zoo / f"{name}.onnx", inputs=inputs)


def acceptance_subject(name: str, work: Path) -> Subject:
    """A shipped model of the acceptance suite with its real task data and task metric (tests/acceptance)."""
    import numpy as np

    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "acceptance")]
    from real_tasks import MODELS

    model = MODELS[name]
    data = model.data()
    evaluation, calibration, inputs = (work / f"{name}.{k}.npz" for k in ("eval", "calibration", "inputs"))
    np.savez(evaluation, **data.inputs, labels=data.labels)
    np.savez(calibration, **model.calibration())
    np.savez(inputs, **data.inputs)
    options = (*model.options, "--calibration", calibration, "--eval", evaluation, "--metric", model.metric_target,
               "--max-metric-drop", MAX_DROP)
    return Subject(name, model.path, options, inputs, gate=model.metric.replace("_", " "))


def run_model(subject: Subject, args, work: Path) -> dict:
    import dataclasses

    from edgedl.stages.optimize import Candidate
    from edgedl.stages.profiles import load_profile

    name, path = subject.name, subject.path
    cache = work / f"cache-{name}"
    common = ["optimize", path, "--target", TARGET, "--batch", "32", "--budget", args.budget, "--max-accuracy-drop",
              MAX_DROP, "--cache", cache, "--json", *subject.options]
    first, first_wall = edgedl(*common, "-o", work / f"{name}-1")
    second, second_wall = edgedl(*common, "-o", work / f"{name}-2")
    auto_path = work / f"{name}.auto.onnx"
    auto, _ = edgedl("quantize", path, "-o", auto_path, "--mode", "auto", "--max-accuracy-drop", MAX_DROP,
                     *subject.options, "--no-progress", "--json")
    chosen = first["chosen"]
    choice = Candidate.from_json(chosen["configuration"])
    threads = load_profile(TARGET).threads
    default_session = dataclasses.replace(Candidate(), intra_op_threads=threads, batch=32).normalized()
    auto_model = auto_path if auto["mode"] != "fp32" else path
    models = {"fp32": (path, default_session), "auto": (auto_model, default_session),
              "auto+session": (auto_model, dataclasses.replace(choice, saved_optimized=False).normalized()),
              "optimize": (work / f"{name}-1" / "model.onnx", choice)}
    comparison = compare(models, 32, args.rounds, args.seconds, subject.inputs)
    pareto_png = work / f"{name}-1" / "pareto.png"
    return {
        "chosen": {k: chosen[k] for k in ("label", "configuration", "accuracy_drop", "accuracy_loss",
                                           "accuracy_basis", "speedup", "vs_fp32", "latency_ms", "size_bytes",
                                           "reason")},
        "on_front": any(m["sha256"] == chosen["sha256"] and m["configuration"] == chosen["configuration"]
                        for m in first["pareto"]),
        "pareto": [{k: m[k] for k in ("label", "accuracy_drop", "speedup", "latency_ms", "size_bytes", "vs_fp32")}
                   for m in first["pareto"]],
        "fp32_accuracy": first["fp32_accuracy"], "gate": subject.gate,
        "candidates": len(first["candidates"]), "space_size": first["space_size"], "work": first["work"],
        "first_wall_s": first_wall, "second_wall_s": second_wall,
        "second_same_choice": second["chosen"]["configuration"] == chosen["configuration"]
        and second["chosen"]["sha256"] == chosen["sha256"],
        "second_work": second["work"],
        "auto": {"mode": auto["mode"],
                 "accuracy_drop": auto["accuracy"]["drop_points"] if auto["accuracy"]["drop_points"] is not None
                 else auto["accuracy"].get("metric_drop"),
                 "size_bytes": auto["size_bytes"]["quantized"] or auto["size_bytes"]["fp32"]},
        "comparison": comparison,
        "pareto_png": str(pareto_png),
    }


def drop(chosen: dict) -> float:
    """Points lost: top-1 with labels, else the task metric's drop (the front's accuracy axis)."""
    return chosen["accuracy_drop"] if chosen["accuracy_drop"] is not None else chosen["accuracy_loss"]


def markdown(results: dict, meta: dict) -> str:
    lines = [f"# `edgedl optimize` on {', '.join(results)}", "",
             f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores, shared; load {meta['load']}), "
             f"onnxruntime {meta['onnxruntime']}, target {TARGET} (this machine), objective latency at batch 32, "
             f"--max-accuracy-drop {MAX_DROP}, --budget {meta['budget']}.",
             f"Command: `{meta['command']}`", "",
             "Comparison: fp32, `quantize --mode auto`'s model and optimize's choice re-timed together in "
             f"{meta['rounds']} interleaved rounds of {meta['seconds']} s (bench worker processes); speed-up = median "
             "of per-round fp32/x ratios; 'faster' only when a sign test over the paired rounds gives p <= 0.05 "
             "(8 of 9 rounds) and the median margin is >= 3 %, "
             "else 'tie'. auto runs with the profile's default session (what deploying it does); auto+session "
             "runs auto's model with optimize's chosen session settings.", "",
             "| model | optimize chose | drop (points) | size KiB | vs fp32 | auto picked | auto vs fp32 | "
             "optimize vs auto | optimize vs auto+session | on front | searched |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        c, cmp = r["chosen"], r["comparison"]
        o = cmp["optimize"]
        lines.append(f"| {name} | {c['label']} | {drop(c):.2f} ({r.get('gate', 'top-1')}) | "
                     f"{c['size_bytes'] / 1024:.1f} | "
                     f"{o['speedup']:.2f}x ({o['vs_fp32']}) | {r['auto']['mode']} | "
                     f"{cmp['auto']['speedup']:.2f}x ({cmp['auto']['vs_fp32']}) | {o['vs_auto']} "
                     f"({o['speedup'] / cmp['auto']['speedup']:.2f}x) | {o['vs_auto+session']} "
                     f"({o['speedup'] / cmp['auto+session']['speedup']:.2f}x) | {'yes' if r['on_front'] else 'NO'} | "
                     f"{r['candidates']} of {r['space_size']} |")
    lines += ["", "Cache: the same command run twice, each in a fresh process (wall seconds):", "",
              "| model | first run | second run | ratio | same choice | second run built / checked / timed |",
              "|---|---|---|---|---|---|"]
    for name, r in results.items():
        w = r["second_work"]
        lines.append(f"| {name} | {r['first_wall_s']:.0f} | {r['second_wall_s']:.1f} | "
                     f"{r['first_wall_s'] / r['second_wall_s']:.1f}x | {'yes' if r['second_same_choice'] else 'NO'} | "
                     f"{w['built']} / {w['evaluated']} / {w['timed']} |")
    lines += ["", "Reasons given:", ""]
    for name, r in results.items():
        lines.append(f"- {name}: {r['chosen']['label']} - {r['chosen']['reason']}")
    beats = sum(1 for r in results.values() if r["comparison"]["optimize"]["vs_auto"] == "faster")
    lines += ["", f"optimize measurably faster than auto's pick on {beats} of {len(results)} models; never slower "
              f"than fp32: {all(r['comparison']['optimize']['vs_fp32'] != 'slower' for r in results.values())}; "
              f"choice within the accuracy budget: "
              f"{all(drop(r['chosen']) <= MAX_DROP for r in results.values())}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="3m")
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--acceptance", default="", help="also these acceptance models (tests/acceptance), e.g. "
                                                          "ppocr_cls")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--stem", default="optimize_zoo", help="name of the .json/.md files written in --out")
    args = parser.parse_args()
    import onnxruntime

    from edgedl.stages.machine import cpu_info

    zoo = find_or_build_zoo()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="optimize-zoo-") as tmp:
        work = Path(tmp)
        subjects = [zoo_subject(n, zoo, work) for n in args.models.split(",") if n]
        subjects += [acceptance_subject(n, work) for n in args.acceptance.split(",") if n]
        for subject in subjects:
            t0, name = time.time(), subject.name
            results[name] = run_model(subject, args, work)
            r = results[name]
            print(f"{name}: {r['chosen']['label']} {r['comparison']['optimize']['speedup']:.2f}x fp32 "
                  f"({r['comparison']['optimize']['vs_fp32']}), vs auto {r['comparison']['optimize']['vs_auto']}; "
                  f"runs {r['first_wall_s']:.0f} s / {r['second_wall_s']:.1f} s ({time.time() - t0:.0f} s)", flush=True)
            png = Path(r["pareto_png"])
            if png.is_file():
                (out / f"optimize_{name}_pareto.png").write_bytes(png.read_bytes())
                r["pareto_png"] = f"benchmarks/results/optimize_{name}_pareto.png"
    cpu = cpu_info()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu.get("model"),
            "cores": cpu.get("usable_cores"), "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
            "load": f"{os.getloadavg()[0]:.1f}", "budget": args.budget, "rounds": args.rounds, "seconds": args.seconds,
            "command": "python benchmarks/optimize_zoo.py " + " ".join(sys.argv[1:])}
    (out / f"{args.stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (out / f"{args.stem}.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
