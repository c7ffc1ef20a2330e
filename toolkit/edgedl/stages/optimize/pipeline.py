"""``optimize(model, config)``: the target's profile -> the search space -> the search (build, judge, short
timings, successive halving) -> the finalists re-measured in interleaved rounds -> the Pareto front and the
choice -> (``-o DIR``) the chosen model, its configuration, the report and the plot, and (``package``) a bundle
for the target whose manifest records the result.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

from edgedl.console import progress
from edgedl.errors import EdgeDLError
from edgedl.stages.optimize import search as engine
from edgedl.runtime.manifest import sha256_file as file_hash
from edgedl.stages.optimize.cache import Cache, cache_dir
from edgedl.stages.optimize.config import DEFAULT_THROUGHPUT_BATCHES, OptimizeConfig
from edgedl.stages.optimize.device import LocalDevice, Scenario, SSHDevice, thread_counts
from edgedl.stages.optimize.front import Member, choose, speedup

MIN_ROUNDS_FOR_A_WIN = 5  # all 5 paired rounds one way: p = 1/32
from edgedl.stages.optimize.models import ModelLab
from edgedl.stages.optimize.report import ChosenConfig, OptimizeReport
from edgedl.stages.optimize.space import DEFAULT, KNOB_BY_NAME, Candidate, Space, digest


def _gpu(provider: str) -> bool:
    from edgedl.stages.quantize.config import GPU_PROVIDERS

    return provider.strip().lower() in {p.lower() for p in GPU_PROVIDERS}


def _device(config: OptimizeConfig, profile):
    if config.device is not None:
        return SSHDevice(config.device.target, config.device.remote_dir, profile)
    return LocalDevice()


def exclusion_sets(config: OptimizeConfig, lab: ModelLab) -> tuple[tuple[str, ...], ...]:
    """Sets of nodes to try keeping in float: none, and each set given. This is where a bisection that finds
    the nodes an int8 model goes wrong on (``edgedl debug``) adds the sets it finds."""
    sets = tuple(dict.fromkeys(tuple(s) for s in config.exclude_node_sets if s))
    if sets:
        known = set(lab.bench.node_names())
        for s in sets:
            for name in s:
                if name not in known:
                    import difflib

                    close = difflib.get_close_matches(name, sorted(known), n=1)
                    hint = f"did you mean '{close[0]}'? " if close else ""
                    raise EdgeDLError(f"no node '{name}' in the (preprocessed) graph; {hint}list node names with: "
                                      "edgedl inspect MODEL --json", option=("exclude_nodes", "NAME[,NAME]"))
    return ((),) + sets


def build_space(config: OptimizeConfig, profile, device, lab: ModelLab, gpu: bool) -> Space:
    """The knobs' values for this target, device and data, narrowed by the user's choices."""
    signature = lab.bench.signature
    if signature.fixed_batch is not None:
        batches: tuple[int, ...] = (signature.fixed_batch,)
    elif not signature.batchable:
        batches = (1,)
    else:
        batches = config.batches or (DEFAULT_THROUGHPUT_BATCHES if config.objective == "throughput" else (1,))
    calibration = lab.bench.plan.calibration
    n_cal = len(calibration) if calibration is not None else 0
    samples = tuple(dict.fromkeys([*(s for s in (32, 128) if s < n_cal), None]))
    cores = device.cores
    values = {k.name: k.values for k in KNOB_BY_NAME.values()}
    values.update(
        precision=("fp32", "dynamic", "static") + (("fp16",) if gpu else ()),
        calibration_samples=samples,
        intra_op_threads=thread_counts(cores),
        inter_op_threads=tuple(v for v in (2, 4) if v <= cores) or (2,),
        exclude_nodes=exclusion_sets(config, lab),
        batch=batches,
    )
    for name, chosen in config.space.items():
        if name == "precision" and "fp16" in chosen and not gpu:
            raise EdgeDLError(f"fp16 is for GPU targets; {profile.name} runs on {', '.join(profile.providers)} "
                              "(onnxruntime's CPU kernels compute fp16 models in fp32)",
                              option=("space", "precision=fp32,dynamic,static"))
        values[name] = chosen
    return Space(values)


def allowed(c: Candidate, device, gpu: bool) -> bool:
    """Constraints across knobs and the device: a graph optimized at 'all' holds layouts for this machine's CPU
    only, and a GPU target's graph is optimized by its own provider, not saved by the CPU's."""
    if not c.saved_optimized:
        return True
    if gpu:
        return c.graph_optimization == "basic"
    return device.kind == "local" or c.graph_optimization != "all"


def seeds(space: Space, profile, lab: ModelLab) -> list[Candidate]:
    """Where every search starts: fp32, what ``quantize --mode auto`` builds (dynamic and static with quantize's
    defaults) and static with the target's preset, at the target's thread count when it is searched (else 1,
    the thread count quantize's speed gate uses)."""
    from edgedl.stages.quantize.config import StaticConfig, default_reduce_range

    threads = space.values["intra_op_threads"]
    t = profile.threads if profile.threads in threads else (1 if 1 in threads else threads[0])
    quantize_static = StaticConfig(reduce_range=default_reduce_range(target_provider=lab.qconfig.gates.target_provider))
    out = []
    for batch in space.values["batch"]:
        base = dataclasses.replace(DEFAULT, intra_op_threads=t, batch=batch)
        out += [base, dataclasses.replace(base, precision="dynamic")]
        for st in (quantize_static, lab.qconfig.static):
            out.append(dataclasses.replace(base, precision="static", quant_format=st.format,
                                           per_channel=st.per_channel, calibration_method=st.calibration_method,
                                           activation_type=st.activation_type, weight_type=st.weight_type,
                                           reduce_range=st.reduce_range))
    return [c.normalized() for c in out]


def baseline(profile, batch: int) -> Candidate:
    """fp32 as a device runs it without optimize: the profile's thread count, onnxruntime's defaults."""
    return dataclasses.replace(DEFAULT, intra_op_threads=profile.threads, batch=batch).normalized()


def _finalists(search: engine.Search, limit: int) -> list[engine.Trial]:
    """The best by the objective, and the front of the short timings (accuracy vs speed vs size)."""
    timed = [t for t in search.trials if t.status in ("timed", "pruned") and t.timing is not None]
    ranked = sorted(timed, key=search.rank)
    if search.objective == "size":
        ranked = sorted(timed, key=lambda t: (t.artifact.size_bytes, search.rank(t)))

    def dominated(t) -> bool:
        mine = (t.loss, search.rank(t), t.artifact.size_bytes)
        return any(o is not t and all(a <= b for a, b in zip((o.loss, search.rank(o), o.artifact.size_bytes), mine))
                   and (o.loss, search.rank(o), o.artifact.size_bytes) != mine for o in timed)

    out = ranked[:3] + [t for t in ranked[3:] if not dominated(t)]
    return out[:limit]


def _check_output(output: Path | None) -> None:
    if output is None:
        return
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise EdgeDLError(f"{output} already exists and is not empty; choose another output directory or remove "
                          "it (the cache keeps every measurement: a re-run is fast)", option=("output", "DIR"))


def optimize(model_path: Path | str, config: OptimizeConfig, debug: bool = False) -> OptimizeReport:
    from edgedl.stages.profiles import load_profile
    from edgedl.stages.quantize.preprocess import check_input

    started = time.perf_counter()
    model_path = Path(model_path)
    output = Path(config.output) if config.output else None
    _check_output(output)
    profile = load_profile(config.target)
    provider = profile.providers[0]
    gpu = _gpu(provider)
    device = _device(config, profile)
    notes: list[str] = []
    if device.kind == "local":
        import onnxruntime

        from edgedl.runtime.providers import resolve_provider

        if resolve_provider(provider) not in onnxruntime.get_available_providers():
            raise EdgeDLError(f"{profile.name} runs on {provider}, which this machine's onnxruntime lacks; time on "
                              "the device itself", option=("device", "USER@HOST"))
        if profile.arch != device.arch:
            notes.append(f"timed on this machine ({device.arch}), not on a {profile.name} ({profile.arch}): give the "
                         "device (--device USER@HOST) for figures that hold there")
    if config.rounds < MIN_ROUNDS_FOR_A_WIN:
        notes.append(f"{config.rounds} interleaved rounds cannot show a difference beyond chance (a sign test needs "
                     f"{MIN_ROUNDS_FOR_A_WIN}): every comparison reads as a tie")
    original = check_input(model_path, (output or model_path.parent / "optimize") / "model.onnx")
    with tempfile.TemporaryDirectory(prefix="edgedl-optimize-") as tmp:
        work = Path(tmp)
        cache = Cache(cache_dir(config.cache_dir)) if config.use_cache else Cache(work / "cache", enabled=False)
        static = "static" in config.space.get("precision", ("static",))
        lab = ModelLab(model_path, original, profile, config.gates, config.data, config.shape_options, cache,
                       work / "lab", static, gpu, debug)
        notes += list(lab.bench.plan.notes)
        space = build_space(config, profile, device, lab, gpu)
        first = seeds(space, profile, lab)
        variants = space.variants(config.seed, first)
        sessions = space.sessions(config.seed, first[0])
        inputs = lab.timing_inputs()
        scenario = Scenario(config.scenario, provider, config.shape_options.to_json(), inputs, config.seed)
        inputs_digest = file_hash(inputs)[:20] if inputs else "synthetic"
        budget = config.budget_s
        with progress(f"optimize {model_path.name}", total=int(round(budget)), enabled=config.progress) as advance:
            clock = engine.Clock(budget, on_charge=lambda s: advance(s))
            search = engine.Search(lab, device, scenario, cache, clock, config.objective, config.latency_budget_ms,
                                   config.rung_seconds, inputs_digest, report=lambda text: advance(0, info=text))
            reserve = engine.RESERVE_SHARE * budget
            search.explore(variants, sessions, (budget - reserve) * engine.EXPLORE_SHARE,
                           lambda c: allowed(c, device, gpu))
            search.halve(budget - reserve)
            for t in search.trials:
                if t.accuracy is not None:
                    t.loss = lab.accuracy_loss(t.accuracy.evaluation)
            batches = len(space.values["batch"])
            affordable = engine.finalists_affordable(reserve, config.rounds, search.overhead())
            finalists = _finalists(search, max(1, affordable - batches))
            if not finalists:
                reasons = sorted({f"{t.status}: {t.note}" for t in search.trials})[:3]
                raise EdgeDLError("no configuration could be timed (" + "; ".join(reasons) + ")")
            members = _remeasure(search, finalists, profile, config, budget)
        choice = choose(members, config.objective, config.latency_budget_ms, config.rounds)
        chosen = choice.chosen
        fp32_eval = lab.bench.fp32
        chosen_config = ChosenConfig(
            chosen.candidate, lab.quantize_settings(chosen.candidate), provider, config.scenario,
            {"source": str(model_path), "source_sha256": lab.model_sha, "sha256": chosen.trial.artifact.sha256,
             "size_bytes": chosen.size},
            {"latency_ms": chosen.p50_ms, "p90_ms": chosen.p90_ms, "throughput": chosen.samples_per_s,
             "speedup": speedup(chosen, config.objective == "throughput"), "accuracy_drop": chosen.accuracy_drop,
             "device": device.label})
        report = OptimizeReport(
            model=model_path, target=profile.name, device=device.label, objective=config.objective, chosen=chosen,
            pareto=list(choice.front), finalists=members, trials=search.trials, reason=choice.reason,
            config=config.to_json(), space=space.to_json(), space_size=space.size(), budget_s=budget,
            spent_s=clock.spent, wall_s=0.0,
            work={"built": lab.builds, "evaluated": lab.evaluations, "timed": search.timed,
                  "cache_hits": cache.hits, "cache_misses": cache.misses, "candidates": len(search.trials),
                  "charged_s": {k: round(v, 2) for k, v in clock.by_kind.items()}},
            accuracy_basis=lab.accuracy_basis, fp32_accuracy=fp32_eval.accuracy if fp32_eval else None,
            notes=notes, chosen_config=chosen_config)
        report.wall_s = time.perf_counter() - started
        if output is not None:
            _write_outputs(report, output, profile, config, original)
    report.wall_s = time.perf_counter() - started
    return report


def _remeasure(search: engine.Search, finalists: list, profile, config: OptimizeConfig, budget: float) -> list[Member]:
    """The finalists and fp32 (at each of their batches), timed in ``config.rounds`` interleaved rounds."""
    members: list[engine.Trial] = []
    baselines: dict[int, engine.Trial] = {}
    for batch in dict.fromkeys(t.candidate.batch for t in finalists):
        trial = engine.Trial(baseline(profile, batch))
        if not search.prepare(trial):
            same = next((t for t in search.trials if search.identity(t) == search.identity(trial)), None)
            if same is None:
                raise EdgeDLError(f"the fp32 model cannot be timed as a baseline: {trial.note}")
            trial = same
        baselines[batch] = trial
    members = list(dict.fromkeys([*baselines.values(), *finalists]))
    for t in members:
        t.loss = search.lab.accuracy_loss(t.accuracy.evaluation)
    duration = engine.final_duration(budget - search.clock.spent, len(members), config.rounds, search.overhead(),
                                     config.final_seconds)
    tag = digest(sorted(search.identity(t) for t in members) + [config.rounds, duration])
    for r in range(config.rounds):
        shift = r % len(members)
        search.time(members[shift:] + members[:shift], duration, tag=f"final:{tag}:{r}", final=True)
    fp32 = search.lab.bench.fp32
    by_trial = {}
    for t in members:
        if len(t.final) != config.rounds:
            continue
        drop = (fp32.accuracy - t.accuracy.evaluation.accuracy) if (
            fp32 is not None and fp32.accuracy is not None and t.accuracy.evaluation.accuracy is not None) else None
        by_trial[id(t)] = Member(t, list(t.final), loss=t.loss, accuracy_drop=drop)
    for batch, base in baselines.items():
        if id(base) not in by_trial:
            raise EdgeDLError(f"timing fp32 at batch {batch} failed on the device: {base.note}")
    for t in members:
        m = by_trial.get(id(t))
        if m is not None:
            m.baseline = by_trial[id(baselines[t.candidate.batch])]
    return list(by_trial.values())


def _write_outputs(report: OptimizeReport, output: Path, profile, config: OptimizeConfig, original) -> None:
    """DIR/model.onnx (the chosen file, with the input's metadata and the records of how it was made),
    config.json, report.json, pareto.png and, with packaging, DIR/bundle."""
    from edgedl.stages.files import atomic_output_dir
    from edgedl.stages.optimize.plot import plot_front
    from edgedl.stages.quantize.pipeline import write_model

    chosen = report.chosen
    with atomic_output_dir(output) as staging:
        records = {"optimization": report.chosen_config.to_json()}
        if chosen.candidate.precision != "fp32":
            records["quantization"] = {"mode": chosen.candidate.precision, "source": str(report.model),
                                       "config": report.chosen_config.quantize}
        write_model(chosen.trial.artifact.path, original, staging / "model.onnx", records)
        report.chosen_config = dataclasses.replace(
            report.chosen_config,
            model={**report.chosen_config.model, "file_sha256": file_hash(staging / "model.onnx")})
        (staging / "config.json").write_text(json.dumps(report.chosen_config.to_json(), indent=2) + "\n")
        report.outputs = {"model": str(output / "model.onnx"), "config": str(output / "config.json"),
                          "report": str(output / "report.json"), "plot": str(output / "pareto.png")}
        plot_front(report, staging / "pareto.png")
        if config.package:
            report.outputs["bundle"] = str(output / "bundle")
        (staging / "report.json").write_text(json.dumps(report.to_json(), indent=1, default=str) + "\n")
    if config.package:
        from edgedl.stages.package import PackageConfig, package

        name = report.model.stem
        record = {"objective": report.objective, "chosen": report.to_json()["chosen"],
                  "pareto": report.to_json()["pareto"], "device": report.device,
                  "config": report.chosen_config.to_json()}
        package(PackageConfig(models=[output / "model.onnx"], target=profile.name, output=output / "bundle",
                              names=[name], progress=config.progress, optimization=record))
