"""What to change so that int8 runs faster here: this CPU's int8 features, onnxruntime's CPU int8 kernels, and the
advice that follows from what a speed profile found.

Standard library only: ``python -m edgedl.stages.debug.advice [FINDINGS.json]`` prints a device's features and the
advice for it as JSON - on the device itself, or under emulation with a chosen CPU
(``qemu-aarch64 -cpu cortex-a53`` has no dot-product instructions, ``-cpu max`` has them). On AArch64 the features
come from the auxiliary vector (what this process may execute, and what onnxruntime dispatches on), elsewhere
from /proc/cpuinfo.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgedl.stages.machine import ARM64_MACHINES, X86_MACHINES, Int8Support, read_cpu

# float op -> {quantize mode: the int8 kernel onnxruntime's CPU provider runs for it (after its fusions)}
INT8_KERNELS: dict[str, dict[str, str]] = {
    "Conv": {"static": "QLinearConv", "dynamic": "ConvInteger"},
    "MatMul": {"static": "QLinearMatMul", "dynamic": "DynamicQuantizeMatMul"},
    "Gemm": {"static": "QGemm", "dynamic": "DynamicQuantizeMatMul"},
    "LSTM": {"dynamic": "DynamicQuantizeLSTM"},
    "Attention": {"dynamic": "QAttention"},  # the com.microsoft one; the ONNX-domain Attention has none
}
# kernels onnxruntime runs for a float op under another name (fusions, layouts, unfused integer ops)
KERNEL_OF = {
    "FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul", "MatMulInteger": "MatMul",
    "NhwcMaxPool": "MaxPool", "QLinearAveragePool": "AveragePool", "QLinearGlobalAveragePool": "GlobalAveragePool",
    "QLinearAdd": "Add", "QLinearMul": "Mul", "QLinearConcat": "Concat", "QLinearSigmoid": "Sigmoid",
    "QLinearLeakyRelu": "LeakyRelu", "QLinearSoftmax": "Softmax", "MatMulIntegerToFloat": "MatMul",
    **{kernel: op for op, modes in INT8_KERNELS.items() for kernel in modes.values()},
}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# int8 kernels that are slow on CPUs: why, the quantize mode whose kernel is fast, and what that mode runs instead
SLOW_KERNELS: dict[str, tuple[str, str, str]] = {
    "ConvInteger": ("onnxruntime's ConvInteger runs one im2col and integer GEMM per image (and group) with weights "
                    "that are not pre-packed, needs a DynamicQuantizeLinear of its input, and leaves int32 that a "
                    "float Cast, Mul and Add rescale; the float Conv runs the whole batch as a blocked (NCHWc) direct "
                    "convolution with pre-packed filters", "static",
                    "QLinearConv: pre-packed weights, requantization fused"),
    "MatMulInteger": ("MatMulInteger was left unfused: its int32 result is rescaled by separate float Cast and Mul "
                      "kernels (onnxruntime fuses the usual pattern into DynamicQuantizeMatMul)", "static",
                      "QLinearMatMul/QGemm with requantization fused"),
}
# CPU -> the `edgedl quantize` preset whose int8 types suit it (the presets live in edgedl.stages.quantize.config)
PRESET_FOR_CPU = {("x86", "fast"): "x86-vnni", ("x86", "basic"): "x86-avx2", ("arm64", "fast"): "arm64",
                  ("arm64", "basic"): "arm64"}
_ADVERB = {"static": "statically", "dynamic": "dynamically"}
HEAVY_SHARE = 0.2  # an op taking this share of the int8 model's time is worth a remark
QDQ_SHARE = 0.15  # quantize/dequantize taking this share of the int8 model's time is worth a remark
DOMINANT_SHARE = 0.5  # one operator with more than this share of what int8 loses is worth keeping in float


def base_op(kernel: str) -> str:
    """The float op a kernel implements (ConvInteger -> Conv, FusedGemm -> Gemm, Relu -> Relu)."""
    return KERNEL_OF.get(kernel, kernel)


@dataclass(frozen=True)
class CpuFeatures:
    machine: str
    model: str
    flags: tuple[str, ...]  # the features that decide onnxruntime's kernels
    source: str  # where the flags were read
    int8: Int8Support | None

    @property
    def family(self) -> str | None:
        if self.machine in X86_MACHINES:
            return "x86"
        if self.machine in ARM64_MACHINES:
            return "arm64"
        return None

    @property
    def preset(self) -> str | None:
        return PRESET_FOR_CPU.get((self.family, self.int8.level)) if self.int8 else None

    def describe(self) -> str:
        flags = " ".join(self.flags) or "none"
        return f"{self.model or '?'} ({self.machine}; {flags}; from {self.source})"

    def to_json(self) -> dict:
        return {"machine": self.machine, "model": self.model, "flags": list(self.flags), "source": self.source,
                "int8": asdict(self.int8) if self.int8 else None, "preset": self.preset}


def detect_cpu(cpuinfo_path: str | Path = "/proc/cpuinfo", auxv_path: str | Path = "/proc/self/auxv",
               machine: str | None = None) -> CpuFeatures:
    cpu = read_cpu(cpuinfo_path, auxv_path, machine)
    return CpuFeatures(cpu.machine, cpu.model, cpu.flags, cpu.source, cpu.int8)


@dataclass(frozen=True)
class Loser:
    """A float-model operator that costs more in the int8 model."""

    node: str
    op_type: str
    int8_kernel: str  # the main kernel it ran as in the int8 model
    float_us: float
    int8_us: float


@dataclass(frozen=True)
class Findings:
    """What a float-vs-int8 profile found, as ``advise`` needs it."""

    model: str  # the float model (commands quantize it again)
    int8_model: str  # the int8 model profiled (an advised output never replaces it)
    speedup: float  # float latency / int8 latency (measured)
    min_speedup: float  # what the speed gate calls faster
    batch: int
    threads: int
    losers: tuple[Loser, ...] = ()  # worst first
    still_float: tuple[tuple[str, str, float], ...] = ()  # heavy ops that run float in the int8 model: node, op, us
    qdq_share: float = 0.0  # quantize/dequantize kernels' share of the int8 model's time
    int8_kernels: tuple[str, ...] = ()
    has_data: bool = True  # the float model names a recipe, so `edgedl quantize` finds its data by itself

    @classmethod
    def from_json(cls, data: dict) -> "Findings":
        data = dict(data)
        data["losers"] = tuple(Loser(**x) for x in data.get("losers", ()))
        data["still_float"] = tuple(tuple(x) for x in data.get("still_float", ()))
        data["int8_kernels"] = tuple(data.get("int8_kernels", ()))
        return cls(**data)


@dataclass(frozen=True)
class Advice:
    kind: str  # fix (a command to run), note, cpu
    text: str
    command: tuple[str, ...] = field(default=())

    def command_line(self) -> str:
        return shlex.join(self.command) if self.command else ""

    def to_json(self) -> dict:
        return {"kind": self.kind, "text": self.text, "command": list(self.command),
                "command_line": self.command_line()}


def int8_may_not_win(cpu: CpuFeatures) -> bool:
    """No int8 dot-product instructions (x86 without VNNI, Arm without asimddp): int8 kernels there often only
    match float, so an advised int8 model may honestly not pass a speed gate."""
    return cpu.int8 is not None and cpu.int8.level != "fast"


def quantize_command(f: Findings, cpu: CpuFeatures, mode: str, tag: str, *extra: str) -> tuple[str, ...]:
    """`edgedl quantize --mode auto` with this CPU's preset, judged for speed at the batch profiled.

    ``mode`` is the mode whose kernels the advice is about; the command is ``--mode auto`` on every CPU: it builds
    that candidate and the other int8 mode the same way and writes one only when it measures it faster, else keeps
    fp32 and says so. A CPU's features do not promise a speed-up: on an AMD EPYC with AVX-512 VNNI (2026-12) the
    CNN's static int8, rid of ConvInteger, ran 0.83-1.18x its fp32 at batch 32 from one run to the next."""
    tag = tag.replace(mode, "int8", 1)  # auto may write either int8 mode
    model = Path(f.model)
    out = model.with_name(f"{model.stem}.{tag}.onnx")
    if out.resolve() == Path(f.int8_model).resolve():
        out = model.with_name(f"{model.stem}.{tag}-2.onnx")
    cmd = ["edgedl", "quantize", str(model), "-o", str(out), "--mode", "auto"]
    if cpu.preset:
        cmd += ["--preset", cpu.preset]
    cmd += [*extra, "--speed-batch", str(f.batch), "--threads", str(f.threads)]
    return tuple(cmd)


