"""Input checks and quantization preprocessing (shape inference + graph optimization).

Preprocessing is not optional: the dynamo-exported LSTM computes its recurrent weight with Slice/Concat, and
without constant folding ``quantize_dynamic`` silently leaves it in fp32 (see shared PITFALLS).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections import Counter
from pathlib import Path

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
    """onnxruntime.quantization logs warnings through the root logger and prints; keep the CLI clean."""
    if not enabled:
        yield
        return
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        root.setLevel(level)


def op_histogram(model) -> dict[str, int]:
    counts: Counter = Counter()
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def check_input(path: Path, output: Path):
    """Load the model; refuse non-ONNX files, already-quantized models and an output that is the input."""
    from edgedl.stages.inspect import load_onnx

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


def preprocess(source: Path, target: Path, debug: bool = False) -> list[str]:
    """Run onnxruntime's quant_pre_process (symbolic shape inference, optimization, ONNX shape inference).

    Returns notes for the report. onnxruntime's symbolic shape inference does not know every opset-23 op (the
    ONNX-domain ``Attention`` of the exported transformer stops it); then the graph optimization and ONNX shape
    inference still run, without the symbolic pass, and the report says so.
    """
    shape_inference = require("onnxruntime.quantization.shape_inference")
    notes = []
    source, target = Path(source).resolve(), Path(target).resolve()
    scratch = target.parent / "preprocess"
    scratch.mkdir(exist_ok=True)
    try:
        with quiet(not debug), inside(scratch):
            shape_inference.quant_pre_process(str(source), str(target))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        try:
            with quiet(not debug), inside(scratch):
                shape_inference.quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        except Exception as exc2:
            raise EdgeDLError(f"quantization preprocessing failed on {source.name}: {exc2}; "
                              "check that onnxruntime can load the model (edgedl inspect)") from exc2
        notes.append(f"preprocessing: onnxruntime's symbolic shape inference failed ({first}); ran graph "
                     "optimization and ONNX shape inference without it")
    return notes
