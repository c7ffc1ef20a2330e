"""``quantize(model, config)``: preprocess -> data -> convert -> accuracy gate -> speed gate -> (auto: choose) ->
atomic write. Nothing is written at the output path unless the result passed its gates, and nothing is written
without an accuracy check unless the gate is turned off. When auto keeps fp32 nothing is written either: the output
path names a quantized model, and the input is the model to use (the report's ``model_path``).

Data: ``edgedl.stages.data`` (the user's sources, else the model's recipe, else synthetic inputs, reported as a
weaker check). Sizes and batch axes: the model's ``Signature`` (options over the model's metadata), so that the
speed gate times real sizes and fixed-batch or stateful models run as they must.
"""

from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgedl._lazy import require
from edgedl.console import progress
from edgedl.errors import EdgeDLError
from edgedl.runtime import metadata as meta_codec
from edgedl.runtime.signature import Signature
from edgedl.stages.data import DataPlan, plan_data
from edgedl.stages.data.plan import model_recipe
from edgedl.stages.files import atomic_output, writable_output
from edgedl.stages.quantize import debug as layer_debug
from edgedl.stages.quantize.config import QuantizeConfig, weight_range_note
from edgedl.stages.quantize.gates import (Evaluation, Metric, checks, compare_speed, eval_batches, evaluate,
                                          load_metric, runner, timing_batches, timing_feeds)
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


# what to try when a converter writes a model that onnxruntime refuses
_LOAD_HINTS = {
    "static": "try --per-tensor, --format qoperator, or --exclude-op-types for the op named",
    "dynamic": "try --exclude-op-types for the op named, or --mode static",
    "fp16": "try --exclude-op-types for the op named",
    "fp32": "check that onnxruntime loads the input model (edgedl inspect)",
}


def _check_loads(path: Path, mode: str) -> None:
    """Never hand on a converted model that onnxruntime cannot load: say why, and what to try."""
    ort = require("onnxruntime")
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
        raise EdgeDLError(f"{mode} conversion wrote a model onnxruntime cannot load ({lines[0][:300]}); "
                          f"{_LOAD_HINTS[mode]}") from exc


def _convert(mode: str, source: Path, config: QuantizeConfig, ctx: PassContext, tag: str = "",
             target: Path | None = None) -> Candidate:
    onnx = require("onnx")
    target = target or ctx.workdir / f"{mode}{tag}.onnx"
    try:
        notes = PASSES[mode](source, target, config, ctx)
    except EdgeDLError:
        raise
    except Exception as exc:  # a converter failing on a model is reported, not a crash of edgedl
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgeDLError(f"{mode} conversion failed: {type(exc).__name__}: {first}; try --exclude-op-types "
                          "for the op named, or another --mode") from exc
    _check_loads(target, mode)
    cand = Candidate(mode, target, size_bytes=target.stat().st_size, notes=notes,
                     excluded_nodes=list(ctx.exclude_nodes))
    if mode != "fp32":
        qdq = set(require("onnxruntime.quantization.registry").QDQRegistry) if (
            mode == "static" and config.static.format == "qdq") else None
        cand.ops = analyze(ctx.model, onnx.load(str(target)), mode, qdq)
    return cand


@dataclass
class _Judge:
    """Everything the accuracy gate compares a candidate with: the data, the fp32 model's outputs on it."""

    plan: DataPlan
    signature: Signature
    config: QuantizeConfig
    metric: Metric | None
    fp32: Evaluation | None = None
    reference: list[dict] | None = None
    class_scores: bool = False  # first output is [batch, classes]: the default gate is top-1 agreement

    @property
    def agreement(self) -> bool:
        """Top-1/top-k agreement over the first output's last axis: for classifiers, or when a floor asks."""
        gates = self.config.gates
        return self.class_scores or gates.min_agreement is not None or gates.min_top_k_agreement is not None

    def measure_fp32(self, model) -> None:
        if self.plan.evaluation is None:
            return
        out = model.outputs[0]
        self.class_scores = len(out.shape) == 2 and (not isinstance(out.shape[1], int) or out.shape[1] >= 2)
        self.fp32, self.reference = evaluate(model, self.plan.evaluation, self.signature, None, self.metric,
                                             self.config.gates.top_k)

    def same_as_fp32(self, path: Path) -> str | None:
        """Whether a rewritten fp32 model (preprocessing) still computes what the input model computes, on the
        first evaluation batch; None when it does, else what differs."""
        if self.reference is None:
            return None
        batch = next(eval_batches(self.plan.evaluation, self.signature))
        with runner(path, self.config.gates.threads, self.config.gates.target_provider) as model:
            outs = model.run(dict(batch.inputs))
        from edgedl.stages.compare import compare_arrays

        for name, want in self.reference[0].items():
            c = compare_arrays(name, outs[name], want, atol=1e-5, rtol=0)
            if c.max_abs_diff > 1e-3 * c.reference_scale + 1e-5:  # within 0.1 % of the output's own scale
                return f"output '{name}' differs from the input model's by {c.max_abs_diff:.3g} (of {c.reference_scale:.3g})"
        return None

    def judge(self, cand: Candidate) -> None:
        if self.fp32 is None:
            return
        gates = self.config.gates
        with runner(cand.path, gates.threads, gates.target_provider) as model:
            cand.evaluation, _ = evaluate(model, self.plan.evaluation, self.signature, self.reference, self.metric,
                                          gates.top_k, self.agreement)
        cand.checks = checks(cand.evaluation, self.fp32, gates, self.class_scores, self.plan.weak)
        if gates.accuracy_gate:
            cand.accuracy_ok = all(c.ok for c in cand.checks)


