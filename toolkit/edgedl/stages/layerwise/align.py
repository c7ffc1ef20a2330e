"""Which tensor of one side is which tensor of the other.

ONNX vs ONNX (fp32 vs int8/fp16, one model on two runtimes): by the float tensor name each stands for
(``graph.base_name``), plus one rule for what quantization folds away: a float tensor that only feeds a Relu/Clip
the other model lacks is compared at that activation's output (``QLinearConv`` clips to its output range).

PyTorch vs ONNX: by where a tensor was made. Each ONNX tensor's (module path, source line) comes from the
``edgedl.provenance`` export wrote; each captured PyTorch tensor's from the capture (``capture.TorchCapture``).
Within one (module, line) group, the ONNX tensors that leave the group (read by another group, or a graph
output) are matched from the last backwards with the PyTorch tensors of that group of the same shape: the last
tensor a group makes is the one both sides agree on, the steps inside it are the exporter's own (``nn.Linear`` is
one function in PyTorch, MatMul + Add in ONNX). A module whose lines differ between the two sides (its file
changed since the export) is grouped by module only. Graph outputs pair with the module's outputs by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgedl.stages.layerwise.capture import Record, short_location
from edgedl.stages.layerwise.graph import OnnxGraph, Point

_TRANSPARENT = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"}


@dataclass(frozen=True, eq=False)  # compared by identity: a point may hold numpy arrays
class Pair:
    """One tensor compared: ``ref``/``cand`` are keys into each side's values for a batch; ``point`` names it
    (the float model's node where there is one), ``other`` is the other ONNX model's node for it, if any."""

    ref: str
    cand: str
    ref_point: Point | None
    cand_point: Point | None
    point: Point
    other: Point | None = None
    via: str = "name"  # name | activation | source | output


@dataclass
class Alignment:
    pairs: list[Pair]
    unmapped: list[str] = field(default_factory=list)  # why tensors could not be compared (counts, examples)
    coarse_modules: frozenset[str] = frozenset()  # torch: modules grouped by module only

    def ordered(self) -> list[Pair]:
        return sorted(self.pairs, key=lambda p: (p.point.index, p.point.tensor))


def _examples(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def align_onnx(ref: OnnxGraph, cand: OnnxGraph) -> Alignment:
    """Pairs by float tensor name; a pair is named by the float model's node (``point``), the quantized model's
    node for it is ``other``."""
    flipped = ref.precision != "fp32" and cand.precision == "fp32"
    f, q = (cand, ref) if flipped else (ref, cand)
    fold = f.precision == "fp32" and q.precision != "fp32"
    f_rep, q_rep = f.representative(), q.representative()
    pairs: list[Pair] = []
    used: set[str] = set()
    for base, qp in sorted(q_rep.items(), key=lambda kv: kv[1].index):
        if base not in f.points or not f.real(f.points[base]) or f.constant(f.points[base]):
            continue
        target = (f.folded_activation(base, set(q_rep)) if fold else None) or base
        if target in used:
            continue
        used.add(target)
        fp = f_rep.get(target) or f.points[target]
        rp, cp = (qp, fp) if flipped else (fp, qp)
        pairs.append(Pair(rp.tensor, cp.tensor, rp, cp, fp, q.computed_by(qp), "activation" if target != base
                          else "name"))
    alignment = Alignment(pairs)
    left = [p.tensor for p in f_rep.values() if f.real(p) and not f.constant(p) and p.base not in used]
    if left:
        alignment.unmapped.append(f"{len(left)} tensor(s) of {f.path.name} have no counterpart in {q.path.name} "
                                  f"(fused or removed there): {_examples(left)}")
    return alignment


# --- PyTorch vs ONNX ---------------------------------------------------------------------------------------
def _group(point: Point | None) -> tuple[str, str | None] | None:
    if point is None or point.source is None:
        return None
    return point.source.module, short_location(point.source.location)


def _consumers(graph: OnnxGraph, tensor: str, depth: int = 0):
    for node in graph.consumers.get(tensor, []):
        if node.op_type in _TRANSPARENT and depth < 8:
            for out in node.output:
                yield from _consumers(graph, out, depth + 1)
        else:
            yield node


def _node_group(graph: OnnxGraph, node) -> tuple[str, str | None] | None:
    for out in node.output:
        group = _group(graph.points.get(out))
        if group is not None:
            return group
    return None


def leaving(graph: OnnxGraph) -> list[Point]:
    """Points that leave their (module, line) group: what a PyTorch function of that group returned."""
    out = []
    for p in graph.representative().values():
        group = _group(p)
        if group is None or not graph.real(p) or graph.constant(p):
            continue
        if p.tensor in graph.outputs or any(
                (g := _node_group(graph, c)) is not None and g != group for c in _consumers(graph, p.tensor)):
            out.append(p)
    return sorted(out, key=lambda p: p.index)


def record_key(module: str, location: str | None, occurrence: int) -> str:
    return f"torch:{module}|{location or '-'}|{occurrence}"


def key_records(records: list[Record], coarse: frozenset[str]) -> dict[str, np.ndarray]:
    """A batch's records keyed by (module, line or '*' for coarse modules, occurrence in that group)."""
    counts: dict[tuple[str, str | None], int] = {}
    out = {}
    for r in records:
        key = (r.module, "*" if r.module in coarse else r.location)
        n = counts.get(key, 0)
        counts[key] = n + 1
        out[record_key(*key, n)] = r.value
    return out


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-30))


