"""The quantization report: every candidate's accuracy, size, latency and ops, and the decision."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedl.stages.quantize.gates import Evaluation


def _num(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


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
    accuracy_ok: bool | None = None  # None: no evaluation data
    faster: bool | None = None  # None: speed not measured
    excluded_nodes: list[str] = field(default_factory=list)

    def to_json(self, fp32_accuracy: float | None) -> dict:
        acc = self.evaluation.accuracy if self.evaluation else None
        return {
            "mode": self.mode,
            "size_bytes": self.size_bytes,
            "accuracy": acc,
            "drop_points": None if acc is None or fp32_accuracy is None else fp32_accuracy - acc,
            "agreement": self.evaluation.agreement if self.evaluation else None,
            "outputs": {k: {m: _num(v) for m, v in o.items()} for k, o in self.evaluation.outputs.items()}
            if self.evaluation else {},
            "latency_ms": {str(b): v for b, v in self.latency_ms.items()},
            "speedup": {str(b): v for b, v in self.speedup.items()},
            "accuracy_ok": self.accuracy_ok,
            "faster": self.faster,
            "excluded_nodes": self.excluded_nodes,
            "notes": self.notes,
            **{k: v for k, v in self.ops.items() if k in ("ops_quantized", "ops_left_float")},
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
    layers: dict | None = None
    fallback_steps: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.chosen.mode if self.chosen else self.requested_mode

    def to_json(self) -> dict:
        q = self.chosen
        fp32_acc = self.fp32.evaluation.accuracy if self.fp32.evaluation else None
        q_acc = q.evaluation.accuracy if q and q.evaluation else None
        return {
            "input_path": str(self.input_path),
            "requested_mode": self.requested_mode,
            "mode": self.mode,
            "output_path": str(self.output_path) if self.output_path else None,
            "accepted": self.accepted,
            "reasons": self.reasons,
            "size_bytes": {"fp32": self.fp32.size_bytes, "quantized": q.size_bytes if q else None},
            "size_ratio": q.size_bytes / self.fp32.size_bytes if q else None,
            "accuracy": {
                "fp32": fp32_acc, "quantized": q_acc,
                "drop_points": None if fp32_acc is None or q_acc is None else fp32_acc - q_acc,
                "agreement": q.evaluation.agreement if q and q.evaluation else None,
                "outputs": {k: {m: _num(v) for m, v in o.items()} for k, o in q.evaluation.outputs.items()}
                if q and q.evaluation else {},
            },
            "latency_ms": {
                "fp32": {str(b): v for b, v in self.fp32.latency_ms.items()},
                "quantized": {str(b): v for b, v in q.latency_ms.items()} if q else {},
            },
            "speedup": {str(b): v for b, v in q.speedup.items()} if q else {},
            "speed": {"batch_sizes": sorted(self.fp32.latency_ms), "decision_batch": self.speed_batch,
                      "threads": self.threads, "provider": self.provider},
            "op_types": {"before": self.op_types_before, "after": q.ops.get("op_types_after", {}) if q else {}},
            "ops_quantized": q.ops.get("ops_quantized", {}) if q else {},
            "ops_left_float": q.ops.get("ops_left_float", {}) if q else {},
            "candidates": [c.to_json(fp32_acc) for c in self.candidates],
            "data": self.data,
            "notes": self.notes + (q.notes if q else []),
            "layers": self.layers,
            "fallback_steps": self.fallback_steps,
            "config": self.config,
        }
