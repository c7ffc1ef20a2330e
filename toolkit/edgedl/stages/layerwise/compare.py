"""``edgedl debug compare REFERENCE CANDIDATE``: where on real data two versions of a model part ways.

Flow: build both sides (``sides``), read the data (``edgedl.stages.data``: the user's source, else the model's
recipe, else synthetic inputs, said so), decide which tensors are the same (``align``), run both sides one sample
at a time (so every intermediate tensor's error is also a per-sample error), and accumulate per tensor the error of
the candidate against the reference (``ErrorSums``: max/mean abs, relative L2, SQNR, cosine). The report lists
the tensors in topological order of the ONNX graph (the float one when one side is quantized): the **first** whose
SQNR falls below the tolerance (and whose max abs difference is above ``atol``), the worst, the outputs and the
samples that diverge most, with each tensor's node, op type, PyTorch module and source line where known, plus
``added``: the relative error that tensor adds to what its inputs carried in (what a layer itself costs).

Tolerance by the lower precision of the two sides: fp32 60 dB (relative error 1e-3), fp16 30 dB, int8 20 dB
(the accuracy gate's default floor); ``min_sqnr`` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgedl.console import progress
from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import ShapeOptions, Signature
from edgedl.stages.compare import ErrorSums
from edgedl.stages.compare import json_number as _num
from edgedl.stages.data import DataOptions, Dataset, plan_data
from edgedl.stages.layerwise.align import Pair, align_onnx, align_torch, key_records, leaving
from edgedl.stages.layerwise.graph import OnnxGraph
from edgedl.stages.layerwise.sides import RECORDS, OnnxSide, SideSpec, build_side

DEFAULT_SAMPLES = 32
TOLERANCE_DB = {"fp32": 60.0, "fp16": 30.0, "int8": 20.0}
_RANK = {"fp32": 0, "fp16": 1, "int8": 2}
WORST_SAMPLES = 5


@dataclass(frozen=True)
class CompareConfig:
    reference: SideSpec
    candidate: SideSpec
    data: DataOptions = field(default_factory=DataOptions)
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)
    samples: int = DEFAULT_SAMPLES
    min_sqnr: float | None = None  # dB; None: by precision (TOLERANCE_DB)
    atol: float = 1e-6
    top: int = 10
    threads: int = 1
    cache_dir: Path | None = None  # wheels for a device (default: edgedl's cache)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise EdgeDLError(f"samples must be >= 1, got {self.samples}", option=("samples", "N"))
        if self.top < 1:
            raise EdgeDLError(f"top must be >= 1, got {self.top}", option=("top", "N"))
        if self.atol < 0:
            raise EdgeDLError(f"atol must be >= 0, got {self.atol}", option=("atol", "A"))
        if self.threads < 0:
            raise EdgeDLError(f"threads must be >= 0 (0: onnxruntime's default), got {self.threads}")


@dataclass(frozen=True)
class Tolerance:
    min_sqnr_db: float
    atol: float
    precision: str  # the lower precision of the two sides, which chose the default
    given: bool

    def exceeded(self, sums: ErrorSums) -> bool:
        return sums.sqnr_db < self.min_sqnr_db and sums.max_abs > self.atol

    def to_json(self) -> dict[str, Any]:
        return {"min_sqnr_db": self.min_sqnr_db, "atol": self.atol, "precision": self.precision,
                "default": not self.given}


@dataclass(frozen=True)
class LayerError:
    """One compared tensor: where it is and how far the candidate is from the reference there."""

    tensor: str  # the float tensor name
    node: str
    op_type: str
    module: str | None
    source: str | None  # file:line of the PyTorch code that made it
    other_node: str | None  # the node of the other (quantized) model that computes it, e.g. QLinearConv
    other_op_type: str | None
    reference_tensor: str
    candidate_tensor: str
    shape: tuple[int, ...]
    index: int  # topological position
    max_abs: float
    mean_abs: float
    relative: float
    sqnr_db: float
    cosine: float
    added: float  # relative error added here over the worst input's
    nodes: tuple[str, ...]  # the nodes between the nearest compared tensors and this one (its producer last)
    divergent: bool
    worst_samples: tuple[tuple[int, float], ...]  # (sample index, relative error)
    via: str

    def where(self) -> str:
        parts = [p for p in (self.module or None, self.source) if p]
        return " at ".join(parts) if parts else "no PyTorch source known"

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "node": self.node, "op_type": self.op_type, "module": self.module,
                "source": self.source, "candidate_node": self.other_node, "candidate_op_type": self.other_op_type,
                "reference_tensor": self.reference_tensor, "candidate_tensor": self.candidate_tensor,
                "shape": list(self.shape), "index": self.index, "max_abs": _num(self.max_abs),
                "mean_abs": _num(self.mean_abs), "relative": _num(self.relative), "sqnr_db": _num(self.sqnr_db),
                "cosine": _num(self.cosine), "added": _num(self.added), "nodes": list(self.nodes),
                "divergent": self.divergent,
                "worst_samples": [{"sample": i, "relative": _num(r)} for i, r in self.worst_samples],
                "matched_by": self.via}


@dataclass(frozen=True)
class WeightError:
    weight: str
    node: str
    sqnr_db: float
    max_abs: float

    def to_json(self) -> dict[str, Any]:
        return {"weight": self.weight, "node": self.node, "sqnr_db": _num(self.sqnr_db), "max_abs": _num(self.max_abs)}


@dataclass(frozen=True)
class SampleError:
    sample: int
    relative: float  # the worst output's relative error on this sample
    label: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"sample": self.sample, "relative": _num(self.relative), "label": self.label}


@dataclass(frozen=True)
class SideInfo:
    label: str
    kind: str
    precision: str
    environment: dict

    def to_json(self) -> dict[str, Any]:
        return {"side": self.label, "kind": self.kind, "precision": self.precision, "environment": self.environment}


@dataclass(frozen=True)
class CompareReport:
    reference: SideInfo
    candidate: SideInfo
    data: dict
    samples: int
    batch: int
    tolerance: Tolerance
    layers: tuple[LayerError, ...]  # topological order
    outputs: tuple[LayerError, ...]
    samples_worst: tuple[SampleError, ...]
    weights: tuple[WeightError, ...] = ()
    unmapped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    top: int = 10

    @property
    def first_divergence(self) -> LayerError | None:
        return next((layer for layer in self.layers if layer.divergent), None)

    @property
    def divergent(self) -> int:
        return sum(layer.divergent for layer in self.layers)

    @property
    def worst(self) -> list[LayerError]:
        return sorted(self.layers, key=lambda x: (x.sqnr_db, x.index))[: self.top]

    def to_json(self) -> dict[str, Any]:
        first = self.first_divergence
        return {"reference": self.reference.to_json(), "candidate": self.candidate.to_json(), "data": self.data,
                "samples": self.samples, "batch": self.batch, "tolerance": self.tolerance.to_json(),
                "compared": len(self.layers), "divergent": self.divergent,
                "first_divergence": first.to_json() if first else None,
                "worst": [x.to_json() for x in self.worst], "outputs": [x.to_json() for x in self.outputs],
                "samples_worst": [s.to_json() for s in self.samples_worst],
                "weights": [w.to_json() for w in self.weights], "unmapped": list(self.unmapped),
                "notes": list(self.notes), "layers": [x.to_json() for x in self.layers]}


# --- running ---------------------------------------------------------------------------------------------
class _Stats:
    def __init__(self) -> None:
        self.total = ErrorSums()
        self.per_sample: list[float] = []
        self.shape: tuple[int, ...] = ()
        self.skipped: str | None = None


def _values(pair: Pair, ref_values: dict, cand_values: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    def one(key, point, values):
        array = values.get(key)
        if array is None:
            return None
        if point is not None:
            return point.value(array)
        return array.astype(np.float64, copy=False) if array.dtype.kind == "f" else None

    return one(pair.ref, pair.ref_point, ref_values), one(pair.cand, pair.cand_point, cand_values)


def _accumulate(stats: dict[Pair, _Stats], pairs: list[Pair], ref_values: dict, cand_values: dict) -> None:
    for pair in pairs:
        s = stats.setdefault(pair, _Stats())
        if s.skipped:
            continue
        ref, got = _values(pair, ref_values, cand_values)
        if ref is None or got is None:
            s.skipped = "not a real-valued tensor on both sides" if ref is None or got is None else None
            continue
        if ref.shape != got.shape:
            s.skipped = f"shapes differ ({list(ref.shape)} vs {list(got.shape)})"
            continue
        one = ErrorSums()
        one.add(ref, got)
        s.total.merge(one)
        s.per_sample.append(one.relative)
        s.shape = ref.shape


def _side_info(side) -> SideInfo:
    precision = side.graph.precision if isinstance(side, OnnxSide) else "fp32"
    return SideInfo(side.label, side.kind, precision, dict(side.environment))


def _dataset(config: CompareConfig, onnx: OnnxSide) -> tuple[Dataset, Signature, list[str]]:
    from edgedl.runtime import Runner

    with Runner(str(onnx.path)) as runner:
        signature = Signature.of_runner(runner, config.shape_options)
        metadata = runner.metadata
    plan = plan_data(config.data, signature, metadata, calibration=False, evaluation=True)
    return plan.evaluation.head(config.samples), signature, list(plan.notes)


def compare(config: CompareConfig, show_progress: bool = False, dataset: Dataset | None = None) -> CompareReport:
    """Run both sides on the data (``dataset``, else what ``config.data`` names) and report where they differ."""
    if config.reference.kind == "onnx":
        ref = build_side(config.reference, config.candidate, None, config.threads, config.cache_dir)
        cand = build_side(config.candidate, config.reference, ref, config.threads, config.cache_dir)
    else:
        cand = build_side(config.candidate, config.reference, None, config.threads, config.cache_dir)
        ref = build_side(config.reference, config.candidate, cand, config.threads, config.cache_dir)
    onnx = ref if isinstance(ref, OnnxSide) else cand
    notes: list[str] = []
    if dataset is None:
        dataset, signature, notes = _dataset(config, onnx)
    else:
        signature = dataset.signature
    fixed = signature.fixed_batch
    batch = fixed or 1  # one sample per run: every tensor's error is a per-sample error too
    batches = list(dataset.batches(batch, exact=fixed is not None))
    if fixed and fixed > 1:
        notes.append(f"the model is fixed at batch {fixed}: per-sample figures are per batch of {fixed}")

    torch_side = None if isinstance(ref, OnnxSide) and isinstance(cand, OnnxSide) else (
        cand if isinstance(ref, OnnxSide) else ref)
    if torch_side is None:
        alignment = align_onnx(ref.graph, cand.graph)
        naming = ref.graph if ref.graph.precision == "fp32" or cand.graph.precision != "fp32" else cand.graph
        wanted_ref, wanted_cand = [p.ref for p in alignment.pairs], [p.cand for p in alignment.pairs]
    else:
        naming = onnx.graph
        wanted = [p.tensor for p in leaving(onnx.graph)]
        torch_side.modules = {p.source.module for p in leaving(onnx.graph)}
        wanted_ref, wanted_cand = (wanted, []) if onnx is ref else ([], wanted)
        alignment = None

    stats: dict[Pair, _Stats] = {}
    labels: list[Any] = []
    with progress(f"compare ({len(batches)} sample{'s' if len(batches) != 1 else ''})", len(batches),
                  enabled=show_progress) as advance:
        for i, (batch_in, ref_values, cand_values) in enumerate(zip(batches, ref.run(batches, wanted_ref),
                                                                   cand.run(batches, wanted_cand))):
            labels.append(None if batch_in.labels is None else (
                batch_in.labels.tolist() if batch_in.samples > 1 else batch_in.labels.reshape(-1)[0].item()))
            if torch_side is not None:
                tv, ov = (cand_values, ref_values) if torch_side is cand else (ref_values, cand_values)
                records = tv.pop(RECORDS)
                if alignment is None:
                    alignment = align_torch(onnx.graph, records, ov, torch_side.output_names, onnx is ref)
                    if torch_side.scripted:
                        alignment.unmapped.append("the PyTorch side is TorchScript: only its outputs are captured")
                tv.update(key_records(records, alignment.coarse_modules))
            _accumulate(stats, alignment.pairs, ref_values, cand_values)
            advance(info=f"sample {i + 1}")
    if not batches:
        raise EdgeDLError("no data to compare on")
    samples = sum(b.samples for b in batches)
    return _report(config, ref, cand, dataset, samples, batch, alignment, naming, stats, labels, notes)


def _tolerance(config: CompareConfig, ref, cand) -> Tolerance:
    lower = max((_side_info(s).precision for s in (ref, cand)), key=_RANK.__getitem__)
    if config.min_sqnr is not None:
        return Tolerance(config.min_sqnr, config.atol, lower, True)
    return Tolerance(TOLERANCE_DB[lower], config.atol, lower, False)


def _spans(naming: OnnxGraph, relative: dict[str, float]) -> dict[str, tuple[float, tuple[str, ...]]]:
    """Per compared tensor (naming graph's name): the relative error it adds over the largest of the nearest
    compared tensors it is computed from (graph inputs count as exact), and the nodes in between."""
    keep = set(relative)
    out = {}
    for tensor, rel in relative.items():
        sources, nodes = naming.span(tensor, keep)
        inherited = [relative.get(a, 0.0) for a in sources]
        out[tensor] = (rel - max(inherited, default=0.0), tuple(nodes))
    return out


def _report(config, ref, cand, dataset, samples, batch, alignment, naming, stats, labels, notes) -> CompareReport:
    tolerance = _tolerance(config, ref, cand)
    outputs_of = set(naming.outputs)
    skipped: list[str] = []
    kept = [(p, s) for p, s in stats.items() if s.per_sample and not s.skipped]
    for p, s in stats.items():
        if s.skipped:
            skipped.append(f"{p.point.tensor}: {s.skipped}")
    relative = {p.point.tensor: s.total.relative for p, s in kept}
    spans = _spans(naming, relative)
    rows = []
    for p, s in kept:
        worst = sorted(enumerate(s.per_sample), key=lambda t: -t[1])[:WORST_SAMPLES]
        point = p.point
        named = p.other if point.op_type in ("QuantizeLinear", "DequantizeLinear") and p.other else point
        source = point.source or (p.other.source if p.other is not None else None)
        rows.append(LayerError(
            point.base, named.node, named.op_type, source.module if source else None,
            source.location if source else None, p.other.node if p.other is not None else None,
            p.other.op_type if p.other is not None else None, p.ref, p.cand, tuple(s.shape), point.index,
            s.total.max_abs, s.total.abs_sum / max(s.total.count, 1), s.total.relative, s.total.sqnr_db,
            s.total.cosine, spans[point.tensor][0], spans[point.tensor][1], tolerance.exceeded(s.total),
            tuple((i * batch, r) for i, r in worst), p.via))
    rows.sort(key=lambda r: (r.index, r.tensor))
    output_rows = tuple(r for r in rows if r.tensor in outputs_of or r.via == "output")
    per_sample = np.zeros(len(labels))
    for p, s in kept:
        if p.point.base in outputs_of and len(s.per_sample) == len(labels):
            per_sample = np.maximum(per_sample, np.asarray(s.per_sample))
    order = np.argsort(-per_sample, kind="stable")[:WORST_SAMPLES]
    samples_worst = tuple(SampleError(int(i) * batch, float(per_sample[i]), labels[i]) for i in order
                          if per_sample[i] > 0)
    unmapped = list(alignment.unmapped) + ([f"{len(skipped)} tensor(s) not compared: {'; '.join(skipped[:4])}"]
                                           if skipped else [])
    if not rows:
        unmapped.append("no tensor could be compared")
    for side in (ref, cand):
        effect = getattr(side, "capture_effect", 0.0)
        if effect > 1e-4:
            notes.append(f"{side.label}: reading its intermediate tensors changed its outputs by up to {effect:.2g} "
                         "(relative): onnxruntime cannot fuse nodes whose outputs are read (a quantized model then "
                         "runs its Q/DQ pairs in float); the outputs reported come from the model as it is")
    weights = _weights(ref, cand) if isinstance(ref, OnnxSide) and isinstance(cand, OnnxSide) else ()
    return CompareReport(_side_info(ref), _side_info(cand), dataset.to_json(), samples, batch, tolerance, tuple(rows),
                         output_rows, samples_worst, weights, tuple(unmapped), tuple(notes), config.top)


def _weights(ref: OnnxSide, cand: OnnxSide) -> tuple[WeightError, ...]:
    """Quantized weights against the float model's: the scale chosen for each weight, judged alone."""
    float_side, quant = (ref, cand) if cand.graph.precision == "int8" else (cand, ref)
    if quant.graph.precision != "int8" or float_side.graph.precision == "int8":
        return ()
    out = []
    for name, node, values in quant.graph.weight_pairs():
        original = float_side.graph.initializer(name)
        if original is None or original.shape != values.shape:
            continue
        sums = ErrorSums()
        sums.add(original, values)
        float_node = node[: -len("_quant")] if node.endswith("_quant") else node
        out.append(WeightError(name, float_node, sums.sqnr_db, sums.max_abs))
    return tuple(sorted(out, key=lambda w: w.sqnr_db))
