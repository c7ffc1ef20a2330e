"""Typed settings of ``edgedl optimize``: what to optimize for, under which budgets, on which device."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import ShapeOptions
from edgedl.stages.data import DataOptions
from edgedl.stages.quantize.config import GateConfig, choose

# objective -> what it minimizes (one table: the CLI's help, the report and the choice read it)
OBJECTIVES: dict[str, str] = {
    "latency": "median latency per query at the scenario's batch",
    "throughput": "samples per second, the batch size searched too",
    "size": "model file size, among candidates not slower than fp32",
}
DEFAULT_THROUGHPUT_BATCHES = (1, 8, 32)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_budget(text: str | float | int) -> float:
    """'10m' -> 600.0, '90s' -> 90.0, '1h' -> 3600.0, '45' -> 45.0 (seconds)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*", str(text).lower())
        if not m:
            raise EdgeDLError(f"a time budget is a number with a unit: 90s, 10m, 1h; got '{text}'",
                              option=("budget", "10m"))
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise EdgeDLError(f"the time budget must be positive, got '{text}'", option=("budget", "10m"))
    return seconds


@dataclass(frozen=True)
class RemoteDevice:
    """A device reached over SSH (the same target ``bench --remote`` takes)."""

    target: Any  # edgedl.stages.device.SSHTarget
    remote_dir: str = "edgedl-optimize"


@dataclass(frozen=True)
class OptimizeConfig:
    """Everything ``edgedl optimize`` does, as one typed value."""

    target: str  # a device profile name or .toml path
    objective: str = "latency"
    gates: GateConfig = field(default_factory=GateConfig)  # the accuracy gate, as quantize's
    latency_budget_ms: float | None = None  # p90 per query
    budget_s: float = 600.0
    batches: tuple[int, ...] | None = None  # the scenario's batch; throughput: the sizes searched
    space: Mapping[str, tuple] = field(default_factory=dict)  # knob -> values (narrows the defaults)
    exclude_node_sets: tuple[tuple[str, ...], ...] = ()
    data: DataOptions = field(default_factory=DataOptions)
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)
    device: RemoteDevice | None = None  # None: this machine
    output: Path | None = None
    package: bool = False
    seed: int = 0
    cache_dir: Path | None = None  # default: $EDGEDL_CACHE/optimize or ~/.cache/edgedl/optimize
    use_cache: bool = True  # False: measure everything again (nothing is read back)
    rounds: int = 5  # interleaved rounds of the final re-measurement
    rung_seconds: float = 0.1  # timing per candidate in the first (cheapest) rung
    final_seconds: float = 0.5  # timing per candidate and round in the final re-measurement, at most
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective", choose("--objective", self.objective, tuple(OBJECTIVES)))
        if self.latency_budget_ms is not None and self.latency_budget_ms <= 0:
            raise EdgeDLError(f"the latency budget must be > 0 ms, got {self.latency_budget_ms}",
                              option=("latency_budget", "MS"))
        if self.budget_s <= 0:
            raise EdgeDLError("the time budget must be positive", option=("budget", "10m"))
        if self.batches is not None:
            if not self.batches or any(b < 1 for b in self.batches):
                raise EdgeDLError(f"batch sizes must be >= 1, got {list(self.batches)}", option=("batch", "N"))
            if self.objective != "throughput" and len(self.batches) > 1:
                raise EdgeDLError(f"the {self.objective} objective times one scenario batch; give one batch size "
                                  "(several are searched with the throughput objective)", option=("batch", "N"))
        if self.rounds < 2:
            raise EdgeDLError(f"the final re-measurement needs >= 2 interleaved rounds, got {self.rounds}")
        if self.rung_seconds <= 0 or self.final_seconds <= 0:
            raise EdgeDLError("timing durations must be > 0 seconds")
        if self.package and self.output is None:
            raise EdgeDLError("packaging writes the bundle into the output directory; give one",
                              option=("output", "DIR"))

    @property
    def scenario(self) -> str:
        """The bench scenario candidates are timed in (throughput: all samples at once, batched)."""
        return "offline" if self.objective == "throughput" else "single-stream"

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"target": self.target, "objective": self.objective, "gates": asdict(self.gates),
                "latency_budget_ms": self.latency_budget_ms, "budget_s": self.budget_s,
                "batches": list(self.batches) if self.batches else None,
                "space": {k: [list(v) if isinstance(v, tuple) else v for v in vs] for k, vs in self.space.items()},
                "exclude_node_sets": [list(s) for s in self.exclude_node_sets], "data": self.data.to_json(),
                "shape_options": self.shape_options.to_json(),
                "device": self.device.target.label if self.device else None, "seed": self.seed,
                "rounds": self.rounds, "rung_seconds": self.rung_seconds, "final_seconds": self.final_seconds}
