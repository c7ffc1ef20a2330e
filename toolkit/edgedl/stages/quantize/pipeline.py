"""``quantize(model, config)``: preprocess -> convert -> accuracy gate -> speed gate -> (auto: choose) ->
atomic write. Nothing is written at the output path unless the result passed its gates."""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path

from edgedl._lazy import require
from edgedl.console import progress
from edgedl.errors import EdgeDLError
from edgedl.runtime import metadata as meta_codec
from edgedl.stages.files import atomic_output
from edgedl.stages.quantize import debug as layer_debug
from edgedl.stages.quantize.config import QuantizeConfig
from edgedl.stages.quantize.data import plan_data
from edgedl.stages.quantize.gates import compare_speed, evaluate, runner, timing_feeds
from edgedl.stages.quantize.ops import analyze
from edgedl.stages.quantize.passes import PASSES, PassContext
from edgedl.stages.quantize.preprocess import check_input, op_histogram, preprocess
from edgedl.stages.quantize.report import Candidate, QuantizeReport


def _candidate_modes(config: QuantizeConfig) -> list[str]:
    if config.mode != "auto":
        return [config.mode]
    return ["dynamic", "static"] + (["fp16"] if config.gates.gpu_target else [])


def _check_nodes(names, model) -> None:
    known = [n.name for n in model.graph.node if n.name]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise EdgeDLError(f"--exclude-nodes: no node '{name}' in the (preprocessed) graph; {hint}"
                              "list node names with: edgedl inspect MODEL --json")


def _convert(mode: str, source: Path, config: QuantizeConfig, ctx: PassContext, tag: str = "") -> Candidate:
    onnx = require("onnx")
    target = ctx.workdir / f"{mode}{tag}.onnx"
    try:
        notes = PASSES[mode](source, target, config, ctx)
    except EdgeDLError:
        raise
    except Exception as exc:  # a converter failing on a model is reported, not a crash of edgedl
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgeDLError(f"{mode} conversion failed: {type(exc).__name__}: {first}; try --exclude-op-types "
                          "for the op named, or another --mode") from exc
    cand = Candidate(mode, target, size_bytes=target.stat().st_size, notes=notes,
                     excluded_nodes=list(ctx.exclude_nodes))
    if mode != "fp32":
        qdq = set(require("onnxruntime.quantization.registry").QDQRegistry) if (
            mode == "static" and config.static.format == "qdq") else None
        cand.ops = analyze(ctx.model, onnx.load(str(target)), mode, qdq)
    return cand


def _evaluate(cand: Candidate, plan, reference, config: QuantizeConfig, fp32_acc: float | None) -> None:
    if plan.evaluation is None:
        return
    with runner(cand.path, config.gates.threads, config.gates.target_provider) as model:
        cand.evaluation, _ = evaluate(model, plan.evaluation, reference)
    if config.gates.accuracy_gate and fp32_acc is not None:
        cand.accuracy_ok = fp32_acc - cand.evaluation.accuracy <= config.gates.max_accuracy_drop + 1e-9


def _write(cand: Candidate, original, output: Path, record: dict) -> None:
    """Copy the input's metadata (recipe, labels, ...) plus the quantization record; replace atomically."""
    onnx = require("onnx")
    model = onnx.load(str(cand.path))
    props = {p.key: p.value for p in original.metadata_props}
    props.update(meta_codec.encode({"quantization": record}))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_output(output) as tmp:
        onnx.save(model, str(tmp))