def write_model(source: Path, original, output: Path, records: dict) -> None:
    """Write the model at ``source`` to ``output`` with the input's metadata (recipe, labels, ...) plus
    ``records`` (e.g. ``{"quantization": ...}``); replace atomically."""
    onnx = require("onnx")
    model = onnx.load(str(source))
    props = {p.key: p.value for p in original.metadata_props}
    props.update(meta_codec.encode(records))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_output(output) as tmp:
        onnx.save(model, str(tmp))


def _bisect(cand: Candidate, bench: "Workbench", advance) -> Candidate:
    """--bisect: the candidate failed its accuracy gate; find nodes to keep in float until it passes (see
    ``quantize.debug``). Returns the passing candidate (or the failing one) with ``bisection`` set."""
    config = bench.config
    gates = config.gates
    qoperator = cand.mode == "static" and config.static.format == "qoperator"
    plan = bench.plan_for(config.static)
    # ranked on calibration data: choosing what to keep float on the test split would tune on the gate's data
    ranking_data = plan.calibration or plan.evaluation
    groups, ranking = layer_debug.rank(bench.preprocessed, cand.path, ranking_data, cand.mode, qoperator)
    advance(info=f"{cand.mode}: ranked {len(groups)} group(s)")
    result = layer_debug.Bisection(cand.mode, groups, ranking=ranking)
    timed = gates.speed_seconds > 0
    batch = feeds = None
    if timed:
        batches = timing_batches(bench.signature, gates.speed_batch)
        batch = gates.speed_batch if gates.speed_batch in batches else max(batches)
        feeds = timing_feeds(bench.signature, plan.evaluation or plan.calibration, batch)
        result.speed_batch = batch
    built: dict[tuple[str, ...], Candidate] = {}

    def record(nxt: Candidate, number: int, nodes: tuple[str, ...], why: str) -> layer_debug.Step:
        """The figures of one judged model: its gate, accuracy and (when timed) speed against fp32."""
        ev = nxt.evaluation
        step = layer_debug.Step(number, why, nodes, bool(nxt.accuracy_ok), [c.to_json() for c in nxt.checks],
                                ev.accuracy if ev else None, ev.agreement if ev else None, ev.metric if ev else None,
                                min((o["sqnr_db"] for o in ev.outputs.values()), default=None) if ev else None,
                                nxt.size_bytes)
        if timed:
            with runner(bench.model_path, gates.threads, gates.target_provider) as fp32_r, \
                    runner(nxt.path, gates.threads, gates.target_provider) as step_r:
                medians = compare_speed({"fp32": fp32_r, "step": step_r}, feeds, gates.speed_seconds)
            step.latency_ms, step.fp32_latency_ms = medians["step"], medians["fp32"]
            step.speedup = medians["fp32"] / medians["step"]
        return step

    def measure(nodes: tuple[str, ...], why: str) -> layer_debug.Step:
        excluded = list(dict.fromkeys([*config.exclude_nodes, *nodes]))
        nxt = bench.convert(cand.mode, config.static, excluded, tag=f"-bisect{len(built)}")
        bench.judge(nxt)
        step = record(nxt, len(built) + 1, nodes, why)
        built[nodes] = nxt
        advance(info=f"bisect step {step.step}: {len(nodes)} node(s) float, {'pass' if step.passed else 'fail'}")
        return step

    start = record(cand, 0, (), "the candidate: nothing more kept in float")
    fix, steps = layer_debug.search(groups, measure, config.bisect_steps)
    result.steps = [start, *steps]
    if fix is None:
        result.notes.append("no set of nodes kept in float passed the accuracy gate"
                            + (f" within {config.bisect_steps} steps" if len(steps) >= config.bisect_steps
                               else " (not even all ranked nodes; the error may come from ops this mode does not "
                                    "rank, or the gate is stricter than float rounding allows)"))
        cand.bisection = result
        return cand
    result.fix = fix
    best = built[fix]
    best.notes.append(f"--bisect: kept {len(fix)} node(s) in float: {', '.join(fix)}")
    target = config.bisect_out or Path(config.output).with_suffix(".exclude-nodes.txt")
    verdict = "; ".join(c.describe() for c in best.checks)
    result.file = layer_debug.write_exclude_file(target, tuple([*config.exclude_nodes, *fix]), bench.model_path,
                                                 cand.mode, verdict)
    best.bisection = result
    return best