def _speed_caveat(cpu: CpuFeatures) -> str:
    """What the advised command does about speed on this CPU, said with the fix."""
    auto = ("--mode auto writes the int8 model only if it measures faster, else keeps fp32 and says so; add "
            "--require-speedup to make that an error")
    if not int8_may_not_win(cpu):
        return f". The speed gate decides ({auto})"
    missing = "VNNI" if cpu.family == "x86" else "asimddp"
    return (f". This CPU has no int8 dot-product instructions ({missing}): expect int8 to match float here more "
            f"than beat it, so the command lets the speed gate decide ({auto})")


def _cpu_advice(cpu: CpuFeatures) -> Advice:
    if cpu.int8 is None:
        return Advice("cpu", f"{cpu.describe()}: edgedl knows no int8 rules for this architecture; measure")
    text = f"{cpu.describe()}: {cpu.int8.detail}"
    if cpu.preset:
        text += f"; the quantize preset for it is {cpu.preset}"
    if int8_may_not_win(cpu):
        text += ". Expect int8 to save size more than time here: keep fp32 if the speed gate rejects int8"
    return Advice("cpu", text)


def _share(loser: Loser, losers: tuple[Loser, ...]) -> float:
    """``loser``'s share of what all of them lose in int8."""
    loss = sum(x.int8_us - x.float_us for x in losers)
    return (loser.int8_us - loser.float_us) / loss if loss > 0 else 0.0


