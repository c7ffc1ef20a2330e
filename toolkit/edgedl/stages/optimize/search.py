"""The search engine: visit candidates in a seeded order, build and judge each model file once, time the accurate
ones briefly, give longer timings only to the best (successive halving), then re-measure the finalists in
interleaved rounds - all within the time budget.

The budget is spent on a clock that charges every piece of work what it cost when it was done, read back from
the cache when it was cached, so a re-run takes the same path and makes the same choice in a fraction of the
time, and a larger budget continues where a smaller one stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from edgedl.errors import EdgeDLError
from edgedl.stages.optimize.cache import Cache
from edgedl.stages.optimize.device import WARMUP, Request, Scenario, Timing
from edgedl.stages.optimize.models import Accuracy, Artifact, ModelLab
from edgedl.stages.optimize.space import Candidate, digest, merge

ETA = 3  # successive halving: keep the best third, time it three times longer
MAX_RUNGS = 3
BATCH = 6  # timings sent to the device at once (one SSH round trip for a remote device)
EXPLORE_SHARE = 0.5  # of the budget left after the final reserve: for the first, short timings
RESERVE_SHARE = 0.25  # of the budget: for the final interleaved re-measurement
MAX_FINALISTS = 8
MIN_FINAL_SECONDS = 0.05
OVERHEAD_GUESS = {"local": 0.6, "ssh": 4.0}  # seconds per timing besides the timed run, before any is known


@dataclass(eq=False)
class Trial:
    """One candidate and what became of it."""

    candidate: Candidate
    artifact: Artifact | None = None
    accuracy: Accuracy | None = None
    timings: list[Timing] = field(default_factory=list)  # one per rung reached
    final: list[Timing] = field(default_factory=list)  # the interleaved rounds, for finalists
    status: str = "pending"
    note: str = ""
    loss: float | None = None  # the accuracy axis of the front (ModelLab.accuracy_loss)

    @property
    def timing(self) -> Timing | None:
        return self.timings[-1] if self.timings else None


class Clock:
    """Seconds charged against the budget, by kind of work."""

    def __init__(self, budget_s: float, on_charge: Callable[[float], None] | None = None):
        self.budget_s, self.spent = budget_s, 0.0
        self.by_kind: dict[str, float] = {}
        self.on_charge = on_charge

    def charge(self, seconds: float, kind: str) -> None:
        self.spent += seconds
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + seconds
        if self.on_charge:
            self.on_charge(seconds)


class Search:
    def __init__(self, lab: ModelLab, device, scenario: Scenario, cache: Cache, clock: Clock, objective: str,
                 latency_budget_ms: float | None, rung_seconds: float, inputs_digest: str,
                 report: Callable[[str], None] | None = None):
        self.lab, self.device, self.scenario, self.cache, self.clock = lab, device, scenario, cache, clock
        self.objective, self.latency_budget_ms, self.rung_seconds = objective, latency_budget_ms, rung_seconds
        self.inputs_digest = inputs_digest
        self.report = report or (lambda _: None)
        self.trials: list[Trial] = []
        self.timed = 0  # timings measured in this run (not found in the cache)
        self._charged: set[str] = set()
        self._seen: dict[str, Trial] = {}

    # --- the pieces of work, each charged once per run ---------------------------------------------------------
    def _charge_once(self, key: str, seconds: float, kind: str) -> None:
        if key not in self._charged:
            self._charged.add(key)
            self.clock.charge(seconds, kind)

    def prepare(self, trial: Trial) -> bool:
        """Build and judge ``trial``'s model file; False (with its status set) when it cannot be timed."""
        c = trial.candidate
        trial.artifact = self.lab.artifact(c)
        self._charge_once("build:" + digest(self.lab.variant(c)), trial.artifact.cost_s, "build")
        if trial.artifact.error:
            trial.status, trial.note = "build failed", trial.artifact.error
            return False
        trial.accuracy = self.lab.accuracy(c, trial.artifact)
        self._charge_once("accuracy:" + trial.artifact.sha256, trial.accuracy.cost_s, "accuracy")
        if not trial.accuracy.ok:
            failed = "; ".join(ch.describe() for ch in trial.accuracy.checks if not ch.ok)
            trial.status, trial.note = "inaccurate", failed
            return False
        same = self._seen.get(self.identity(trial))
        if same is not None and same is not trial:
            trial.status, trial.note = "duplicate", f"the same file and settings as {same.candidate.describe()}"
            return False
        self._seen[self.identity(trial)] = trial
        return True

    def identity(self, trial: Trial) -> str:
        """What a timing measures: the file's content, the session and the scenario."""
        c = trial.candidate
        return digest([trial.artifact.sha256, c.part("session"), c.part("scenario"), c.saved_optimized])

    def time(self, trials: list[Trial], duration_s: float, tag: str = "", final: bool = False) -> None:
        """One timing of each trial (cached ones read back); failures mark the trial."""
        pending, keys = [], {}
        for t in trials:
            key = digest([self.identity(t), self.scenario.name, self.scenario.provider, self.scenario.shape_options,
                          self.inputs_digest, self.scenario.seed, WARMUP, round(duration_s, 6), tag])
            keys[id(t)] = key
            record = self.cache.get(self.lab.model_key, "timings", self.device.fingerprint, key)
            if record is None:
                pending.append(t)
                continue
            self._record(t, record, final)
        if not pending:
            return
        results = self.device.measure(self.scenario, [Request(t.candidate, t.artifact.path, duration_s)
                                                      for t in pending])
        for t, result in zip(pending, results):
            self.timed += 1
            if isinstance(result, EdgeDLError):  # not cached: a device that was unreachable may not be next time
                self._record(t, {"error": result.message, "cost_s": 0.0}, final)
                continue
            record = self.cache.put({"timing": result.to_json(), "cost_s": result.cost_s}, self.lab.model_key,
                                    "timings", self.device.fingerprint, keys[id(t)])
            self._record(t, record, final)

    def _record(self, t: Trial, record: dict, final: bool) -> None:
        self.clock.charge(record["cost_s"], "final timing" if final else "timing")
        if record.get("error"):
            t.status, t.note = "timing failed", record["error"]
            return
        (t.final if final else t.timings).append(Timing.from_json(record["timing"]))
        if not final:
            t.status = "timed"

    # --- ranking -------------------------------------------------------------------------------------------
    def feasible(self, timing: Timing) -> bool:
        return self.latency_budget_ms is None or timing.p90_ms <= self.latency_budget_ms

    def rank(self, t: Trial) -> tuple:
        """Lower is better: within the latency budget first, then the objective's speed."""
        timing = t.timing
        speed = -timing.samples_per_s if self.objective == "throughput" else timing.p50_ms
        return (not self.feasible(timing), speed)

    def overhead(self) -> float:
        """Seconds a timing costs besides the timed run (mean of those done so far, else a guess)."""
        done = [(t.cost_s - t.duration_s) for trial in self.trials for t in trial.timings]
        return max(0.0, sum(done) / len(done)) if done else OVERHEAD_GUESS[self.device.kind]

    def best(self) -> Trial | None:
        timed = [t for t in self.trials if t.timing is not None]
        return min(timed, key=self.rank) if timed else None

    # --- the search ------------------------------------------------------------------------------------------
    def explore(self, variants: list[Candidate], sessions: list[Candidate], limit_s: float,
                allowed: Callable[[Candidate], bool]) -> None:
        """First rung, until ``limit_s`` of the budget is spent: in turn, a new model file (``variants``, at the
        first session) and a new session setting (``sessions``) for the model file of the best so far - session
        settings matter little to accuracy and mostly apart from the file, and cost no build."""
        tried: set[Candidate] = set()
        next_variant = 0
        next_session: dict[Candidate, int] = {}
        pending: list[Trial] = []
        batch = BATCH if self.device.kind == "ssh" else 1

        def new_variant() -> Candidate | None:
            nonlocal next_variant
            while next_variant < len(variants):
                c = merge(variants[next_variant], sessions[0]) if sessions else variants[next_variant]
                next_variant += 1
                if c not in tried and allowed(c):
                    return c
            return None

        def new_session() -> Candidate | None:
            best = self.best()
            if best is None:
                return None
            variant = merge(best.candidate, sessions[0]) if sessions else best.candidate
            index = next_session.get(variant, 0)
            while index < len(sessions):
                c = merge(variant, sessions[index])
                index += 1
                if c not in tried and allowed(c):
                    next_session[variant] = index
                    return c
            next_session[variant] = index
            return None

        step = 0
        while self.clock.spent < limit_s:
            c = (new_session() or new_variant()) if step % 2 else (new_variant() or new_session())
            step += 1
            if c is None:
                break
            tried.add(c)
            trial = Trial(c)
            self.trials.append(trial)
            if self.prepare(trial):
                pending.append(trial)
            if len(pending) >= batch:
                self.time(pending, self.rung_seconds)
                pending = []
                self._progress()
        if pending:
            self.time(pending, self.rung_seconds)
        self._progress()

    def halve(self, stop_s: float) -> None:
        """Successive halving: the best third of the timed candidates timed three times longer, again and again,
        while the budget (up to ``stop_s``) allows."""
        population = [t for t in self.trials if t.status == "timed"]
        duration = self.rung_seconds
        for rung in range(1, MAX_RUNGS):
            keep = max(1, math.ceil(len(population) / ETA))
            ranked = sorted(population, key=self.rank)
            survivors, dropped = ranked[:keep], ranked[keep:]
            duration *= ETA
            if len(survivors) < 2 or self.clock.spent + len(survivors) * (duration + self.overhead()) > stop_s:
                break
            for t in dropped:
                t.status, t.note = "pruned", f"not among the best {keep} after rung {rung}"
            self.time(survivors, duration)
            population = [t for t in survivors if t.status == "timed"]
            self._progress()

    def _progress(self) -> None:
        best = self.best()
        if best is not None:
            self.report(f"{len(self.trials)} tried, best so far {best.candidate.describe()} "
                        f"({best.timing.p50_ms:.4g} ms)")


def finalists_affordable(reserve_s: float, rounds: int, overhead: float) -> int:
    """How many configurations (fp32 included) the final rounds can re-measure within ``reserve_s``."""
    return max(2, min(MAX_FINALISTS, int(reserve_s // (rounds * (overhead + MIN_FINAL_SECONDS)))))


def final_duration(budget_left: float, members: int, rounds: int, overhead: float, longest: float) -> float:
    """Seconds per timing of the final rounds: ``longest`` if the reserve allows, else what fits (>= a floor)."""
    fits = budget_left / max(1, members * rounds) - overhead
    return round(max(MIN_FINAL_SECONDS, min(longest, fits)), 3)
