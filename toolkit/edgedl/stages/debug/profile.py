"""Per-node times from onnxruntime's profiler, corrected for the profiler's own cost, next to the latency the
same model has unprofiled.

The profiler is not free, and its cost is mostly per node: measured here (onnxruntime 1.32, x86), a profiled
session spends ~2 µs of its own inside every kernel's recorded time (it records each input's and output's type
and shape there, more for more inputs) and ~3 µs between kernels, where an unprofiled executor costs ~0.3 µs per
node. Raw profile times therefore overstate short kernels badly (the zoo MLP at batch 32: 15 µs measured, 35 µs
profiled). So every measurement runs a calibration beside the model, interleaved with it: chains of nodes that do
nothing, profiled (the in-kernel cost, by input count) and unprofiled (the executor's cost per run and per node).
Each model is profiled in one session, then timed plain in the same session once profiling has ended.

    node time      = grouped median of its recorded durations - the profiler's in-kernel cost for its inputs
    predicted      = sum of node times + executor cost (per run + per node)
    measured       = median latency of the same model in a plain session (the loop the speed gate uses)

``predicted`` vs ``measured`` is the check that the breakdown accounts for the time a user pays.

On a busy machine other work takes the CPU away in the middle of runs, at random, and no operator is to blame for
that time: every run also records the process's CPU time, and runs that spent over a tenth of their wall time off
the CPU are left out of both the node times and the measured median (``off_cpu_share`` says how many there were;
on an idle machine none are). When fewer than a tenth kept the CPU, the tenth that kept it best count.

Durations are whole microseconds, truncated (onnxruntime's ``duration_cast``): a recorded ``k`` stands for
``[k, k+1)``, so the median is taken as the median of grouped data (``grouped_median``), which resolves well below
1 µs given many runs, where a plain median of the integers would be off by up to 1 µs per node.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from edgedl._lazy import require
from edgedl.runtime import LatencyStats, Runner, RunnerConfig, measure
from edgedl.stages.profiling import KernelEvent, kernel_events, read_trace, run_spans

CALIBRATION_NODES = 16  # nodes per profiled calibration chain
CALIBRATION_WIDE_INPUTS = 9  # inputs of the wide chain's nodes (QLinearConv and QGemm list 8-9)
ON_CPU_SHARE = 0.9  # a run that had the CPU for less of its wall time was pushed off it by other work


def grouped_median(values) -> float:
    """Median of whole-unit measurements that each stand for ``[k, k+1)``: the lower bound of the median class
    plus the fraction of that class needed to reach half of the samples (0 for no samples)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        return 0.0
    k = np.floor(v[v.size // 2])
    below = float(np.count_nonzero(v < k))
    within = float(np.count_nonzero((v >= k) & (v < k + 1)))
    return float(k + (v.size / 2 - below) / within) if within else float(k)


@dataclass(frozen=True)
class NodeTime:
    """One node of the graph onnxruntime ran (after its own optimizations), timed over many runs."""

    node: str
    op_type: str
    provider: str
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]
    raw_us: float  # grouped median per run of what the profile recorded
    us: float  # raw_us less the profiler's own in-kernel cost (never below 0)
    order: int  # position in execution order

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "provider": self.provider,
                "inputs": [{"type": t, "shape": list(s)} for t, s in self.inputs],
                "outputs": [{"type": t, "shape": list(s)} for t, s in self.outputs],
                "raw_us": round(self.raw_us, 3), "us": round(self.us, 3)}


@dataclass(frozen=True)
class ProfilerCost:
    """What profiling adds inside a kernel's recorded time, and what an unprofiled run costs beyond its kernels."""

    kernel_us: float  # in-kernel profiler cost of a one-input node
    kernel_per_input_us: float  # ... and per further input
    executor_run_us: float  # an unprofiled session.run beyond its nodes: the call, feeds, outputs
    executor_node_us: float  # an unprofiled executor's cost per node

    def in_kernel(self, inputs: int) -> float:
        return self.kernel_us + self.kernel_per_input_us * max(inputs - 1, 0)

    def executor(self, nodes: int) -> float:
        return self.executor_run_us + self.executor_node_us * nodes

    def to_json(self) -> dict:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ModelTimes:
    """A model's node times (execution order), its measured latency and the profiler's view of it."""

    nodes: tuple[NodeTime, ...]
    measured_us: float  # median latency, unprofiled, of the runs that kept the CPU
    measured_all_us: float  # ... of all runs
    profiled_us: float  # median of the profiled session's model_run
    executor_us: float  # the executor's cost for this many nodes, from the calibration
    runs: int  # profiled runs the node times come from
    samples: int  # unprofiled timed runs
    off_cpu_share: float  # share of runs that other work pushed off the CPU (0 on an idle machine)

    @property
    def ops_us(self) -> float:
        return sum(n.us for n in self.nodes)

    @property
    def predicted_us(self) -> float:
        return self.ops_us + self.executor_us

    @property
    def agreement(self) -> float:
        """predicted / measured - 1 (0 = the breakdown accounts for exactly the measured time)."""
        return self.predicted_us / self.measured_us - 1.0 if self.measured_us else 0.0

    def to_json(self) -> dict:
        return {"measured_us": round(self.measured_us, 3), "measured_all_us": round(self.measured_all_us, 3),
                "off_cpu_share": round(self.off_cpu_share, 4), "profiled_us": round(self.profiled_us, 3),
                "ops_us": round(self.ops_us, 3), "executor_us": round(self.executor_us, 3),
                "predicted_us": round(self.predicted_us, 3), "agreement": round(self.agreement, 4),
                "runs": self.runs, "samples": self.samples, "nodes": [n.to_json() for n in self.nodes]}


