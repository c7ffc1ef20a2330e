"""``edgedl debug speed FLOAT.onnx QUANT.onnx``: why an int8 model is slower (or faster) than its float original,
operator by operator, and what to change on this CPU.

Flow: both models and the profiler's calibration run in turns on the same feeds, with the speed gate's session
settings, first profiled, then plain (``profile``) -> time per kernel that ran -> each kernel
attributed to the float-model node it implements (onnxruntime and the quantizer name what they create after the
node or tensor it came from) -> one row per float-model operator, float vs int8 -> findings -> ``advice``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgedl._lazy import require
from edgedl.console import progress
from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import ShapeOptions, Signature
from edgedl.stages.debug import advice as advice_rules
from edgedl.stages.debug.advice import QDQ_OPS, Advice, CpuFeatures, Findings, Loser, base_op
from edgedl.stages.debug.profile import Calibration, ModelTimes, NodeTime, Profiled, ProfilerCost, finish
from edgedl.stages.profiling import profiling_dir
from edgedl.stages.side_by_side import MIN_SPEEDUP, SPEED_BATCH, THREADS, adapt, runner_config

DEFAULT_BATCH = SPEED_BATCH  # explain what the speed gate judges
DEFAULT_THREADS = THREADS
# int8 kernel -> (position of its weight input in the graph, whether it quantizes its activation itself to uint8)
INTEGER_KERNELS = {
    "ConvInteger": (1, False), "MatMulInteger": (1, False), "QLinearConv": (3, False), "QLinearMatMul": (3, False),
    "QGemm": (3, False), "MatMulIntegerToFloat": (1, False), "QAttention": (1, False),
    "DynamicQuantizeMatMul": (1, True), "DynamicQuantizeLSTM": (1, True),
}
LAYOUT_OPS = ("ReorderInput", "ReorderOutput")  # onnxruntime's NCHWc layout changes
RESOLUTION_US = 0.5  # differences below this are the profile's noise (its calibrated correction varies this much)
_SHORT_TYPES = {"float": "f32", "float16": "f16", "double": "f64", "bfloat16": "bf16", "uint8": "u8", "int8": "s8",
                "uint16": "u16", "int16": "s16", "int32": "i32", "int64": "i64", "bool": "b8"}
_ANCHORS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # onnxruntime fuses activations into these


def _short(dtype: str | None) -> str:
    return _SHORT_TYPES.get(dtype or "", dtype or "?")


@dataclass(frozen=True)
class SpeedConfig:
    float_model: Path
    quant_model: Path
    batch: int = DEFAULT_BATCH
    threads: int = DEFAULT_THREADS
    runs: int = 300  # profiled runs per model
    seconds: float = 1.0  # unprofiled timing per model
    rounds: int = 20  # interleaved rounds the runs and seconds are split into (short: load hits all alike)
    seed: int = 0
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)
    provider: str = "cpu"
    min_speedup: float = MIN_SPEEDUP

    def __post_init__(self) -> None:
        for what, path in (("float model", self.float_model), ("int8 model", self.quant_model)):
            if not Path(path).is_file():
                raise EdgeDLError(f"{what} not found: {path}; pass the path to an .onnx file")
        if self.batch < 1:
            raise EdgeDLError(f"batch size must be >= 1, got {self.batch}")
        if self.threads < 0:
            raise EdgeDLError(f"thread count must be >= 0 (0 lets onnxruntime choose), got {self.threads}")
        if self.rounds < 1 or self.runs < self.rounds:
            raise EdgeDLError(f"profile at least one run per round ({self.rounds} rounds), got {self.runs} runs")
        if not self.seconds > 0:
            raise EdgeDLError(f"timing seconds must be > 0, got {self.seconds}")


# --- which float-model node a kernel implements -----------------------------------------------------------------
class SourceGraph:
    """The float model's nodes and tensors, to attribute kernels by the names onnxruntime and the quantizer give."""

    def __init__(self, model):
        graph = model.graph
        self.order = [n.name for n in graph.node if n.name]
        self.op_of = {n.name: n.op_type for n in graph.node if n.name}
        self.inputs_of = {n.name: [i for i in n.input if i] for n in graph.node if n.name}
        self.producer = {o: n.name for n in graph.node if n.name for o in n.output if o}
        self.consumers: dict[str, list[str]] = {}
        for n in graph.node:
            for i in n.input:
                if i and n.name:
                    self.consumers.setdefault(i, []).append(n.name)
        tensors = set(self.producer) | set(self.consumers)
        self._nodes = sorted(self.op_of, key=len, reverse=True)
        self._tensors = sorted(tensors, key=len, reverse=True)

    @staticmethod
    def _longest(name: str, candidates: list[str]) -> str | None:
        for c in candidates:  # longest first
            if name == c or name.startswith(c + "_"):
                return c
        return None

    def _fused_anchor(self, node: str, kernel_op: str) -> str:
        """A fused Conv+Relu is named after the Relu's output: walk up to the op the kernel really is."""
        want = base_op(kernel_op)
        if want not in _ANCHORS:
            return node
        current = node
        for _ in range(3):
            if self.op_of[current] == want or {self.op_of[current], want} == {"Gemm", "MatMul"}:
                return current
            upstream = [self.producer[t] for t in self.inputs_of[current] if t in self.producer]
            if not upstream:
                break
            current = upstream[0]
        return node

    def origin(self, kernel: str, kernel_op: str) -> str | None:
        name = kernel.removeprefix("fused ")
        if name in self.op_of:
            return name
        tensor = self._longest(name, self._tensors)
        if kernel_op in ("QuantizeLinear", "DynamicQuantizeLinear") and tensor in self.consumers:
            return self.consumers[tensor][0]  # quantizing an input is the cost of the op that reads it
        node = self._longest(name, self._nodes)
        if node is not None:
            return node
        if tensor in self.producer:
            return self._fused_anchor(self.producer[tensor], kernel_op)
        if tensor in self.consumers:
            return self.consumers[tensor][0]
        return None