def _fallback(report_steps: list, cand: Candidate, pre: Path, config: QuantizeConfig, ctx: PassContext, plan,
              reference, fp32_acc, advance) -> tuple[Candidate, dict]:
    """--debug-layers / --fallback-worst: rank tensors by SQNR, keep the K worst nodes in float one at a time."""
    # ranked on calibration data: choosing what to keep float on the test split would tune on the gate's data
    errors = layer_debug.layer_errors(pre, cand.path, plan.calibration, ctx.workdir, ctx.debug)
    advance(info="layer SQNR")
    order = layer_debug.worst_nodes(errors, config.fallback_worst, list(ctx.exclude_nodes))
    best = cand
    for step, node in enumerate(order, 1):
        ctx.exclude_nodes.append(node)
        nxt = _convert("static", pre, config, ctx, tag=f"-fallback{step}")
        _evaluate(nxt, plan, reference, config, fp32_acc)
        report_steps.append({"step": step, "kept_float": node, "excluded_nodes": list(ctx.exclude_nodes),
                             "accuracy": nxt.evaluation.accuracy if nxt.evaluation else None,
                             "agreement": nxt.evaluation.agreement if nxt.evaluation else None,
                             "size_bytes": nxt.size_bytes})
        advance(info=f"fallback {step}: {node}")
        best = nxt
    if order and len(order) < config.fallback_worst:
        cand.notes.append(f"only {len(order)} node(s) could be kept in float")
    return best, errors


def quantize(model_path: Path | str, config: QuantizeConfig, debug: bool = False) -> QuantizeReport:
    onnx = require("onnx")
    model_path = Path(model_path)
    output = Path(config.output)
    original = check_input(model_path, output)
    if output.is_dir():
        raise EdgeDLError(f"output {output} is a directory; pass -o path/to/model.int8.onnx")
    gates = config.gates
    modes = _candidate_modes(config)
    with tempfile.TemporaryDirectory(prefix="edgedl-quantize-") as tmp:
        work = Path(tmp)
        pre = work / "preprocessed.onnx"
        steps = 2 + 2 * len(modes) + (1 if gates.speed_seconds > 0 else 0) + (
            1 + config.fallback_worst if config.debug_layers or config.fallback_worst else 0)
        with progress(f"quantize {model_path.name}", steps, enabled=config.progress) as advance:
            notes = preprocess(model_path, pre, debug)
            pre_model = onnx.load(str(pre))
            _check_nodes(config.exclude_nodes, pre_model)
            advance(info="preprocessed")
            with runner(model_path, gates.threads, gates.target_provider) as fp32_runner:
                plan = plan_data(fp32_runner.metadata, fp32_runner.inputs, config.data, config.calibration_npz,
                                 config.eval_npz, config.static.calibration_samples)
                if config.mode == "auto" and plan.evaluation is None:
                    raise EdgeDLError("--mode auto chooses by accuracy, but there is no labelled evaluation data: "
                                      "pass --data RECIPE or --eval FILE.npz (input arrays + labels)")
                fp32 = Candidate("fp32", model_path, size_bytes=model_path.stat().st_size)
                reference = None
                if plan.evaluation is not None:
                    fp32.evaluation, reference = evaluate(fp32_runner, plan.evaluation, None)
            fp32_acc = fp32.evaluation.accuracy if fp32.evaluation else None
            advance(info="fp32 evaluated")
            ctx = PassContext(pre_model, plan.calibration, work, debug, list(config.exclude_nodes))
            candidates: list[Candidate] = []
            layers, fallback_steps = None, []
            for mode in modes:
                ctx.exclude_nodes = list(config.exclude_nodes)
                cand = _convert(mode, pre, config, ctx)
                advance(info=f"{mode} converted")
                _evaluate(cand, plan, reference, config, fp32_acc)
                advance(info=f"{mode} evaluated")
                if mode == "static" and (config.debug_layers or config.fallback_worst):
                    cand, layers = _fallback(fallback_steps, cand, pre, config, ctx, plan, reference, fp32_acc,
                                             advance)
                candidates.append(cand)
            if gates.speed_seconds > 0:
                _speed(fp32, candidates, plan, gates)
                advance(info="timed")
        report = _decide(model_path, config, fp32, candidates, original, notes, plan, layers, fallback_steps,
                         pre_model)
        if report.accepted and report.chosen is not None:
            record = {"mode": report.chosen.mode, "source": str(model_path), "source_size_bytes": fp32.size_bytes,
                      "accuracy": report.to_json()["accuracy"], "config": config.to_json()}
            chosen = report.chosen
            if chosen.mode == "fp32":
                chosen = Candidate("fp32", model_path)
            _write(chosen, original, output, record)
            report.output_path = output
    return report


