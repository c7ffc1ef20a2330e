"""What ``edgedl optimize`` hands back: the report (chosen, the Pareto front, every candidate tried) and the
chosen configuration as a file ``edgedl quantize --config`` and ``edgedl bench --config`` read."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedl.errors import EdgeDLError
from edgedl.stages.optimize.front import Member, speedup, verdict
from edgedl.stages.optimize.space import Candidate

CONFIG_SCHEMA = "edgedl.optimize.config/1"
REPORT_SCHEMA = "edgedl.optimize/1"


def _num(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass(frozen=True)
class ChosenConfig:
    """A configuration to reproduce: how to build the model file (quantize's settings), how to run it (bench's
    session settings) and the scenario it was judged in."""

    candidate: Candidate
    quantize: dict[str, Any]  # QuantizeConfig/StaticConfig fields; mode 'fp32' = the input as it is
    provider: str
    scenario: str
    model: dict[str, Any] = field(default_factory=dict)  # source and chosen file hashes
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def session(self) -> dict[str, Any]:
        """BenchConfig fields (``bench --config``) for the chosen file."""
        c = self.candidate
        return {"threads": c.intra_op_threads, "inter_op_threads": c.inter_op_threads,
                "execution_mode": c.execution_mode, "spinning": c.spinning, "memory_arena": c.memory_arena,
                "graph_optimization": "disable" if c.saved_optimized else c.graph_optimization}

    def session_for(self, models) -> dict[str, Any]:
        """``session`` for timing ``models``: graph optimization is off only for the saved optimized file itself
        (the one ``-o DIR`` holds); a file rebuilt with ``quantize --config`` is optimized at load as chosen."""
        from edgedl.runtime.manifest import sha256_file

        session = self.session
        saved = self.model.get("file_sha256")
        if self.candidate.saved_optimized and not (saved and all(sha256_file(m) == saved for m in models)):
            session["graph_optimization"] = self.candidate.graph_optimization
        return session

    def to_json(self) -> dict[str, Any]:
        return {"schema": CONFIG_SCHEMA, "configuration": self.candidate.to_json(), "quantize": self.quantize,
                "session": self.session, "scenario": {"name": self.scenario, "batch": self.candidate.batch},
                "provider": self.provider, "model": self.model, "figures": self.figures}

    @classmethod
    def from_json(cls, data: Any, source: str = "configuration") -> "ChosenConfig":
        if not isinstance(data, dict) or data.get("schema") != CONFIG_SCHEMA:
            raise EdgeDLError(f"{source} is not an edgedl optimize configuration (expected schema {CONFIG_SCHEMA}); "
                              "pass the config.json `edgedl optimize -o DIR` wrote")
        try:
            return cls(Candidate.from_json(data["configuration"]), dict(data["quantize"]), data.get("provider", "cpu"),
                       data["scenario"]["name"], dict(data.get("model") or {}), dict(data.get("figures") or {}))
        except (KeyError, TypeError) as exc:
            raise EdgeDLError(f"{source} lacks {exc}; write it again with `edgedl optimize`") from None

    @classmethod
    def load(cls, path: Path) -> "ChosenConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise EdgeDLError(f"cannot read {path}: {exc.strerror}; pass the config.json `edgedl optimize` "
                              "wrote") from None
        except ValueError as exc:
            raise EdgeDLError(f"{path} is not JSON ({exc}); pass the config.json `edgedl optimize` wrote") from None
        return cls.from_json(data, str(path))


def member_json(m: Member, throughput: bool, loss_basis: str) -> dict[str, Any]:
    """One re-measured configuration: the fields ``chosen`` and every ``pareto`` entry carry."""
    t = m.trial
    return {
        "label": m.candidate.describe(),
        "configuration": m.candidate.to_json(),
        "accuracy_drop": m.accuracy_drop,
        "accuracy_loss": _num(m.loss),
        "accuracy_basis": loss_basis,
        "speedup": speedup(m, throughput),
        "vs_fp32": verdict(m, m.baseline, throughput) if m.baseline is not m else "fp32",
        "latency_ms": m.p50_ms,
        "p90_ms": m.p90_ms,
        "throughput": m.samples_per_s,
        "size_bytes": m.size,
        "load_ms": m.median("load_ms"),
        "peak_rss_mib": m.median("peak_rss_mib"),
        "batch": m.candidate.batch,
        "rounds": [{"p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "samples_per_s": r.samples_per_s, "queries": r.queries}
                   for r in m.rounds],
        "sha256": t.artifact.sha256,
    }


def trial_json(t) -> dict[str, Any]:
    timing = t.timing
    return {"label": t.candidate.describe(), "configuration": t.candidate.to_json(), "status": t.status,
            "note": t.note, "size_bytes": t.artifact.size_bytes if t.artifact and not t.artifact.error else None,
            "accuracy": t.accuracy.evaluation.to_json() if t.accuracy else None,
            "checks": [c.to_json() for c in t.accuracy.checks] if t.accuracy else [],
            "rungs": [{"duration_s": x.duration_s, "p50_ms": x.p50_ms, "p90_ms": x.p90_ms,
                       "samples_per_s": x.samples_per_s} for x in t.timings],
            "latency_ms": timing.p50_ms if timing else None}


@dataclass
class OptimizeReport:
    model: Path
    target: str
    device: str
    objective: str
    chosen: Member
    pareto: list[Member]
    finalists: list[Member]
    trials: list
    reason: str
    config: dict[str, Any]
    space: dict[str, Any]
    space_size: int
    budget_s: float
    spent_s: float  # charged to the budget (cached work at its original cost)
    wall_s: float
    work: dict[str, int]  # built, evaluated, timed in this run; cache hits and misses
    accuracy_basis: str
    fp32_accuracy: float | None
    notes: list[str] = field(default_factory=list)
    chosen_config: ChosenConfig | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def throughput(self) -> bool:
        return self.objective == "throughput"

    def to_json(self) -> dict[str, Any]:
        basis = self.accuracy_basis
        return {
            "schema": REPORT_SCHEMA,
            "model": str(self.model),
            "target": self.target,
            "device": self.device,
            "objective": self.objective,
            "chosen": {**member_json(self.chosen, self.throughput, basis), "reason": self.reason,
                       "quantize": self.chosen_config.quantize if self.chosen_config else None},
            "pareto": [member_json(m, self.throughput, basis) for m in self.pareto],
            "finalists": [member_json(m, self.throughput, basis) for m in self.finalists],
            "fp32_accuracy": self.fp32_accuracy,
            "candidates": [trial_json(t) for t in self.trials],
            "space": self.space,
            "space_size": self.space_size,
            "budget_s": self.budget_s,
            "spent_s": self.spent_s,
            "wall_s": self.wall_s,
            "work": self.work,
            "notes": self.notes,
            "outputs": self.outputs,
            "config": self.config,
        }
