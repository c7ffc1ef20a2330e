"""Describe any ONNX file: I/O with dynamic dims by name, opset/IR, op histogram, parameters, edgedl metadata."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgedl.errors import EdgeDLError
from edgedl.runtime import metadata as meta_codec
from edgedl.stages.onnxfile import load_onnx


def _value_info(vi) -> dict[str, Any]:
    from onnx import helper

    t = vi.type.tensor_type
    dims: list[int | str] = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or f"?{i}")
    try:
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
    except Exception:
        dtype = str(t.elem_type)
    return {"name": vi.name, "dtype": dtype, "shape": dims}


def _count_ops(graph, counter: Counter) -> None:
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counter[key] += 1
        for attr in node.attribute:
            if attr.HasField("g"):
                _count_ops(attr.g, counter)
            for g in attr.graphs:
                _count_ops(g, counter)


def signature_summary(path: Path, options=None) -> dict[str, Any]:
    """How later stages will run the model: each input's batch axis and the shape it runs at (default batch),
    whether the server may batch it, and where the sizes come from; or why onnxruntime cannot load it."""
    from edgedl.runtime import Runner
    from edgedl.runtime.signature import Signature

    try:
        runner = Runner(str(path))
    except EdgeDLError as exc:  # inspect still describes a model onnxruntime cannot load
        return {"error": str(exc)}
    with runner:
        sig = Signature.of_runner(runner, options)  # a wrong option is the user's error: raise
    try:
        shapes, missing = sig.shapes(), None
    except EdgeDLError as exc:
        shapes, missing = {}, exc
    return {
        "inputs": [{"name": s.name, "batch_axis": s.batch_axis, "value_range": list(s.value_range),
                    "runs_at": list(shapes[s.name]) if s.name in shapes else None} for s in sig.inputs],
        "outputs": [{"name": o.name, "batch_axis": o.batch_axis} for o in sig.outputs],
        "batchable": sig.batchable,
        "sizes_from": list(sig.sources),
        "missing": None if missing is None else {"message": missing.message, "hint": missing.hint,
                                                 "option": list(missing.option) if missing.option else None},
    }


def inspect_model(path: Path, shape_options=None) -> dict[str, Any]:
    import numpy as np

    model = load_onnx(path)
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    ops: Counter = Counter()
    _count_ops(graph, ops)
    for fn in model.functions:
        for node in fn.node:
            ops[node.op_type] += 1
    # parameters = weight-like tensors; int32/int64/bool/string constants are shapes and indices, not weights
    not_weights = {6, 7, 8, 9}  # TensorProto INT32, INT64, STRING, BOOL
    tensors = list(graph.initializer) + [
        attr.t for node in graph.node if node.op_type == "Constant"
        for attr in node.attribute if attr.name == "value" and attr.HasField("t")
    ]
    params = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in tensors if t.data_type not in not_weights)
    props = {p.key: p.value for p in model.metadata_props}
    external = any(init.data_location == 1 for init in graph.initializer)
    return {
        "path": str(path),
        "size_bytes": Path(path).stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [_value_info(i) for i in graph.input if i.name not in initializer_names],
        "outputs": [_value_info(o) for o in graph.output],
        "nodes": sum(ops.values()),
        "op_types": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": params,
        "external_data": external,
        "edgedl": meta_codec.decode(props),
        "signature": signature_summary(path, shape_options),
        "metadata_props": {k: v for k, v in props.items() if not k.startswith(meta_codec.PREFIX)},
    }