def _plan(config: QuantizeConfig, signature: Signature, metadata: dict, modes: list[str]) -> DataPlan:
    """The data: calibration when a static candidate is built, evaluation unless the gate is off and no data was
    given; synthetic inputs only when nothing better exists and the gate is on."""
    gates = config.gates
    has_real = config.data.given or model_recipe(metadata) is not None
    if gates.accuracy_gate and not has_real:
        problems = signature.missing()
        if problems:
            raise EdgeDLError("nothing to check accuracy on: no data given, and synthetic inputs need sizes ("
                              f"{problems[0]}); pass --data (a folder of images, FILE.npz, file.py:function), or "
                              "--input-shape/--shape for synthetic inputs, or --no-accuracy-gate to write the model "
                              "unchecked")
    # --bisect ranks nodes on calibration data (never on the gate's), whatever the mode
    return plan_data(config.data, signature, metadata, calibration="static" in modes or config.bisect,
                     synthetic_fallback=gates.accuracy_gate or "static" in modes)


class Workbench:
    """One fp32 model made ready for quantization, for any number of candidates: its signature, the data
    (calibration and evaluation), the fp32 model's evaluation (the accuracy gate's reference) and the preprocessed
    model. ``convert`` builds one candidate (any mode, static settings and nodes kept in float), ``judge`` runs the
    accuracy gate on it. ``quantize`` builds its candidates here, and ``edgedl optimize`` every configuration it
    searches, so both are judged by the one gate.

    ``load`` reads the data and evaluates fp32; the preprocessed model is made on first use.
    """

    def __init__(self, model_path: Path, original, config: QuantizeConfig, workdir: Path, modes: list[str],
                 debug: bool = False):
        self.model_path, self.original, self.config, self.workdir = Path(model_path), original, config, Path(workdir)
        self.modes, self.debug = modes, debug
        self.metric = load_metric(config.gates.metric) if config.gates.metric else None
        self.signature: Signature | None = None
        self.plan: DataPlan | None = None
        self._judge: _Judge | None = None
        self._preprocessed: Path | None = None
        self.preprocess_notes: list[str] = []
        self._contexts: dict[int | None, PassContext] = {}

    def load(self) -> None:
        gates = self.config.gates
        with runner(self.model_path, gates.threads, gates.target_provider) as fp32_runner:
            self.signature = Signature.of_runner(fp32_runner, self.config.shape_options)
            self.plan = _plan(self.config, self.signature, fp32_runner.metadata, self.modes)
            self._judge = _Judge(self.plan, self.signature, self.config, self.metric)
            self._judge.measure_fp32(fp32_runner)

    @property
    def fp32(self) -> Evaluation | None:
        """The fp32 model's evaluation (None without evaluation data)."""
        return self._judge.fp32

    @property
    def class_scores(self) -> bool:
        """The first output is [batch, classes]: the default gate is top-1 agreement."""
        return self._judge.class_scores

    @property
    def preprocessed(self) -> Path:
        if self._preprocessed is None:
            onnx = require("onnx")
            pre = self.workdir / "preprocessed.onnx"
            self.preprocess_notes = preprocess(self.model_path, pre, self.debug, verify=self._judge.same_as_fp32)
            self._pre_model = onnx.load(str(pre))
            _check_nodes(self.config.exclude_nodes, self._pre_model)
            self._preprocessed = pre
        return self._preprocessed

    def node_names(self) -> list[str]:
        """Names of the preprocessed graph's nodes (what --exclude-nodes names)."""
        self.preprocessed  # noqa: B018 - made on first use
        return [n.name for n in self._pre_model.graph.node if n.name]

    def _samples(self, static) -> int | None:
        """How many calibration samples ``static`` uses: None for all of them."""
        count, calibration = static.calibration_samples, self.plan.calibration
        return None if calibration is None or count is None or count >= len(calibration) else count

    def plan_for(self, static) -> DataPlan:
        """The data plan with the calibration samples ``static`` uses (what a report shows)."""
        count = self._samples(static)
        if count is None:
            return self.plan
        return DataPlan(self.plan.calibration.head(count), self.plan.evaluation, self.plan.notes)

    def context(self, static) -> PassContext:
        """The pass context for ``static``'s calibration sample count (its own scratch directory and ranges)."""
        count = self._samples(static)
        if count not in self._contexts:
            self.preprocessed  # noqa: B018 - made on first use
            workdir = self.workdir / f"calibration-{count or 'all'}"
            workdir.mkdir(exist_ok=True)
            self._contexts[count] = PassContext(self._pre_model, self.plan_for(static).calibration, workdir, self.debug)
        return self._contexts[count]

    def convert(self, mode: str, static=None, exclude_nodes=(), tag: str = "", target: Path | None = None) -> Candidate:
        """Build one candidate from the preprocessed model: ``mode`` with ``static`` settings (default: the
        config's), keeping ``exclude_nodes`` in float; written at ``target`` (default: the scratch directory)."""
        from dataclasses import replace

        static = static or self.config.static
        config = self.config
        if static is not config.static or tuple(exclude_nodes) != tuple(config.exclude_nodes):
            config = replace(config, static=static, exclude_nodes=tuple(exclude_nodes))
        ctx = self.context(static)  # preprocesses on first use
        _check_nodes(exclude_nodes, self._pre_model)
        ctx.exclude_nodes = list(exclude_nodes)
        return _convert(mode, self.preprocessed, config, ctx, tag, target)

    def judge(self, cand: Candidate) -> None:
        """The accuracy gate on ``cand`` (sets its evaluation, checks and verdict)."""
        self._judge.judge(cand)


