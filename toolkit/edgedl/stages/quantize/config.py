"""Typed quantization settings, the table of modes, and hardware presets as named constructors."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import ShapeOptions
from edgedl.stages.data import DataOptions
from edgedl.stages.machine import X86_MACHINES, CpuReading, this_cpu
from edgedl.stages.side_by_side import MIN_SPEEDUP, SPEED_BATCH, THREADS

MODES = ("dynamic", "static", "fp16", "auto")
FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_TYPES = ("int8", "uint8")
# providers whose hardware runs fp16 natively; fp16 is a candidate in auto mode only for these
# the gate without labels or a metric (measured on the zoo and the shipped real models: see README)
DEFAULT_MIN_AGREEMENT = 98.0
DEFAULT_MIN_SQNR = 20.0
GPU_PROVIDERS = {"cuda", "tensorrt", "rocm", "migraphx", "dml", "webgpu", "CUDAExecutionProvider",
                 "TensorrtExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
                 "DmlExecutionProvider", "WebGpuExecutionProvider"}


def choose(kind: str, value: str, options: tuple[str, ...]) -> str:
    """Validate ``value`` against a table of names, suggesting the nearest one for a typo."""
    key = value.strip().lower()
    if key in options:
        return key
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise EdgeDLError(f"unknown {kind} '{value}'; {hint}choose one of {', '.join(options)}")


def _gpu(provider: str) -> bool:
    return provider.strip().lower() in {p.lower() for p in GPU_PROVIDERS}


def default_reduce_range(cpu: CpuReading | None = None, target_provider: str = "cpu") -> bool:
    """Static int8's weight range when none is given, for where the model is calibrated, judged and timed: on a GPU
    target full 8-bit (its int8 kernels accumulate in 32 bits); on the CPU (``cpu``, default: this one) 7-bit
    weights where onnxruntime's u8s8 kernels saturate with 8-bit ones (x86 without VNNI), as onnxruntime's
    quantization docs advise there, full 8-bit elsewhere."""
    if _gpu(target_provider):
        return False
    return (cpu or this_cpu()).saturates_full_range_weights


def weight_range_note(static: "StaticConfig", preset_name: str | None = None, cpu: CpuReading | None = None,
                      target_provider: str = "cpu") -> str:
    """One line for the report: the static weight range used, and why."""
    cpu = cpu or this_cpu()
    default = default_reduce_range(cpu, target_provider)
    used = "7-bit weights (reduce_range)" if static.reduce_range else "full 8-bit weights"
    if _gpu(target_provider):
        here = f"the target is a GPU ({target_provider}), whose int8 kernels accumulate in 32 bits"
    elif cpu.saturates_full_range_weights:
        here = ("this CPU is x86 without VNNI: onnxruntime's u8s8 kernels multiply with VPMADDUBSW, whose 16-bit "
                "sums saturate with full 8-bit weights")
    elif cpu.machine in X86_MACHINES:
        here = "this CPU has VNNI (int32 dot products): full 8-bit weights do not saturate"
    else:
        here = f"this CPU ({cpu.machine}) has no 16-bit saturation in onnxruntime's int8 kernels"
    if static.reduce_range == default:
        return f"static int8: {used}, the default here - {here}"
    given = f"preset {preset_name}" if preset_name else "the configuration"
    if static.reduce_range:
        return f"static int8: {used}, set by {given}; full 8-bit is the default here - {here}"
    return (f"static int8: {used}, set by {given}, not this CPU's default - {here}, so the accuracy measured here "
            "can read lower than on a CPU with VNNI or on Arm")


@dataclass
class StaticConfig:
    """Static int8 settings: how tensors are calibrated and which integer types carry them."""

    format: str = "qdq"
    per_channel: bool = True
    calibration_method: str = "minmax"
    calibration_samples: int | None = None  # None = the whole calibration split
    activation_type: str = "uint8"
    weight_type: str = "int8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    # 7-bit weights; None: the target's default (``default_reduce_range``), which QuantizeConfig sets: 7-bit on x86
    # without VNNI, else full 8-bit
    reduce_range: bool | None = None
    # histogram settings for entropy/percentile: onnxruntime's entropy default (128 bins, 128 quantized bins)
    # picks the full range, i.e. the same scales as minmax; 2048 bins give the KL search room to clip outliers.
    num_bins: int = 2048
    num_quantized_bins: int = 128
    percentile: float = 99.999

    def __post_init__(self) -> None:
        self.format = choose("--format", self.format, FORMATS)
        self.calibration_method = choose("--calibration-method", self.calibration_method, CALIBRATION_METHODS)
        self.activation_type = choose("--activation-type", self.activation_type, INT8_TYPES)
        self.weight_type = choose("--weight-type", self.weight_type, INT8_TYPES)
        if self.calibration_samples is not None and self.calibration_samples < 1:
            raise EdgeDLError(f"--calibration-samples must be >= 1, got {self.calibration_samples}")
        if self.num_quantized_bins >= self.num_bins:
            raise EdgeDLError("num_quantized_bins must be smaller than num_bins for entropy calibration")
        if not 50.0 < self.percentile <= 100.0:
            raise EdgeDLError(f"percentile must be in (50, 100], got {self.percentile}")


@dataclass
class GateConfig:
    """Accuracy and speed gates.

    With class-id labels the gate judges the top-1 accuracy drop, with a user metric the metric's drop; every
    floor given (agreement with fp32, SQNR, cosine) is judged too. With none of these, one default floor applies:
    top-1 agreement with fp32 for a classifier, else the worst output's SQNR.
    """

    max_accuracy_drop: float = 1.0  # percentage points of top-1 accuracy
    accuracy_gate: bool = True
    metric: str | None = None  # path/to/file.py:function(outputs, reference, labels) -> float, higher is better
    max_metric_drop: float = 1.0  # in the metric's own units
    min_agreement: float | None = None  # % top-1 agreement with the fp32 model
    min_top_k_agreement: float | None = None  # % where fp32's top-1 is among the candidate's top k
    top_k: int = 5
    min_sqnr: float | None = None  # dB, worst output
    min_cosine: float | None = None  # worst output
    default_min_agreement: float = DEFAULT_MIN_AGREEMENT
    default_min_sqnr: float = DEFAULT_MIN_SQNR
    speed_batch: int = SPEED_BATCH
    speed_seconds: float = 0.6  # per model and batch size, split into interleaved rounds
    threads: int = THREADS  # the same intra-op thread count for both models
    require_speedup: bool = False
    min_speedup: float = MIN_SPEEDUP  # "faster" means at least this ratio at speed_batch (medians drift ~5-10 %)
    target_provider: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_accuracy_drop < 0:
            raise EdgeDLError(f"--max-accuracy-drop must be >= 0 points, got {self.max_accuracy_drop}")
        if self.max_metric_drop < 0:
            raise EdgeDLError(f"--max-metric-drop must be >= 0, got {self.max_metric_drop}")
        for name in ("min_agreement", "min_top_k_agreement", "default_min_agreement"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                raise EdgeDLError(f"--{name.replace('_', '-')} is a percentage (0..100), got {value}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise EdgeDLError(f"--min-cosine must be in -1..1, got {self.min_cosine}")
        if self.top_k < 2:
            raise EdgeDLError(f"--top-k must be >= 2, got {self.top_k}")
        if self.speed_batch < 1:
            raise EdgeDLError(f"--speed-batch must be >= 1, got {self.speed_batch}")
        if self.threads < 0:
            raise EdgeDLError(f"--threads must be >= 0 (0 lets onnxruntime choose), got {self.threads}")
        if self.speed_seconds < 0:
            raise EdgeDLError(f"--speed-seconds must be >= 0 (0 skips the speed gate), got {self.speed_seconds}")

    @property
    def gpu_target(self) -> bool:
        return _gpu(self.target_provider)


@dataclass
class QuantizeConfig:
    """Everything `edgedl quantize` does, as one typed value (saved into the output's metadata)."""

    output: Path
    mode: str = "auto"
    static: StaticConfig = field(default_factory=StaticConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    data: DataOptions = field(default_factory=DataOptions)  # default: the model's recipe, else synthetic
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    fp16_keep_io_types: bool = True
    bisect: bool = False  # an int8 candidate that fails the accuracy gate: find nodes to keep in float
    bisect_steps: int = 12  # models built and judged at most, per candidate
    bisect_out: Path | None = None  # the node list written (default: next to the output, .exclude-nodes.txt)
    preset: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.mode = choose("--mode", self.mode, MODES)
        if self.static.reduce_range is None:
            self.static = replace(self.static, reduce_range=default_reduce_range(
                target_provider=self.gates.target_provider))
        if self.output.suffix.lower() != ".onnx":
            raise EdgeDLError(f"output must be a .onnx file, got '{self.output}'; pass -o NAME.onnx")
        if self.bisect_steps < 1:
            raise EdgeDLError(f"--bisect-steps must be >= 1, got {self.bisect_steps}")
        if self.mode == "auto" and self.gates.speed_seconds == 0:
            raise EdgeDLError("--mode auto chooses the fastest accurate candidate: it needs the speed gate "
                              "(--speed-seconds > 0)")
        if self.bisect and self.mode == "fp16":
            raise EdgeDLError("--bisect finds nodes to keep in float for int8: use it with --mode static, dynamic "
                              "or auto")
        if self.bisect and not self.gates.accuracy_gate:
            raise EdgeDLError("--bisect searches for what passes the accuracy gate: drop --no-accuracy-gate")
        if self.bisect_out is not None:
            self.bisect_out = Path(self.bisect_out)

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(output=str(self.output), data=self.data.to_json(), shape_options=self.shape_options.to_json(),
                    bisect_out=str(self.bisect_out) if self.bisect_out else None)
        return data

    # --- hardware presets ------------------------------------------------------------------------------------
    @classmethod
    def x86_vnni(cls, output: Path, **overrides) -> "QuantizeConfig":
        """x86 with AVX512-VNNI / AVX-VNNI: VPDPBUSD multiplies unsigned-8 activations by signed-8 weights, so
        u8 activations x s8 per-channel weights hit the fast path; VNNI accumulates in int32 without the
        16-bit saturation of plain AVX2 u8s8, so reduce_range (7-bit weights) is not needed."""
        static = StaticConfig(format="qdq", per_channel=True, activation_type="uint8", weight_type="int8",
                              reduce_range=False)
        return cls(output=output, static=static, preset="x86-vnni", **overrides)

    @classmethod
    def x86_avx2(cls, output: Path, **overrides) -> "QuantizeConfig":
        """x86 without VNNI (AVX2 only): the u8s8 path goes through VPMADDUBSW, whose 16-bit intermediate can
        saturate with full 8-bit weights; reduce_range keeps weights to 7 bits so results stay exact."""
        static = StaticConfig(format="qdq", per_channel=True, activation_type="uint8", weight_type="int8",
                              reduce_range=True)
        return cls(output=output, static=static, preset="x86-avx2", **overrides)

    @classmethod
    def arm64(cls, output: Path, **overrides) -> "QuantizeConfig":
        """arm64 (Raspberry Pi 4/5, Graviton): onnxruntime's MLAS kernels use the NEON SDOT/UDOT dot-product
        instructions, which want both operands of the same signedness; signed int8 activations and weights (S8S8)
        in QDQ form is onnxruntime's recommended ARM setting, per-channel weights keep conv accuracy."""
        static = StaticConfig(format="qdq", per_channel=True, activation_type="int8", weight_type="int8",
                              activation_symmetric=False, reduce_range=False)
        return cls(output=output, static=static, preset="arm64", **overrides)

    @classmethod
    def jetson(cls, output: Path, **overrides) -> "QuantizeConfig":
        """NVIDIA Jetson through TensorRT: TensorRT only accepts symmetric int8 (zero point 0) for activations and
        weights, reads explicit QDQ graphs, and quantizes weights per output channel; its GPU also runs fp16
        natively, so on the device (--target-provider tensorrt or cuda) auto mode also tries fp16."""
        static = StaticConfig(format="qdq", per_channel=True, activation_type="int8", weight_type="int8",
                              activation_symmetric=True, weight_symmetric=True, reduce_range=False)
        return cls(output=output, static=static, preset="jetson", **overrides)


# preset name -> named constructor; one table, "did you mean" on typos
PRESETS = {
    "x86-vnni": QuantizeConfig.x86_vnni,
    "x86-avx2": QuantizeConfig.x86_avx2,
    "arm64": QuantizeConfig.arm64,
    "jetson": QuantizeConfig.jetson,
}


def preset(name: str, output: Path, **overrides) -> QuantizeConfig:
    return PRESETS[choose("--preset", name, tuple(PRESETS))](output, **overrides)