class Profiled:
    """One model in one session: profiled first (node times), then, once profiling has ended, timed plain (the
    latency users get). One session for both on purpose: two sessions of the same model can differ by ~20 % here
    (where onnxruntime happened to place pre-packed weights), which would be blamed on the operators otherwise.

    Create, ``trace`` and ``close`` inside ``placement.profiling_dir()``: onnxruntime writes the trace into the
    working directory when profiling ends (and when a session that still profiles is closed).
    """

    def __init__(self, model, config: RunnerConfig, warmup: int = 10, profile: bool = True,
                 optimized_path: str | None = None):
        from dataclasses import replace

        self.runner = Runner(model, replace(config, profile=profile, optimized_model_path=optimized_path))
        self.profiling = profile
        self.feeds: dict[str, np.ndarray] = {}
        self.warmup = warmup
        self._warm = False
        self._timed: list[LatencyStats] = []
        self._profiled: list[LatencyStats] = []
        self.trace_runs: tuple[list[list[KernelEvent]], list[int]] = ([], [])

    def feed(self, feeds: Mapping[str, np.ndarray]) -> None:
        """The inputs every run gets (checked against the model once, here)."""
        self.feeds = dict(self.runner.check_inputs(dict(feeds)))

    def _run(self) -> None:
        self.runner.run_unchecked(self.feeds)

    def _warm_up(self) -> None:
        if not self._warm:
            for _ in range(self.warmup):
                self._run()
            self._warm = True

    def profile(self, runs: int) -> None:
        if not self.profiling:
            raise RuntimeError("profiling has ended (or was never on) for this session")
        self._warm_up()
        self._profiled.append(measure(self._run, warmup=0, iterations=runs, cpu_time=True))

    def time(self, seconds: float, at_least: int = 5) -> None:
        if self.profiling:
            raise RuntimeError("time plain runs after trace(): this session still profiles")
        self._warm_up()
        stats = measure(self._run, warmup=1, iterations=None, duration_s=seconds, cpu_time=True)
        if stats.count < at_least:
            stats = measure(self._run, warmup=0, iterations=at_least - stats.count, cpu_time=True)
        self._timed.append(stats)

    @staticmethod
    def _kept(stats: list[LatencyStats]) -> np.ndarray:
        """Which runs count: those that kept the CPU (a busy machine pushes runs off it at random, and no operator
        is to blame for that time); when under a tenth did, the tenth (at least 5) that kept it best."""
        if not stats:
            return np.zeros(0, dtype=bool)
        share = np.concatenate([s.cpu_share() for s in stats])
        need = min(share.size, max(5, share.size // 10))
        mask = share >= ON_CPU_SHARE
        return mask if mask.sum() >= need else share >= np.sort(share)[-need]

    @property
    def measured_us(self) -> float:
        """Median latency of the plain runs that kept the CPU."""
        if not self._timed:
            return 0.0
        samples = np.concatenate([s.samples_ns for s in self._timed])
        return float(np.median(samples[self._kept(self._timed)])) / 1e3

    @property
    def measured_all_us(self) -> float:
        """Median latency of all plain runs (what the speed gate sees, busy machine or not)."""
        return float(np.median(np.concatenate([s.samples_ns for s in self._timed]))) / 1e3 if self._timed else 0.0

    @property
    def samples(self) -> int:
        return int(sum(s.count for s in self._timed))

    @property
    def off_cpu_share(self) -> float:
        """Share of all timed runs (plain and profiled) that lost the CPU for over a tenth of their time."""
        masks = [s.on_cpu(ON_CPU_SHARE) for s in self._timed + self._profiled]
        total = sum(m.size for m in masks)
        return 1.0 - sum(int(m.sum()) for m in masks) / total if total else 0.0

    def trace(self) -> tuple[list[list[KernelEvent]], list[int]]:
        """End profiling (the session runs on, unprofiled); the kernels of each profiled run that kept the CPU
        (warm-up runs dropped) and each such run's model_run time."""
        events = read_trace(self.runner.end_profiling())
        self.profiling = False
        spans = run_spans(events)[self.warmup:]
        starts = [s for s, _ in spans]
        per_run: list[list[KernelEvent]] = [[] for _ in spans]
        for k in kernel_events(events):
            i = bisect.bisect_right(starts, k.start_us) - 1
            if 0 <= i < len(spans) and k.start_us <= spans[i][0] + spans[i][1]:
                per_run[i].append(k)
        kept = self._kept(self._profiled)
        if kept.size != len(spans):  # the trace and our count disagree: keep every run rather than guess
            kept = np.ones(len(spans), dtype=bool)
        self.trace_runs = ([r for r, k in zip(per_run, kept) if k], [d for (_, d), k in zip(spans, kept) if k])
        return self.trace_runs

    def close(self) -> None:
        self.runner.close()


def node_times(per_run: list[list[KernelEvent]], cost: ProfilerCost | None) -> tuple[NodeTime, ...]:
    """Per node: the grouped median over runs of its recorded time per run (0 in runs where it did not execute),
    less the profiler's in-kernel cost for each execution."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(per_run))
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(per_run))
    first: dict[str, tuple[int, KernelEvent]] = {}
    for r, kernels in enumerate(per_run):
        for k in kernels:
            totals[k.node][r] += k.dur_us
            counts[k.node][r] += 1
            if k.node not in first:
                first[k.node] = (len(first), k)
    out = []
    for name, (order, k) in sorted(first.items(), key=lambda kv: kv[1][0]):
        raw = grouped_median(totals[name])
        executions = float(np.median(counts[name]))
        own = cost.in_kernel(len(k.inputs)) * executions if cost else 0.0
        out.append(NodeTime(name, k.op_type, k.provider, k.inputs, k.outputs, raw, max(raw - own, 0.0), order))
    return tuple(out)


def finish(model: Profiled, cost: ProfilerCost) -> ModelTimes:
    """A model's times, once it has been traced and timed."""
    per_run, durations = model.trace_runs
    nodes = node_times(per_run, cost)
    return ModelTimes(nodes=nodes, measured_us=model.measured_us, measured_all_us=model.measured_all_us,
                      profiled_us=float(np.median(durations)) if durations else 0.0,
                      executor_us=cost.executor(len(nodes)), runs=len(per_run), samples=model.samples,
                      off_cpu_share=model.off_cpu_share)


# --- calibration: nodes that do nothing -------------------------------------------------------------------------
def _chain(nodes: int, inputs: int) -> bytes:
    """y = Sum(Sum(x, c, ...), c, ...) on one float: ``nodes`` nodes of ``inputs`` inputs each, ~no compute."""
    onnx = require("onnx")
    from onnx import TensorProto, helper

    graph_nodes, prev = [], "x"
    for i in range(nodes):
        out = "y" if i == nodes - 1 else f"t{i}"
        graph_nodes.append(helper.make_node("Sum", [prev] + ["c"] * (inputs - 1), [out], name=f"n{i}"))
        prev = out
    graph = helper.make_graph(graph_nodes, "edgedl_profiler_calibration",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Calibration:
    """Chains of ``CALIBRATION_NODES`` nodes of 1 and of ``CALIBRATION_WIDE_INPUTS`` inputs, profiled (the
    profiler's in-kernel cost, less what the wider node computes unprofiled) and plain, and a one-node chain (with
    the narrow one: the executor's cost per run and per node), measured in the same rounds as the models so that
    the machine's load hits both alike."""

    def __init__(self, config: RunnerConfig):
        from dataclasses import replace

        # unoptimized: onnxruntime must not fold or fuse the chains away
        config = replace(config, graph_optimization="disable")
        self.narrow = Profiled(_chain(CALIBRATION_NODES, 1), config)
        self.wide = Profiled(_chain(CALIBRATION_NODES, CALIBRATION_WIDE_INPUTS), config)
        self.single = Profiled(_chain(1, 1), config, profile=False)
        for chain in (self.narrow, self.wide, self.single):
            chain.feed({"x": np.ones(1, np.float32)})

    def profile(self, runs: int) -> None:
        for chain in (self.narrow, self.wide):
            chain.profile(runs)

    def trace(self) -> None:
        for chain in (self.narrow, self.wide):
            chain.trace()

    def time(self, seconds: float) -> None:
        for chain in (self.single, self.narrow, self.wide):
            chain.time(seconds)

    def finish(self) -> ProfilerCost:
        narrow = float(np.median([n.raw_us for n in node_times(self.narrow.trace_runs[0], None)]))
        wide = float(np.median([n.raw_us for n in node_times(self.wide.trace_runs[0], None)]))
        per_node = max(self.narrow.measured_us - self.single.measured_us, 0.0) / (CALIBRATION_NODES - 1)
        # a wide Sum also computes more; what it costs unprofiled is not the profiler's
        compute = max(self.wide.measured_us - self.narrow.measured_us, 0.0) / CALIBRATION_NODES
        per_input = max(wide - narrow - compute, 0.0) / (CALIBRATION_WIDE_INPUTS - 1)
        return ProfilerCost(kernel_us=narrow, kernel_per_input_us=per_input,
                            executor_run_us=max(self.single.measured_us - per_node, 0.0), executor_node_us=per_node)

    def close(self) -> None:
        for p in (self.narrow, self.wide, self.single):
            p.close()