def weight_types(optimized_model) -> dict[str, str]:
    """Node of onnxruntime's optimized graph -> element type of its weight, for integer kernels (the profile leaves
    out weights that onnxruntime pre-packed)."""
    from onnx import helper

    inits = {i.name: helper.tensor_dtype_to_np_dtype(i.data_type).name for i in optimized_model.graph.initializer}
    out = {}
    for node in optimized_model.graph.node:
        spec = INTEGER_KERNELS.get(node.op_type)
        if spec and len(node.input) > spec[0] and node.input[spec[0]] in inits:
            out[node.name] = inits[node.input[spec[0]]]
    return out


@dataclass(frozen=True)
class Kernel:
    """A kernel that ran, timed, with the float-model node it implements."""

    node: str
    op_type: str
    provider: str
    signature: str  # element types: activation (and weight) - u8s8, s8s8, f32, u8
    category: str  # compute, quantize (Q/DQ), layout (added by onnxruntime)
    origin: str | None
    us: float
    raw_us: float

    @property
    def integer(self) -> bool:
        return self.op_type in INTEGER_KERNELS

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "provider": self.provider, "signature": self.signature,
                "category": self.category, "origin": self.origin, "us": round(self.us, 3),
                "raw_us": round(self.raw_us, 3)}


def _kernel(t: NodeTime, graph: SourceGraph, weights: dict[str, str]) -> Kernel:
    spec = INTEGER_KERNELS.get(t.op_type)
    activation = t.inputs[0][0] if t.inputs else None
    if spec:
        signature = ("u8" if spec[1] else _short(activation)) + _short(weights.get(t.node))
    else:
        signature = _short(activation)
    origin = graph.origin(t.node, t.op_type)
    category = ("quantize" if t.op_type in QDQ_OPS else
                "layout" if t.op_type in LAYOUT_OPS or (t.op_type == "Transpose" and origin is None) else "compute")
    return Kernel(t.node, t.op_type, t.provider, signature, category, origin, t.us, t.raw_us)


@dataclass(frozen=True)
class ModelSpeed:
    path: Path
    times: ModelTimes
    kernels: tuple[Kernel, ...]

    @property
    def qdq_us(self) -> float:
        return sum(k.us for k in self.kernels if k.category == "quantize")

    def to_json(self) -> dict:
        data = self.times.to_json()
        data.pop("nodes")
        return {"path": str(self.path), **data, "qdq_us": round(self.qdq_us, 3),
                "kernels": [k.to_json() for k in self.kernels]}


