"""Layer debugging with onnxruntime's QDQ debugging utilities (``qdq_loss_debug``): per-tensor SQNR between the
float and the QDQ model, worst first, and the nodes to keep in float for ``--fallback-worst``."""

from __future__ import annotations

import math
from pathlib import Path

from edgedl._lazy import require
from edgedl.stages.data import Dataset
from edgedl.stages.quantize.data import calibration_reader
from edgedl.stages.quantize.preprocess import quiet

DEBUG_SAMPLES = 64


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 2)


def layer_errors(float_path: Path, qdq_path: Path, data: Dataset, workdir: Path, debug: bool = False) -> dict:
    """Per activation tensor: ``model_sqnr_db`` (the float model's tensor vs the QDQ model's, the error that reaches
    this point) and ``qdq_sqnr_db`` (the QDQ model's tensor before vs after its own Q/DQ pair; misleading where a
    Relu was folded into the quantization range, as the pre-Q/DQ tensor then still holds negatives); per weight:
    SQNR of its dequantized values. Activations are sorted worst (lowest ``model_sqnr_db``) first."""
    dbg = require("onnxruntime.quantization.qdq_loss_debug")
    onnx = require("onnx")
    aug_float, aug_qdq = workdir / "debug-float.onnx", workdir / "debug-qdq.onnx"
    sample = data.head(DEBUG_SAMPLES)
    with quiet(not debug):
        dbg.modify_model_output_intermediate_tensors(str(float_path), str(aug_float))
        dbg.modify_model_output_intermediate_tensors(str(qdq_path), str(aug_qdq))
        float_acts = dbg.collect_activations(str(aug_float), calibration_reader(sample))
        qdq_acts = dbg.collect_activations(str(aug_qdq), calibration_reader(sample))
        matching = dbg.create_activation_matching(qdq_acts, float_acts)
        act_err = dbg.compute_activation_error(matching)
        weight_err = dbg.compute_weight_error(dbg.create_weight_matching(str(float_path), str(qdq_path)))
    graph = onnx.load(str(float_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    activations = []
    for tensor, err in act_err.items():
        node = producer.get(tensor)
        nodes = [node] if node is not None else consumers.get(tensor, [])
        activations.append({
            "tensor": tensor,
            "nodes": [n.name for n in nodes],
            "op_types": [n.op_type for n in nodes],
            "qdq_sqnr_db": _finite(err.get("qdq_err")),
            "model_sqnr_db": _finite(err.get("xmodel_err")),
        })
    activations.sort(key=lambda a: (math.inf if a["model_sqnr_db"] is None else a["model_sqnr_db"]))
    weights = [{"weight": name, "nodes": [n.name for n in consumers.get(name, [])], "sqnr_db": _finite(v)}
               for name, v in weight_err.items()]
    weights.sort(key=lambda w: math.inf if w["sqnr_db"] is None else w["sqnr_db"])
    return {"samples": len(sample), "activations": activations, "weights": weights}


def worst_nodes(errors: dict, k: int, already: list[str]) -> list[str]:
    """The nodes behind the ``k`` worst activation tensors, in order, skipping nodes already kept in float."""
    picked: list[str] = []
    for act in errors["activations"]:
        for node in act["nodes"]:
            if node and node not in picked and node not in already:
                picked.append(node)
                break
        if len(picked) >= k:
            break
    return picked