def quantize(model_path: Path | str, config: QuantizeConfig, debug: bool = False) -> QuantizeReport:
    model_path = Path(model_path)
    output = Path(config.output)
    original = check_input(model_path, output)
    if output.is_dir():
        raise EdgeDLError(f"output {output} is a directory; pass -o path/to/model.int8.onnx")
    writable_output(output, "output")  # before calibration and the gates
    gates = config.gates
    modes = _candidate_modes(config)
    with tempfile.TemporaryDirectory(prefix="edgedl-quantize-") as tmp:
        bench = Workbench(model_path, original, config, Path(tmp), modes, debug)
        steps = 3 + 2 * len(modes) + (1 if gates.speed_seconds > 0 else 0)
        with progress(f"quantize {model_path.name}", steps, enabled=config.progress) as advance:
            bench.load()
            advance(info="data loaded")
            plan, signature = bench.plan_for(config.static), bench.signature
            fp32 = Candidate("fp32", model_path, size_bytes=model_path.stat().st_size, evaluation=bench.fp32)
            advance(info="fp32 evaluated")
            bench.preprocessed  # noqa: B018 - preprocess now, for the progress bar
            advance(info="preprocessed")
            candidates: list[Candidate] = []
            for mode in modes:
                cand = bench.convert(mode, config.static, config.exclude_nodes)
                advance(info=f"{mode} converted")
                bench.judge(cand)
                advance(info=f"{mode} evaluated")
                if config.bisect and mode != "fp16" and cand.accuracy_ok is False:
                    cand = _bisect(cand, bench, advance)
                candidates.append(cand)
            speed_batch, timed_shapes = gates.speed_batch, {}
            if gates.speed_seconds > 0:
                speed_batch, timed_shapes = _speed(fp32, candidates, plan, signature, gates)
                advance(info="timed")
        # the weight range decides whether this CPU's int8 kernels saturate: say which one was used and why
        range_note = ([weight_range_note(config.static, config.preset, target_provider=gates.target_provider)]
                      if "static" in modes else [])
        report = _decide(model_path, config, fp32, candidates, original, [*bench.preprocess_notes, *range_note],
                         plan, speed_batch)
        report.timed_shapes = timed_shapes
        if report.accepted and report.chosen is not None and report.chosen.mode != "fp32":
            record = {"mode": report.chosen.mode, "source": str(model_path), "source_size_bytes": fp32.size_bytes,
                      "accuracy": report.to_json()["accuracy"], "config": config.to_json()}
            write_model(report.chosen.path, original, output, {"quantization": record})
            report.output_path = output
    return report


