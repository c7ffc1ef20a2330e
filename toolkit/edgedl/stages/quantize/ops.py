"""Which of the original nodes run quantized (int8 or fp16) and which stayed float, from the graphs themselves."""

from __future__ import annotations

from collections import Counter

from edgedl._lazy import require

_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_HELPERS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def _elem_types(model) -> dict[str, int]:
    types = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def _computes_float(node, types: dict[str, int]) -> bool:
    """A node matters for quantization if it produces a float tensor (unknown type: assume it does)."""
    return any(types.get(out, 1) in _FLOAT_TYPES for out in node.output if out)


def analyze(before, after, mode: str, qdq_op_types: set[str] | None = None) -> dict:
    """Compare the preprocessed fp32 graph ``before`` with the converted graph ``after``.

    int8: an original node is quantized if the quantizer replaced it by an integer op (its name is gone) or, in
    QDQ graphs, if it is an op the QDQ quantizer handles and reads a DequantizeLinear output. fp16: a node is
    converted if its outputs became fp16 (ONNX shape inference on the result). Nodes that only produce integer
    tensors (shape arithmetic) are not counted either way.
    """
    types = _elem_types(before)
    after_nodes = {n.name: n for n in after.graph.node if n.name}
    dq_outputs = {out for n in after.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    after_types = {}
    if mode == "fp16":
        onnx = require("onnx")
        try:
            after_types = _elem_types(onnx.shape_inference.infer_shapes(after))
        except Exception:  # inference is best-effort here; unknown types count as float32
            after_types = _elem_types(after)
    quantized: Counter = Counter()
    left_float: dict[str, list[str]] = {}
    for node in before.graph.node:
        if not _computes_float(node, types):
            continue
        twin = after_nodes.get(node.name)
        if mode == "fp16":
            outs = [after_types.get(o) for o in (twin.output if twin is not None else []) if o]
            done = twin is not None and any(t == 10 for t in outs)
        elif twin is None or twin.op_type != node.op_type:
            done = True
        else:
            done = bool(qdq_op_types) and node.op_type in qdq_op_types and any(i in dq_outputs for i in twin.input)
        if done:
            quantized[node.op_type] += 1
        else:
            left_float.setdefault(node.op_type, []).append(node.name)
    after_hist = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                         for n in after.graph.node)
    return {
        "ops_quantized": dict(sorted(quantized.items(), key=lambda kv: (-kv[1], kv[0]))),
        "ops_left_float": {k: v for k, v in sorted(left_float.items(), key=lambda kv: (-len(kv[1]), kv[0]))},
        "op_types_after": dict(sorted(after_hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        "quantizer_ops": sorted({op for op in after_hist if op not in _HELPERS} - {
            n.op_type for n in before.graph.node}),
    }
