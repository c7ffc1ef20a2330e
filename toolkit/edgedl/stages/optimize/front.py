"""Honest timing at the end: the finalists re-measured in interleaved rounds, compared round by round, the Pareto
front (accuracy vs speed vs size) with noise taken into account, and the choice with its reason.

A candidate is *faster* than another only when it was faster in so many of the paired interleaved rounds that
chance is unlikely (a one-sided sign test at ``ALPHA``: every one of 5 rounds, 8 of 9) and by at least
``TIE_MARGIN`` in the median of the per-round ratios; otherwise the two tie. Sizes within ``SIZE_TIE`` tie too.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

TIE_MARGIN = 0.03
ALPHA = 0.05
SIZE_TIE = 0.01


@dataclass
class Member:
    """One finalist with its re-measured rounds; ``baseline`` is fp32 with the target's default session at the
    same batch (a baseline member is its own)."""

    trial: Any  # search.Trial
    rounds: list = field(default_factory=list)  # device.Timing per round
    baseline: "Member | None" = None
    loss: float = 0.0  # the accuracy axis (ModelLab.accuracy_loss), lower is better
    accuracy_drop: float | None = None  # top-1 points, with labels

    @property
    def candidate(self):
        return self.trial.candidate

    @property
    def size(self) -> int:
        return self.trial.artifact.size_bytes

    def median(self, attr: str) -> float:
        return statistics.median(getattr(t, attr) for t in self.rounds)

    @property
    def p50_ms(self) -> float:
        return self.median("p50_ms")

    @property
    def p90_ms(self) -> float:
        return self.median("p90_ms")

    @property
    def samples_per_s(self) -> float:
        return self.median("samples_per_s")


def ratios(a: Member, b: Member, throughput: bool) -> list[float]:
    """Per round, how much faster ``a`` ran than ``b`` (> 1: faster)."""
    if throughput:
        return [x.samples_per_s / max(y.samples_per_s, 1e-12) for x, y in zip(a.rounds, b.rounds)]
    return [y.p50_ms / max(x.p50_ms, 1e-12) for x, y in zip(a.rounds, b.rounds)]


def sign_test(wins: int, rounds: int) -> float:
    """One-sided p-value of ``wins`` or more of ``rounds`` paired rounds going one way by chance (p = 1/2 each)."""
    return sum(math.comb(rounds, k) for k in range(wins, rounds + 1)) / 2 ** rounds


def beats(a: Member, b: Member, throughput: bool) -> bool:
    """``a`` measurably faster than ``b``: faster in enough of the paired rounds that chance is unlikely (a sign
    test at ALPHA: all of 5 rounds, 8 of 9), and by TIE_MARGIN in the median ratio."""
    r = ratios(a, b, throughput)
    wins = sum(1 for x in r if x > 1.0)
    return bool(r) and sign_test(wins, len(r)) <= ALPHA and statistics.median(r) >= 1.0 + TIE_MARGIN


def verdict(a: Member, b: Member, throughput: bool) -> str:
    """'faster', 'slower' or 'tie' (within noise) of ``a`` against ``b``."""
    if beats(a, b, throughput):
        return "faster"
    if beats(b, a, throughput):
        return "slower"
    return "tie"


def smaller(a: Member, b: Member) -> bool:
    return a.size < b.size * (1.0 - SIZE_TIE)


def dominates(a: Member, b: Member, throughput: bool) -> bool:
    """``a`` is at least as good as ``b`` on accuracy, size and speed (speed within noise), and better on one."""
    if a.loss > b.loss + 1e-9 or smaller(b, a) or beats(b, a, throughput):
        return False
    return a.loss < b.loss - 1e-9 or smaller(a, b) or beats(a, b, throughput)


def front(members: list[Member], throughput: bool) -> list[Member]:
    return [m for m in members if not any(dominates(o, m, throughput) for o in members if o is not m)]


def speedup(m: Member, throughput: bool) -> float:
    """Over fp32 (the target's default session) at the same batch: median of the per-round ratios."""
    return statistics.median(ratios(m, m.baseline, throughput))


@dataclass(frozen=True)
class Choice:
    chosen: Member
    front: tuple[Member, ...]
    reason: str
    eligible: tuple[Member, ...]


def choose(members: list[Member], objective: str, latency_budget_ms: float | None, rounds: int) -> Choice:
    """The member to deploy: on the re-measured front, within the latency budget, never measurably slower than
    fp32; then the objective, with ties (within noise) broken by size and then accuracy."""
    throughput = objective == "throughput"
    on_front = front(members, throughput)

    def eligible(m: Member) -> bool:
        within = latency_budget_ms is None or m.p90_ms <= latency_budget_ms
        return within and not beats(m.baseline, m, throughput)

    pool = [m for m in on_front if eligible(m)]
    off_front = not pool
    pool = pool or [m for m in members if eligible(m)] or [m for m in members if m.baseline is m] or members
    speed = (lambda m: m.samples_per_s) if throughput else (lambda m: -m.p50_ms)
    notes: list[str] = []
    if objective == "size":
        chosen = min(pool, key=lambda m: (m.size, m.loss, m.p50_ms))
        best = chosen
        notes.append(f"the smallest configuration on the front that is not slower than fp32 "
                     f"({chosen.size / 1024:.1f} KiB)")
    else:
        chosen = max(pool, key=lambda m: (speed(m), -m.size, -m.loss))
        what = "highest throughput" if throughput else "lowest latency"
        figure = f"{chosen.samples_per_s:,.0f} samples/s" if throughput else f"{chosen.p50_ms:.4g} ms"
        notes.append(f"the {what} (median of {rounds} rounds) on the front ({figure})")
        others = [m for m in members if m is not chosen and m.baseline is not m]
        tied = [m for m in others if not beats(chosen, m, throughput)]
        if others:
            notes.append(f"faster beyond noise than {len(others) - len(tied)} of the {len(others)} other finalists"
                         + (f"; ties {', '.join(m.candidate.describe() for m in tied[:3])}"
                            f"{' ...' if len(tied) > 3 else ''}" if tied else ""))
    if chosen.baseline is chosen:
        notes.append("fp32 with the target's default session settings: no candidate was measurably faster and "
                     "accurate enough" if objective != "size" else "fp32: no smaller candidate was accurate enough "
                     "and not slower")
    else:
        v = verdict(chosen, chosen.baseline, throughput)
        r = ratios(chosen, chosen.baseline, throughput)
        notes.append(f"{speedup(chosen, throughput):.2f}x fp32 at batch {chosen.candidate.batch} (faster in "
                     f"{sum(1 for x in r if x > 1)} of {len(r)} rounds): "
                     + ("faster" if v == "faster" else "within noise of fp32 (a tie, not a win)"))
    if latency_budget_ms is not None:
        over = [m for m in members if m.p90_ms > latency_budget_ms]
        if over:
            notes.append(f"{len(over)} finalist(s) over the {latency_budget_ms:g} ms p90 budget left out")
    if off_front:
        notes.append("no front member met the budgets: chosen among the rest")
    return Choice(chosen, tuple(on_front), "; ".join(notes), tuple(m for m in members if eligible(m)))
