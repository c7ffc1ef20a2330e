"""``edgedl bench compare OLD.json NEW.json``: per-configuration changes, and a verdict CI can gate on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgedl.errors import EdgeDLError
from edgedl.stages.bench.report import BenchReport, config_key

# metric -> (how to read it from a result, True if higher is better)
METRICS: dict[str, tuple[Any, bool]] = {
    "p50": (lambda r: r["latency_ms"]["p50_ms"], False),
    "p90": (lambda r: r["latency_ms"]["p90_ms"], False),
    "p99": (lambda r: r["latency_ms"]["p99_ms"], False),
    "mean": (lambda r: r["latency_ms"]["mean_ms"], False),
    "throughput": (lambda r: r["throughput"]["samples_per_s"], True),
    "memory": (lambda r: r["peak_rss_mib"], False),
}
REGRESSION_EXIT_CODE = 3


@dataclass
class Change:
    key: str
    metric: str
    old: float
    new: float
    higher_is_better: bool

    @property
    def change_pct(self) -> float:
        return (self.new - self.old) / self.old * 100 if self.old else 0.0

    @property
    def worse_pct(self) -> float:
        """How much worse NEW is, in percent (negative = better)."""
        return -self.change_pct if self.higher_is_better else self.change_pct


@dataclass
class Comparison:
    threshold_pct: float
    changes: list[Change]
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.worse_pct > self.threshold_pct]

    @property
    def improvements(self) -> list[Change]:
        return [c for c in self.changes if c.worse_pct < -self.threshold_pct]

    def __bool__(self) -> bool:  # truthy = no regression (CI passes)
        return not self.regressions

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold_pct": self.threshold_pct,
            "passed": bool(self),
            "regressions": len(self.regressions),
            "changes": [{"config": c.key, "metric": c.metric, "old": c.old, "new": c.new,
                         "change_pct": c.change_pct, "worse_pct": c.worse_pct,
                         "verdict": verdict(c, self.threshold_pct)} for c in self.changes],
            "only_old": self.only_old,
            "only_new": self.only_new,
        }


def verdict(change: Change, threshold_pct: float) -> str:
    if change.worse_pct > threshold_pct:
        return "REGRESSION"
    if change.worse_pct < -threshold_pct:
        return "improved"
    return "same"


def compare_reports(old: BenchReport, new: BenchReport, threshold_pct: float = 5.0,
                    metrics: tuple[str, ...] = ("p50", "throughput")) -> Comparison:
    for m in metrics:
        if m not in METRICS:
            import difflib

            close = difflib.get_close_matches(m, list(METRICS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise EdgeDLError(f"unknown metric '{m}'; {hint}known: {', '.join(METRICS)}")
    old_by = {config_key(r): r for r in old.results}
    new_by = {config_key(r): r for r in new.results}
    common = [k for k in old_by if k in new_by]
    if not common:
        raise EdgeDLError("the two reports share no configuration (same model, engine, scenario, threads, batch); "
                          "compare runs of the same benchmark")
    changes = []
    for key in common:
        for m in metrics:
            read, higher = METRICS[m]
            changes.append(Change(key, m, float(read(old_by[key])), float(read(new_by[key])), higher))
    return Comparison(threshold_pct, changes, [k for k in old_by if k not in new_by],
                      [k for k in new_by if k not in old_by])