@dataclass(frozen=True)
class OperatorRow:
    """One float-model operator (or kernels onnxruntime added, ``node`` None): its kernels in each model."""

    node: str | None
    op_type: str
    float_kernels: tuple[Kernel, ...]
    int8_kernels: tuple[Kernel, ...]

    @property
    def float_us(self) -> float:
        return sum(k.us for k in self.float_kernels)

    @property
    def int8_us(self) -> float:
        return sum(k.us for k in self.int8_kernels)

    @property
    def qdq_us(self) -> float:
        return sum(k.us for k in self.int8_kernels if k.category == "quantize")

    @property
    def delta_us(self) -> float:
        return self.int8_us - self.float_us

    @staticmethod
    def main(kernels: tuple[Kernel, ...]) -> Kernel | None:
        compute = [k for k in kernels if k.category == "compute"] or list(kernels)
        return max(compute, key=lambda k: (k.integer, k.us)) if compute else None

    @staticmethod
    def describe(kernels: tuple[Kernel, ...]) -> str:
        main = OperatorRow.main(kernels)
        if main is None:
            return "-"
        rest = len(kernels) - 1
        return f"{main.op_type} {main.signature}" + (f" +{rest}" if rest else "")

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "float_us": round(self.float_us, 3),
                "int8_us": round(self.int8_us, 3), "qdq_us": round(self.qdq_us, 3),
                "delta_us": round(self.delta_us, 3), "float_kernel": self.describe(self.float_kernels),
                "int8_kernel": self.describe(self.int8_kernels),
                "float_kernels": [k.node for k in self.float_kernels],
                "int8_kernels": [k.node for k in self.int8_kernels]}


def operator_rows(graph: SourceGraph, float_kernels: tuple[Kernel, ...],
                  int8_kernels: tuple[Kernel, ...]) -> tuple[OperatorRow, ...]:
    """Rows in the float graph's order; kernels no node explains follow, one row per op type."""
    def key(k: Kernel) -> tuple[str | None, str]:
        return (k.origin, graph.op_of[k.origin]) if k.origin else (None, k.op_type)

    groups: dict[tuple[str | None, str], tuple[list, list]] = {}
    for side, kernels in ((0, float_kernels), (1, int8_kernels)):
        for k in kernels:
            groups.setdefault(key(k), ([], []))[side].append(k)
    position = {name: i for i, name in enumerate(graph.order)}
    ordered = sorted(groups, key=lambda g: (g[0] is None, position.get(g[0], 0), g[1]))
    return tuple(OperatorRow(node, op, tuple(groups[(node, op)][0]), tuple(groups[(node, op)][1]))
                 for node, op in ordered)