def advise(cpu: CpuFeatures, f: Findings) -> tuple[Advice, ...]:
    """Fixes first (each a command whose speed gate checks it), then notes, then what the CPU offers."""
    out: list[Advice] = []
    data_note = "" if f.has_data else " (the model names no recipe: add --data RECIPE or --calibration/--eval files)"
    slow_seen = set()
    for loser in f.losers:
        slow = SLOW_KERNELS.get(loser.int8_kernel)
        if slow is None or loser.int8_kernel in slow_seen:
            continue
        slow_seen.add(loser.int8_kernel)
        _, mode, instead = slow
        same = [x for x in f.losers if x.int8_kernel == loser.int8_kernel]
        cost = sum(x.int8_us - x.float_us for x in same)
        op = base_op(loser.int8_kernel)
        out.append(Advice("fix", f"{len(same)} {op} node(s) run as {loser.int8_kernel} and cost {cost:,.0f} µs more "
                                 f"than in float. Quantize them {_ADVERB[mode]} (QDQ, per-channel weights"
                                 f"{', preset ' + cpu.preset if cpu.preset else ''}): onnxruntime then runs "
                                 f"{instead}{data_note}{_speed_caveat(cpu)}", quantize_command(f, cpu, mode, mode)))
        out.append(Advice("fix", f"or keep {op} in float and quantize the rest (dynamic or static: the speed gate "
                                 f"picks){data_note}",
                          quantize_command(f, cpu, "dynamic", f"dynamic-float-{op.lower()}", "--exclude-op-types",
                                           op)))
    for node, op, us in f.still_float:
        modes = INT8_KERNELS.get(op, {})
        if modes:
            mode = "static" if "static" in modes else "dynamic"
            kernel = modes[mode]
            out.append(Advice("fix", f"{node} ({op}) still runs in float in the int8 model ({us:.0f} µs): "
                                     f"onnxruntime has an int8 {op} kernel only in {mode} mode ({kernel}){data_note}"
                                     f"{_speed_caveat(cpu)}",
                              quantize_command(f, cpu, mode, mode)))
        else:
            out.append(Advice("note", f"{node} ({op}) runs in float in both models ({us:.0f} µs): onnxruntime has "
                                      f"no int8 CPU kernel for {op}, so quantization cannot speed it up; the "
                                      "Quantize/Dequantize pairs around it only add cost"))
    if f.qdq_share >= QDQ_SHARE:
        out.append(Advice("note", f"Quantize/Dequantize kernels take {f.qdq_share:.0%} of the int8 model's time: "
                                  "every float/int8 boundary is a pass over a tensor. Fewer boundaries help: "
                                  "quantize the float ops between int8 ops too, or keep short int8 stretches in "
                                  "float (--exclude-nodes)"))
    if f.speedup >= f.min_speedup:
        out.append(Advice("note", f"int8 is {f.speedup:.2f}x as fast as float here: the speed gate "
                                  f"(--require-speedup, >= {f.min_speedup:g}x) accepts that"))
    elif not out and f.losers and _share(f.losers[0], f.losers) > DOMINANT_SHARE:
        worst = f.losers[0]
        out.append(Advice("fix", f"{worst.node} ({worst.op_type}) loses most of the time: as {worst.int8_kernel} "
                                 f"it takes {worst.int8_us:,.1f} µs, {worst.float_us:,.1f} µs in float. Keep it in "
                                 "float and quantize the rest; the float/int8 boundary that adds "
                                 f"costs a quantize and a dequantize, so the speed gate decides{data_note}",
                          quantize_command(f, cpu, "static", "int8-keep-float", "--exclude-nodes", worst.node)))
    elif not out:
        out.append(Advice("note", f"no single kernel explains it: at batch {f.batch} the kernels are short and int8 "
                                  "pays fixed costs (quantizing inputs, rescaling outputs) that a larger batch "
                                  "amortizes; profile a larger --batch, or keep fp32"))
    out.append(_cpu_advice(cpu))
    return tuple(out)


def main(argv: list[str]) -> int:
    cpu = detect_cpu()
    result: dict = {"cpu": cpu.to_json()}
    if argv:
        findings = Findings.from_json(json.loads(Path(argv[0]).read_text()))
        result["advice"] = [a.to_json() for a in advise(cpu, findings)]
    else:
        result["advice"] = [_cpu_advice(cpu).to_json()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