def _speed(fp32: Candidate, candidates: list[Candidate], plan: DataPlan, signature: Signature,
           gates) -> tuple[int, dict]:
    """Time every model at the data's real sizes; returns the batch size that decides and the shapes timed."""
    batches = timing_batches(signature, gates.speed_batch)
    decisive = gates.speed_batch if gates.speed_batch in batches else max(batches)
    data = plan.evaluation or plan.calibration
    feeds = {batch: timing_feeds(signature, data, batch) for batch in batches}  # fails before anything is timed
    runners = {"fp32": runner(fp32.path, gates.threads, gates.target_provider)}
    try:
        for c in candidates:
            runners[c.mode] = runner(c.path, gates.threads, gates.target_provider)
        for batch in batches:
            medians = compare_speed(runners, feeds[batch], gates.speed_seconds)
            fp32.latency_ms[batch] = medians["fp32"]
            for c in candidates:
                c.latency_ms[batch] = medians[c.mode]
                c.speedup[batch] = medians["fp32"] / medians[c.mode]
    finally:
        for r in runners.values():
            r.close()
    for c in candidates:
        c.faster = c.speedup[decisive] >= gates.min_speedup
    return decisive, {b: {k: list(v.shape) for k, v in f.items()} for b, f in feeds.items()}


_CONTROL_FLOW = {"If", "Loop", "Scan"}
_REJECT_HINTS = {
    "static": "try --bisect (finds the nodes to keep in float), --calibration-method percentile or entropy, "
              "--per-channel, more --calibration-samples, or --mode dynamic",
    "dynamic": "try --bisect (finds the nodes to keep in float), --exclude-op-types/--exclude-nodes, or --mode "
               "static",
    "fp16": "try --exclude-op-types for ops that overflow in fp16",
}


def _decide(model_path, config, fp32, candidates, original, notes, plan, speed_batch):
    gates = config.gates
    reasons: list[str] = []
    provider = gates.target_provider
    if config.mode == "auto":
        usable = [c for c in candidates if (c.accuracy_ok or not gates.accuracy_gate)
                  and (c.faster or gates.speed_seconds == 0)]
        if usable:
            chosen = max(usable, key=lambda c: c.speedup.get(speed_batch, 0.0))
        else:
            chosen = Candidate("fp32", model_path, size_bytes=fp32.size_bytes, evaluation=fp32.evaluation,
                               latency_ms=dict(fp32.latency_ms), speedup={b: 1.0 for b in fp32.latency_ms})
            chosen.notes.append(
                f"no candidate passed the accuracy gate and ran >= {gates.min_speedup:g}x faster than fp32 at batch "
                f"{speed_batch} on {provider}: keeping fp32 - use {model_path} as it is (nothing written at "
                f"{config.output})")
        accepted = True
        if chosen.mode == "fp32" and gates.require_speedup:
            accepted = False
            reasons.append(f"--require-speedup: no candidate is faster than fp32 at batch {speed_batch}; "
                           "try another --speed-batch or target")
    else:
        chosen = candidates[0]
        accepted = True
        if chosen.mode != "fp16" and not chosen.ops.get("ops_quantized"):
            accepted = False
            inside = sorted(set(chosen.ops.get("ops_left_float", {})) & _CONTROL_FLOW)
            why = (f"its compute sits inside {'/'.join(inside)} subgraphs, which onnxruntime's quantizer leaves in "
                   "float" if inside else f"it has no op {chosen.mode} mode quantizes")
            reasons.append(f"{chosen.mode} quantized nothing: {why}; the fp32 model is as good as it gets here")
        if chosen.accuracy_ok is False:
            accepted = False
            failed = "; ".join(c.describe() for c in chosen.checks if not c.ok)
            reasons.append(f"accuracy gate: {failed}; {_REJECT_HINTS[chosen.mode]}")
        if gates.require_speedup and chosen.faster is not True:
            accepted = False
            got = chosen.speedup.get(speed_batch)
            reasons.append(f"--require-speedup: {chosen.mode} is not faster than fp32 at batch {speed_batch} "
                           f"({'not measured' if got is None else f'{got:.2f}x'}, need >= {gates.min_speedup:g}x)")
    notes = list(notes) + list(plan.notes)
    if fp32.evaluation is None:
        notes.append("accuracy not checked (--no-accuracy-gate and no data)")
    elif not gates.accuracy_gate:
        notes.append("accuracy gate disabled (--no-accuracy-gate): accuracy measured, not enforced")
    return QuantizeReport(
        input_path=model_path, requested_mode=config.mode, fp32=fp32, chosen=chosen, candidates=candidates,
        accepted=accepted, output_path=None, speed_batch=speed_batch, threads=gates.threads,
        provider=provider, op_types_before=op_histogram(original), reasons=reasons, notes=notes,
        data=plan.to_json(), config=config.to_json())
