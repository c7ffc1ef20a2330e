"""The quantization report: every candidate's accuracy, size, latency and ops, and the decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedl.stages.compare import json_number
from edgedl.stages.quantize.gates import Check, Evaluation


@dataclass
class Candidate:
    """One converted model (or fp32 itself) with what was measured about it."""

    mode: str
    path: Path
    size_bytes: int = 0
    evaluation: Evaluation | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)
    ops: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)  # the accuracy gate's verdicts
    accuracy_ok: bool | None = None  # None: not judged (no evaluation data, or the gate is off)
    faster: bool | None = None  # None: speed not measured
    excluded_nodes: list[str] = field(default_factory=list)
    bisection: Any = None  # quantize.debug.Bisection when --bisect searched nodes to keep in float

    def to_json(self, fp32: Evaluation | None) -> dict:
        return {
            "mode": self.mode,
            "size_bytes": self.size_bytes,
            **accuracy_json(fp32, self.evaluation),
            "checks": [c.to_json() for c in self.checks],
            "latency_ms": {str(b): v for b, v in self.latency_ms.items()},
            "speedup": {str(b): v for b, v in self.speedup.items()},
            "accuracy_ok": self.accuracy_ok,
            "faster": self.faster,
            "excluded_nodes": self.excluded_nodes,
            "bisection": self.bisection.to_json() if self.bisection is not None else None,
            "notes": self.notes,
            **{k: v for k, v in self.ops.items() if k in ("ops_quantized", "ops_left_float")},
        }


def _drop(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else before - after


def accuracy_json(fp32: Evaluation | None, ev: Evaluation | None) -> dict:
    """A candidate's accuracy against labels, the user metric and the fp32 model, with the drops."""
    return {
        "accuracy": ev.accuracy if ev else None,
        "drop_points": _drop(fp32.accuracy if fp32 else None, ev.accuracy if ev else None),
        "metric": ev.metric if ev else None,
        "metric_drop": _drop(fp32.metric if fp32 else None, ev.metric if ev else None),
        "agreement": ev.agreement if ev else None,
        "agreement_top_k": ev.agreement_top_k if ev else None,
        "top_k": ev.top_k if ev else None,
        "outputs": {k: {m: json_number(v) for m, v in o.items()} for k, o in ev.outputs.items()} if ev else {},
    }


@dataclass
class QuantizeReport:
    input_path: Path
    requested_mode: str
    fp32: Candidate
    chosen: Candidate | None
    candidates: list[Candidate]
    accepted: bool
    output_path: Path | None
    speed_batch: int
    threads: int
    provider: str
    op_types_before: dict[str, int]
    reasons: list[str] = field(default_factory=list)  # why rejected / what to try
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    timed_shapes: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # batch -> input -> shape

    @property
    def model_path(self) -> Path | None:
        """The model to use: the one written, or the input when auto kept fp32 (None when rejected)."""
        if not self.accepted:
            return None
        return self.output_path or self.input_path

    @property
    def mode(self) -> str:
        return self.chosen.mode if self.chosen else self.requested_mode

    def to_json(self) -> dict:
        q = self.chosen
        fp32 = self.fp32.evaluation
        q_ev = q.evaluation if q else None
        accuracy = accuracy_json(fp32, q_ev)
        return {
            "input_path": str(self.input_path),
            "requested_mode": self.requested_mode,
            "mode": self.mode,
            "output_path": str(self.output_path) if self.output_path else None,
            "model_path": str(self.model_path) if self.model_path else None,
            "accepted": self.accepted,
            "reasons": self.reasons,
            "size_bytes": {"fp32": self.fp32.size_bytes, "quantized": q.size_bytes if q else None},
            "size_ratio": q.size_bytes / self.fp32.size_bytes if q else None,
            "accuracy": {
                "fp32": fp32.accuracy if fp32 else None, "quantized": accuracy.pop("accuracy"),
                "fp32_metric": fp32.metric if fp32 else None, "samples": fp32.samples if fp32 else 0,
                "checked": fp32 is not None, "weak": bool(self.data.get("weak")),
                **accuracy,
                "checks": [c.to_json() for c in q.checks] if q else [],
            },
            "latency_ms": {
                "fp32": {str(b): v for b, v in self.fp32.latency_ms.items()},
                "quantized": {str(b): v for b, v in q.latency_ms.items()} if q else {},
            },
            "speedup": {str(b): v for b, v in q.speedup.items()} if q else {},
            "speed": {"batch_sizes": sorted(self.fp32.latency_ms), "decision_batch": self.speed_batch,
                      "threads": self.threads, "provider": self.provider,
                      "shapes": {str(b): s for b, s in self.timed_shapes.items()}},
            "op_types": {"before": self.op_types_before, "after": q.ops.get("op_types_after", {}) if q else {}},
            "ops_quantized": q.ops.get("ops_quantized", {}) if q else {},
            "ops_left_float": q.ops.get("ops_left_float", {}) if q else {},
            "candidates": [c.to_json(fp32) for c in self.candidates],
            "data": self.data,
            "notes": self.notes + (q.notes if q else []),
            "bisection": [c.bisection.to_json() for c in self.candidates if c.bisection is not None],
            "config": self.config,
        }