def _speed(fp32: Candidate, candidates: list[Candidate], plan, gates) -> None:
    batches = sorted({1, gates.speed_batch})
    data = plan.evaluation or plan.calibration
    runners = {"fp32": runner(fp32.path, gates.threads, gates.target_provider)}
    try:
        for c in candidates:
            runners[c.mode] = runner(c.path, gates.threads, gates.target_provider)
        for batch in batches:
            feeds = timing_feeds(runners["fp32"], data, batch)
            medians = compare_speed(runners, feeds, gates.speed_seconds)
            fp32.latency_ms[batch] = medians["fp32"]
            for c in candidates:
                c.latency_ms[batch] = medians[c.mode]
                c.speedup[batch] = medians["fp32"] / medians[c.mode]
    finally:
        for r in runners.values():
            r.close()
    for c in candidates:
        c.faster = c.speedup[gates.speed_batch] >= gates.min_speedup


def _decide(model_path, config, fp32, candidates, original, notes, plan, layers, fallback_steps, pre_model):
    gates = config.gates
    reasons: list[str] = []
    provider = gates.target_provider
    if config.mode == "auto":
        usable = [c for c in candidates if c.accuracy_ok and (c.faster or gates.speed_seconds == 0)]
        if usable:
            chosen = max(usable, key=lambda c: c.speedup.get(gates.speed_batch, 0.0))
        else:
            chosen = Candidate("fp32", model_path, size_bytes=fp32.size_bytes, evaluation=fp32.evaluation,
                               latency_ms=dict(fp32.latency_ms), speedup={b: 1.0 for b in fp32.latency_ms})
            chosen.notes.append(
                f"no candidate passed the accuracy gate and ran >= {gates.min_speedup:g}x faster than fp32 at batch "
                f"{gates.speed_batch} on {provider}: keeping fp32")
        accepted = True
        if chosen.mode == "fp32" and gates.require_speedup:
            accepted = False
            reasons.append(f"--require-speedup: no candidate is faster than fp32 at batch {gates.speed_batch}; "
                           "try another --speed-batch or target")
    else:
        chosen = candidates[0]
        accepted = True
        if chosen.accuracy_ok is False:
            accepted = False
            drop = fp32.evaluation.accuracy - chosen.evaluation.accuracy
            hint = {"static": "try --calibration-method percentile or entropy, --per-channel, more "
                              "--calibration-samples, --debug-layers --fallback-worst K, or --mode dynamic",
                    "dynamic": "try --exclude-op-types/--exclude-nodes for sensitive layers, or --mode static",
                    "fp16": "try --exclude-op-types for ops that overflow in fp16"}[chosen.mode]
            reasons.append(f"accuracy gate: top-1 dropped {drop:.2f} points (> {gates.max_accuracy_drop:g} allowed); "
                           f"{hint}")
        if gates.require_speedup and chosen.faster is not True:
            accepted = False
            got = chosen.speedup.get(gates.speed_batch)
            reasons.append(f"--require-speedup: {chosen.mode} is not faster than fp32 at batch {gates.speed_batch} "
                           f"({'not measured' if got is None else f'{got:.2f}x'}, need >= {gates.min_speedup:g}x)")
    if fp32.evaluation is None:
        notes = notes + ["accuracy gate skipped: no labelled evaluation data (pass --data RECIPE or --eval FILE.npz)"]
    elif not gates.accuracy_gate:
        notes = notes + ["accuracy gate disabled (--no-accuracy-gate): accuracy measured, not enforced"]
    return QuantizeReport(
        input_path=model_path, requested_mode=config.mode, fp32=fp32, chosen=chosen, candidates=candidates,
        accepted=accepted, output_path=None, speed_batch=gates.speed_batch, threads=gates.threads,
        provider=provider, op_types_before=op_histogram(original), reasons=reasons, notes=notes,
        data={"calibration": plan.calibration_source, "evaluation": plan.evaluation_source,
              "calibration_samples": len(plan.calibration) if plan.calibration is not None else 0,
              "evaluation_samples": len(plan.evaluation) if plan.evaluation is not None else 0},
        layers=layers, fallback_steps=fallback_steps, config=config.to_json())