@dataclass(frozen=True)
class SpeedReport:
    float: ModelSpeed
    int8: ModelSpeed
    rows: tuple[OperatorRow, ...]
    batch: int
    threads: int
    provider: str
    shapes: dict
    cpu: CpuFeatures
    profiler: ProfilerCost
    findings: Findings
    advice: tuple[Advice, ...]

    @property
    def speedup(self) -> float:
        """float latency / int8 latency, measured (> 1: int8 is faster)."""
        return self.float.times.measured_us / self.int8.times.measured_us if self.int8.times.measured_us else 0.0

    @property
    def verdict(self) -> str:
        if self.speedup >= self.findings.min_speedup:
            return "faster"
        return "slower" if self.speedup < 1 / self.findings.min_speedup else "about the same"

    @property
    def losers(self) -> tuple[OperatorRow, ...]:
        """Operators that cost more in int8 by more than the profile resolves, the worst first."""
        return tuple(sorted((r for r in self.rows if r.delta_us > RESOLUTION_US), key=lambda r: -r.delta_us))

    def explanation(self) -> tuple[str, ...]:
        f, q = self.float.times, self.int8.times
        ratio = self.speedup
        how = f"{ratio:.2f}x as fast as" if ratio >= 1 or ratio == 0 else f"{1 / ratio:.2f}x slower than"
        lines = [f"int8 is {how} float at batch {self.batch} ({q.measured_us / 1e3:.3f} ms vs "
                 f"{f.measured_us / 1e3:.3f} ms, medians of interleaved runs, {self.threads} thread(s))"]
        loss = sum(r.delta_us for r in self.losers)
        if self.losers and ratio < self.findings.min_speedup:
            parts = []
            for r in [r for r in self.losers if r.delta_us >= 0.05 * loss][:3]:
                share = f", {r.delta_us / loss:.0%} of the loss" if loss > 0 else ""
                what = (f"{r.node} ({r.op_type}: {self.describe_pair(r)})" if r.node else
                        f"{r.op_type} kernels added by onnxruntime")
                parts.append(f"{what} {r.int8_us:,.1f} µs vs {r.float_us:,.1f} µs{share}")
            lines.append("where int8 loses: " + "; ".join(parts))
        for kernel in sorted({l.int8_kernel for l in self.findings.losers} & set(advice_rules.SLOW_KERNELS)):
            lines.append(f"why {kernel} is slow: {advice_rules.SLOW_KERNELS[kernel][0]}")
        lines.append(f"quantize/dequantize kernels: {self.int8.qdq_us:.1f} µs "
                     f"({self.int8.qdq_us / max(q.ops_us, 1e-9):.0%} of the int8 model's operator time)")
        return tuple(lines)

    @staticmethod
    def describe_pair(row: OperatorRow) -> str:
        return f"{OperatorRow.describe(row.float_kernels)} -> {OperatorRow.describe(row.int8_kernels)}"

    def checks(self) -> dict:
        """Per model: operators + executor (predicted) against the measured median."""
        return {name: {"ops_us": round(m.times.ops_us, 3), "executor_us": round(m.times.executor_us, 3),
                       "predicted_us": round(m.times.predicted_us, 3), "measured_us": round(m.times.measured_us, 3),
                       "agreement": round(m.times.agreement, 4)}
                for name, m in (("float", self.float), ("int8", self.int8))}

    def to_json(self) -> dict:
        return {
            "float_model": str(self.float.path), "int8_model": str(self.int8.path), "batch": self.batch,
            "threads": self.threads, "provider": self.provider, "shapes": self.shapes,
            "speedup": round(self.speedup, 4), "verdict": self.verdict,
            "explanation": list(self.explanation()),
            "losers": [r.node or r.op_type for r in self.losers],
            "operators": [r.to_json() for r in self.rows],
            "check": self.checks(),
            "advice": [a.to_json() for a in self.advice],
            "findings": asdict(self.findings),
            "cpu": self.cpu.to_json(), "profiler_cost": self.profiler.to_json(),
            "float": self.float.to_json(), "int8": self.int8.to_json(),
        }


def findings(report_rows: tuple[OperatorRow, ...], float_speed: ModelSpeed, int8_speed: ModelSpeed,
             config: SpeedConfig, has_data: bool) -> Findings:
    """What ``advice`` needs: losers (worst first), heavy ops still in float, the Q/DQ share, the kernels."""
    int8_total = max(int8_speed.times.ops_us, 1e-9)
    losers = []
    for r in sorted(report_rows, key=lambda r: -r.delta_us):
        main = OperatorRow.main(r.int8_kernels)
        if r.node is None or main is None or r.delta_us <= RESOLUTION_US:
            continue
        losers.append(Loser(r.node, r.op_type, main.op_type, round(r.float_us, 3), round(r.int8_us, 3)))
    still_float = []
    for r in report_rows:
        compute = [k for k in r.int8_kernels if k.category == "compute"]
        if (r.node is not None and compute and not any(k.integer or k.signature in ("u8", "s8") for k in compute)
                and r.int8_us >= advice_rules.HEAVY_SHARE * int8_total):
            still_float.append((r.node, r.op_type, round(r.int8_us, 3)))
    speedup = float_speed.times.measured_us / int8_speed.times.measured_us if int8_speed.times.measured_us else 0.0
    return Findings(model=str(config.float_model), int8_model=str(config.quant_model), speedup=round(speedup, 4),
                    min_speedup=config.min_speedup, batch=config.batch, threads=config.threads, losers=tuple(losers),
                    still_float=tuple(still_float),
                    qdq_share=round(int8_speed.qdq_us / int8_total, 4),
                    int8_kernels=tuple(sorted({k.op_type for k in int8_speed.kernels})), has_data=has_data)


