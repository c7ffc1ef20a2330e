"""Input checks and quantization preprocessing (shape inference + graph optimization).

Preprocessing is not optional: the dynamo-exported LSTM computes its recurrent weight with Slice/Concat, and
without constant folding ``quantize_dynamic`` silently leaves it in fp32 (see shared PITFALLS).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

from edgedl._lazy import require
from edgedl.errors import EdgeDLError

# ops that only exist in quantized (or already-converted) graphs
QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QGemm", "QAttention", "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
    "MatMulNBits", "QOrderedMatMul",
}


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """onnxruntime.quantization logs warnings through the root logger and prints, and the sessions it opens log
    onnxruntime's own warnings to stderr (e.g. "Removing initializer ..."); keep the CLI clean."""
    if not enabled:
        yield
        return
    import onnxruntime

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL + 1)  # its logger.error(traceback) too: a failure reaches the user as our one line
    onnxruntime.set_default_logger_severity(3)  # errors only
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        root.setLevel(level)
        onnxruntime.set_default_logger_severity(2)  # onnxruntime's default: warnings


def op_histogram(model) -> dict[str, int]:
    counts: Counter = Counter()
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def check_input(path: Path, output: Path):
    """Load the model; refuse non-ONNX files, already-quantized models and an output that is the input."""
    from edgedl.stages.onnxfile import load_onnx

    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise EdgeDLError(f"{path} is not an .onnx file; quantize works on ONNX models (export first: "
                          "edgedl export MODEL -o model.onnx)")
    if Path(output).resolve() == path.resolve():
        raise EdgeDLError(f"output {output} is the input model; quantize never overwrites its input: "
                          "pass a different -o path")
    model = load_onnx(path)
    if len(model.graph.node) == 0:
        raise EdgeDLError(f"{path} has no nodes; pass an exported model")
    onnx = require("onnx")
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise EdgeDLError(f"{path} is already quantized (it contains {', '.join(found)}); quantize the fp32 model "
                          "it came from instead")
    if any(init.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16) for init in model.graph.initializer):
        raise EdgeDLError(f"{path} already holds fp16/bf16 weights; quantize the fp32 model it came from instead")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise EdgeDLError(f"{path} keeps its weights in external data files; re-export it as one file "
                          "(edgedl export writes single files)")
    return model


@contextlib.contextmanager
def inside(directory: Path):
    """Run in ``directory``: onnxruntime's symbolic shape inference dumps sym_shape_infer_temp.onnx and
    <uuid>.data files into the working directory when it fails; keep them in our scratch directory."""
    previous = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def required_inputs(model) -> list[str]:
    """Graph inputs a caller must feed (an initializer listed as an input, as IR-3 models do, is not one)."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def interface_change(source, result) -> str | None:
    """What preprocessing changed in a model's interface (inputs to feed, outputs), or None."""
    before, after = required_inputs(source), required_inputs(result)
    if after != before:
        added = [n for n in after if n not in before]
        return (f"it now requires inputs {', '.join(added[:3])}{' ...' if len(added) > 3 else ''}" if added
                else f"its inputs changed from {before} to {after}")
    outs_before, outs_after = [o.name for o in source.graph.output], [o.name for o in result.graph.output]
    if outs_after != outs_before:
        return f"its outputs changed from {outs_before} to {outs_after}"
    return None


# quant_pre_process runs symbolic shape inference, graph optimization and ONNX shape inference; each level drops a
# step that can fail or break a model, the last one quantizes the model as it is
_LEVELS = (
    ({}, None),
    ({"skip_symbolic_shape": True}, "without onnxruntime's symbolic shape inference"),
    ({"skip_symbolic_shape": True, "skip_optimization": True}, "without symbolic shape inference and graph "
                                                                "optimization"),
)


def preprocess(source: Path, target: Path, debug: bool = False,
               verify: Callable[[Path], str | None] | None = None) -> list[str]:
    """Run onnxruntime's quant_pre_process (symbolic shape inference, optimization, ONNX shape inference) and check
    that the result is still the same model: the same inputs to feed and outputs, and (``verify``, e.g. the fp32
    outputs on real data) the same results. A step that fails or changes the model is dropped and the rest rerun;
    when nothing is left the model is quantized as it is. Returns notes for the report.

    onnxruntime's symbolic shape inference does not know every op (the opset-23 ``Attention`` of the exported
    transformer, Paddle's Concat); its graph optimization gives IR-3 models (initializers listed as inputs) new
    ``*__SHAPE`` inputs that nothing feeds.
    """
    onnx = require("onnx")
    shape_inference = require("onnxruntime.quantization.shape_inference")
    ort = require("onnxruntime")
    source, target = Path(source).resolve(), Path(target).resolve()
    scratch = target.parent / "preprocess"
    scratch.mkdir(exist_ok=True)
    original = onnx.load(str(source))
    problems: list[str] = []
    for options, how in _LEVELS:
        try:
            with quiet(not debug), inside(scratch):
                shape_inference.quant_pre_process(str(source), str(target), **options)
            problem = interface_change(original, onnx.load(str(target)))
            if problem is None:
                ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
                problem = verify(target) if verify is not None else None
        except Exception as exc:
            problem = _describe(exc)
        if problem is None:
            return [f"preprocessing ran {how}: with all steps, {'; then '.join(problems)}"] if how else []
        if problem not in problems:
            problems.append(problem)
    shutil.copyfile(source, target)
    return [f"preprocessing left out: it failed or changed the model ({'; then '.join(problems)}); quantizing the "
            "model as it is (onnxruntime may quantize fewer ops)"]