def _by_value(points: list[Point], values: dict, candidates: list) -> list[tuple[Point, str]]:
    """Where a group makes several tensors of one shape on both sides (an LSTM cell's h and c), order says
    nothing about which is which: those are matched by closeness on the first batch, nearest first. The
    candidates used are removed from ``candidates``."""
    out = []
    shapes = {}
    for p in points:
        if p.tensor in values:
            shapes.setdefault(values[p.tensor].shape, []).append(p)
    for shape, pts in shapes.items():
        same = [c for c in candidates if c[1] == shape]
        if len(pts) < 2 or len(same) < 2:
            continue
        costs = sorted((_relative(values[p.tensor], c[3]), i, j) for i, p in enumerate(pts) for j, c in enumerate(same))
        used_p, used_c = set(), set()
        for _, i, j in costs:
            if i in used_p or j in used_c:
                continue
            used_p.add(i)
            used_c.add(j)
            out.append((pts[i], same[j][0]))
        for j in used_c:
            candidates.remove(same[j])
    return out


def align_torch(graph: OnnxGraph, records: list[Record], onnx_values: dict[str, np.ndarray],
                torch_outputs: list[str], onnx_is_ref: bool) -> Alignment:
    """Pairs between the ONNX model ``graph`` (its first-batch values ``onnx_values``) and the module's records of
    the same batch; ``torch_outputs``: the names the module's outputs were given (the ONNX outputs in order)."""
    points = leaving(graph)
    onnx_locs: dict[str, set] = {}
    for p in points:
        module, loc = _group(p)
        onnx_locs.setdefault(module, set()).add(loc)
    torch_locs: dict[str, set] = {}
    for r in records:
        torch_locs.setdefault(r.module, set()).add(r.location)
    coarse = frozenset(m for m, locs in onnx_locs.items() if m in torch_locs and not locs <= torch_locs[m])
    groups: dict[tuple, list[tuple[str, tuple]]] = {}
    counts: dict[tuple, int] = {}
    for r in records:
        key = (r.module, "*" if r.module in coarse else r.location)
        n = counts.get(key, 0)
        counts[key] = n + 1
        groups.setdefault(key, []).append((record_key(*key, n), r.value.shape, r.position, r.value))

    def pair(onnx_point: Point, torch_key: str, via: str) -> Pair:
        behind = graph.computed_by(onnx_point)  # of a quantized model: the node behind a Q/DQ pair
        other = behind if behind is not onnx_point else None
        if onnx_is_ref:
            return Pair(onnx_point.tensor, torch_key, onnx_point, None, onnx_point, other, via)
        return Pair(torch_key, onnx_point.tensor, None, onnx_point, onnx_point, other, via)

    pairs: list[Pair] = []
    done: set[str] = set()
    for name in graph.outputs:  # the module's outputs by position
        if name in torch_outputs and name in graph.points:
            pairs.append(pair(graph.points[name], name, "output"))
            done.add(graph.points[name].base)
    by_group: dict[tuple, list[Point]] = {}
    for p in points:
        module, loc = _group(p)
        by_group.setdefault((module, "*" if module in coarse else loc), []).append(p)
    unmatched: list[str] = []
    for key, pts in by_group.items():
        candidates = list(groups.get(key, []))
        values = {}
        for p in pts:
            value = onnx_values.get(p.tensor)
            if value is not None and (value.dtype.kind == "f" or p.integer) and p.base not in done:
                values[p.tensor] = value  # else shapes and indices: PyTorch computes those as Python values
        for p, key_ in _by_value(pts, values, candidates):
            pairs.append(pair(p, key_, "value"))
            done.add(p.base)
        for p in reversed(pts):
            if p.base in done or p.tensor not in values:
                continue
            value = values[p.tensor]
            same = [i for i in range(len(candidates) - 1, -1, -1) if candidates[i][1] == value.shape]
            # of a multi-output node (LSTM: Y, Y_h, Y_c), the output in the same place among the function's results
            multi = len(graph.producer[p.tensor].output) > 1
            hit = next((i for i in same if not multi or candidates[i][2] == p.slot), same[0] if same else None)
            if hit is None:
                unmatched.append(p.tensor)
                continue
            pairs.append(pair(p, candidates[hit][0], "source"))
            done.add(p.base)
            del candidates[hit:]  # earlier ONNX tensors match earlier PyTorch ones
    alignment = Alignment(pairs, coarse_modules=coarse)
    no_source = [p.tensor for p in graph.representative().values()
                 if p.source is None and graph.real(p) and not graph.constant(p) and p.tensor not in graph.outputs]
    if no_source:
        alignment.unmapped.append(f"{len(no_source)} tensor(s) of {graph.path.name} carry no PyTorch source (not in "
                                  f"its edgedl.provenance: made by the exporter or an optimizer): {_examples(no_source)}")
    if unmatched:
        alignment.unmapped.append(f"{len(unmatched)} tensor(s) found no PyTorch tensor of their module, line and "
                                  f"shape: {_examples(unmatched)}")
    if coarse:
        alignment.unmapped.append(f"module(s) {_examples(sorted(coarse))} were matched by module only: their source "
                                  "lines differ from the export's (the file changed since)")
    if not graph.sources:
        alignment.unmapped.append(f"{graph.path.name} has no edgedl.provenance (export it with edgedl export): only "
                                  "the outputs can be compared")
    return alignment