def _same_inputs(a, b, float_path: Path, quant_path: Path) -> None:
    names_a, names_b = [i.name for i in a.inputs], [i.name for i in b.inputs]
    if sorted(names_a) != sorted(names_b):
        raise EdgeDLError(f"{quant_path.name} is not a quantized {float_path.name}: its inputs are "
                          f"{', '.join(names_b)}, the float model's {', '.join(names_a)}; pass the float model first "
                          "and the int8 model made from it second")


def speed(config: SpeedConfig, show_progress: bool = True) -> SpeedReport:
    onnx = require("onnx")
    float_path, quant_path = Path(config.float_model), Path(config.quant_model)
    try:
        graph = SourceGraph(onnx.load(str(float_path), load_external_data=False))
    except Exception as exc:  # not an ONNX file
        raise EdgeDLError(f"cannot read {float_path} as an ONNX model: {exc}") from exc
    session = runner_config(config.threads, config.provider)
    # absolute: inside the profiling directory the working directory is another
    float_abs, quant_abs = str(float_path.resolve()), str(quant_path.resolve())
    per_round = math.ceil(config.runs / config.rounds)
    seconds = config.seconds / config.rounds
    with profiling_dir() as tmp:
        opened: list = []
        try:
            fm = Profiled(float_abs, session, optimized_path=str(tmp / "float.optimized.onnx"))
            opened.append(fm)
            qm = Profiled(quant_abs, session, optimized_path=str(tmp / "int8.optimized.onnx"))
            opened.append(qm)
            _same_inputs(fm.runner, qm.runner, float_path, quant_path)
            feeds = Signature.of_runner(fm.runner, config.shape_options).feeds(config.batch, config.seed)
            fm.feed(adapt(fm.runner, feeds))
            qm.feed(adapt(qm.runner, feeds))
            calibration = Calibration(session)
            opened.append(calibration)
            # profiled rounds, then plain rounds in the same sessions (profiling cannot be switched back on);
            # within each, the models and the calibration take turns, neither model always first
            with progress(f"profiling {float_path.name} vs {quant_path.name}", 2 * config.rounds,
                          enabled=show_progress) as advance:
                for r in range(config.rounds):
                    for m in ((fm, qm) if r % 2 == 0 else (qm, fm)):
                        m.profile(per_round)
                    calibration.profile(max(10, per_round // 2))
                    advance(info=f"profiled round {r + 1}")
                for m in (fm, qm, calibration):
                    m.trace()
                for r in range(config.rounds):
                    for m in ((fm, qm) if r % 2 == 0 else (qm, fm)):
                        m.time(seconds)
                    calibration.time(seconds / 10)
                    advance(info=f"timed round {r + 1}")
            cost = calibration.finish()
            times = {"float": finish(fm, cost), "int8": finish(qm, cost)}
            weights = {name: weight_types(onnx.load(str(tmp / f"{name}.optimized.onnx"))) for name in times}
            has_data = "recipe" in fm.runner.metadata
        finally:
            for item in opened:
                item.close()
    speeds = {name: ModelSpeed(path, times[name], tuple(_kernel(t, graph, weights[name]) for t in times[name].nodes))
              for name, path in (("float", float_path), ("int8", quant_path))}
    rows = operator_rows(graph, speeds["float"].kernels, speeds["int8"].kernels)
    found = findings(rows, speeds["float"], speeds["int8"], config, has_data)
    cpu = advice_rules.detect_cpu()
    return SpeedReport(float=speeds["float"], int8=speeds["int8"], rows=rows, batch=config.batch,
                       threads=config.threads, provider=config.provider,
                       shapes={k: list(v.shape) for k, v in feeds.items()}, cpu=cpu, profiler=cost,
                       findings=found, advice=advice_rules.advise(cpu, found))
