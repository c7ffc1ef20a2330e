"""Quantization bisection (``quantize --bisect``): from an int8 candidate that fails its accuracy gate, a small
set of nodes to keep in float so that it passes.

1. **Rank.** ``edgedl debug compare`` of the preprocessed float model against the candidate, on calibration data
   (choosing on the gate's own evaluation data would tune to it): per compared tensor, the relative error it adds
   to what its inputs carried (``LayerError.added``); its group is the nodes that compute it (``LayerError.nodes``)
   that this mode quantizes. Groups that add error come first, most first.
2. **Search.** Keep the ``k`` worst groups in float: first all of them (if even that fails, nothing will), then
   bisection on ``k`` for the smallest prefix that passes (more float is taken never to hurt), then each group of
   that prefix is dropped in turn, least harmful first, where the gate still passes without it.
3. Every step converts, runs the accuracy gate and times the model against fp32 (the speed gate's batch); the
   report lists them all, after step 0: the failing candidate itself. The passing set is written one node per
   line, a file ``--exclude-nodes @FILE`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.stages.compare import json_number as _num
from edgedl.stages.data import Dataset
from edgedl.stages.files import atomic_output

RANK_SAMPLES = 32
DEFAULT_STEPS = 12


@dataclass(frozen=True)
class Group:
    """Nodes kept in float together: those that compute one compared tensor."""

    nodes: tuple[str, ...]
    tensor: str
    op_types: tuple[str, ...]
    added: float  # relative error this tensor adds over its inputs', on the ranking data
    sqnr_db: float
    module: str | None
    source: str | None

    def to_json(self) -> dict:
        return {"nodes": list(self.nodes), "tensor": self.tensor, "op_types": list(self.op_types),
                "added": _num(self.added), "sqnr_db": _num(self.sqnr_db), "module": self.module,
                "source": self.source}


@dataclass
class Step:
    """One model tried: ``kept_float`` (beyond the user's own --exclude-nodes), its verdict and figures."""

    step: int
    why: str
    kept_float: tuple[str, ...]
    passed: bool
    checks: list[dict]
    accuracy: float | None
    agreement: float | None
    metric: float | None
    sqnr_db: float | None
    size_bytes: int
    latency_ms: float | None = None
    fp32_latency_ms: float | None = None
    speedup: float | None = None

    def to_json(self) -> dict:
        return {"step": self.step, "why": self.why, "kept_float": list(self.kept_float), "passed": self.passed,
                "checks": self.checks, "accuracy": self.accuracy, "agreement": self.agreement, "metric": self.metric,
                "sqnr_db": _num(self.sqnr_db) if self.sqnr_db is not None else None, "size_bytes": self.size_bytes,
                "latency_ms": self.latency_ms, "fp32_latency_ms": self.fp32_latency_ms, "speedup": self.speedup}


@dataclass
class Bisection:
    mode: str
    ranked: list[Group] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    fix: tuple[str, ...] | None = None  # None: no set found within the steps allowed
    file: Path | None = None
    notes: list[str] = field(default_factory=list)
    ranking: dict | None = None  # the compare report the ranking came from (``--json``)
    speed_batch: int | None = None

    def to_json(self) -> dict:
        return {"mode": self.mode, "fix": list(self.fix) if self.fix is not None else None,
                "file": str(self.file) if self.file else None, "speed_batch": self.speed_batch,
                "ranked": [g.to_json() for g in self.ranked], "steps": [s.to_json() for s in self.steps],
                "notes": self.notes}


def _quantizable(mode: str, qoperator: bool) -> set[str]:
    registry = require("onnxruntime.quantization.registry")
    if mode == "dynamic":
        return set(registry.IntegerOpsRegistry)
    return set(registry.QLinearOpsRegistry if qoperator else registry.QDQRegistry)


def rank(float_path: Path, quant_path: Path, data: Dataset, mode: str, qoperator: bool,
         samples: int = RANK_SAMPLES) -> tuple[list[Group], dict]:
    """The groups of nodes to keep in float, most harmful first, from a comparison on ``data``."""
    from edgedl.stages.layerwise.compare import CompareConfig, compare
    from edgedl.stages.layerwise.graph import OnnxGraph
    from edgedl.stages.layerwise.sides import SideSpec

    report = compare(CompareConfig(SideSpec(str(float_path)), SideSpec(str(quant_path)), samples=samples),
                     dataset=data.head(samples))
    ops = {n.name: n.op_type for n in OnnxGraph(float_path).nodes}
    quantizable = _quantizable(mode, qoperator)
    groups: list[Group] = []
    taken: set[str] = set()
    for layer in sorted(report.layers, key=lambda x: -x.added):
        if not layer.added > 0:
            break
        nodes = tuple(n for n in layer.nodes if n and n not in taken and ops.get(n) in quantizable)
        if not nodes:
            continue
        taken.update(nodes)
        groups.append(Group(nodes, layer.tensor, tuple(ops[n] for n in nodes), layer.added, layer.sqnr_db,
                            layer.module, layer.source))
    return groups, report.to_json()


def search(groups: list[Group], measure: Callable[[tuple[str, ...], str], Step], max_steps: int
           ) -> tuple[tuple[str, ...] | None, list[Step]]:
    """The smallest prefix of ``groups`` kept in float that passes (bisection), then pruned; ``measure(nodes, why)``
    builds, judges and times one model. Returns (the passing node set or None, the steps)."""
    steps: list[Step] = []

    def passes(chosen: list[Group], why: str) -> bool:
        step = measure(tuple(n for g in chosen for n in g.nodes), why)
        steps.append(step)
        return step.passed

    if not groups or not passes(groups, f"all {len(groups)} ranked group(s) in float"):
        return None, steps
    lo, hi = 0, len(groups)  # the candidate itself (0 kept) failed; all of them pass
    while hi - lo > 1 and len(steps) < max_steps:
        mid = (lo + hi) // 2
        if passes(groups[:mid], f"the {mid} worst group(s) in float"):
            hi = mid
        else:
            lo = mid
    chosen = list(groups[:hi])
    for group in reversed(chosen[:-1]):  # the last one is needed: one fewer failed
        if len(steps) >= max_steps:
            break
        trial = [g for g in chosen if g is not group]
        if passes(trial, f"without {', '.join(group.nodes)}"):
            chosen = trial
    return tuple(n for g in chosen for n in g.nodes), steps


def write_exclude_file(path: Path, nodes: tuple[str, ...], model: Path, mode: str, verdict: str) -> Path:
    """One node per line ('#' comments), the form ``--exclude-nodes @FILE`` reads."""
    lines = [f"# nodes of {model.name} to keep in float for {mode} int8 ({verdict})",
             f"# edgedl quantize {model.name} --mode {mode} --exclude-nodes @{path.name} ...", *nodes]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def node_names(value: str) -> tuple[str, ...]:
    """One --exclude-nodes value: NAME[,NAME], or @FILE (names from a file, as --bisect writes)."""
    value = value.strip()
    if value.startswith("@"):
        return read_exclude_file(Path(value[1:]))
    return tuple(n.strip() for n in value.split(",") if n.strip())


def read_exclude_file(path: Path) -> tuple[str, ...]:
    """Node names from a file: one per line (or comma-separated), '#' starts a comment."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise EdgeDLError(f"--exclude-nodes @{path}: cannot read it ({exc.strerror or exc}); give a file with one "
                          "node name per line (edgedl quantize --bisect writes one)") from None
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        names.extend(n.strip() for n in line.split(",") if n.strip())
    return tuple(names)
