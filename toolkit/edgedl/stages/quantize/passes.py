"""The quantization passes: one function per mode, dispatched through ``PASSES``.

Each pass reads the preprocessed fp32 model at ``source`` and writes its result at ``target``; it returns notes
for the report (what it had to keep in float and why).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.stages.data import Dataset
from edgedl.stages.quantize.config import QuantizeConfig, StaticConfig
from edgedl.stages.quantize.data import calibration_reader
from edgedl.stages.quantize.preprocess import quiet


@dataclass
class PassContext:
    """What a pass needs besides its config: the preprocessed model, calibration data, a scratch directory."""

    model: object  # the preprocessed onnx.ModelProto
    calibration: Dataset | None
    workdir: Path
    debug: bool = False
    exclude_nodes: list[str] = field(default_factory=list)  # changes during --bisect
    _ranges: dict = field(default_factory=dict)  # calibration cache per settings, reused on re-quantization


def _onnx_attention(model) -> bool:
    """The exported transformer uses the opset-23 ONNX ``Attention`` op; onnxruntime's quantizers were written
    for com.microsoft ``Attention`` (different inputs and attributes) and would emit a QAttention node that does
    not load ("Unrecognized attribute: is_causal")."""
    return any(n.op_type == "Attention" and n.domain in ("", "ai.onnx") for n in model.graph.node)


def _op_types(registry_keys, config: QuantizeConfig, ctx: PassContext, notes: list[str]) -> list[str]:
    ops = set(registry_keys) - set(config.exclude_op_types)
    if "Attention" in ops and _onnx_attention(ctx.model):
        ops.discard("Attention")
        notes.append("Attention (ONNX opset-23 op) kept in float: onnxruntime's quantizer only knows the "
                     "com.microsoft Attention and would write an invalid QAttention node")
    return sorted(ops)


def _qtype(name: str):
    q = require("onnxruntime.quantization")
    return {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8}[name]


def dynamic_pass(source: Path, target: Path, config: QuantizeConfig, ctx: PassContext) -> list[str]:
    q = require("onnxruntime.quantization")
    registry = require("onnxruntime.quantization.registry")
    notes: list[str] = []
    ops = _op_types(registry.IntegerOpsRegistry, config, ctx, notes)
    with quiet(not ctx.debug):
        q.quantize_dynamic(str(source), str(target), weight_type=_qtype(config.static.weight_type),
                           op_types_to_quantize=ops, nodes_to_exclude=list(ctx.exclude_nodes),
                           extra_options={"MatMulConstBOnly": True})
    return notes


_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def calibration_cache(source: Path, op_types: list[str], static: StaticConfig, ctx: PassContext) -> Path:
    """Compute activation ranges with onnxruntime's calibrator, driven with real histogram settings.

    ``quantize_static`` cannot pass ``num_bins``/``num_quantized_bins`` to the entropy calibrator, whose defaults
    (128/128) make its answer equal to min-max; calling ``create_calibrator`` ourselves fixes that. The ranges are
    saved in onnxruntime's calibration cache format and reused when re-quantizing (``--bisect``).
    """
    if ctx.calibration is None:
        raise EdgeDLError("static quantization needs calibration data; pass --data or --calibration")
    key = (static.calibration_method, static.activation_symmetric, static.num_bins, static.num_quantized_bins,
           static.percentile, tuple(op_types))
    if key in ctx._ranges:
        return ctx._ranges[key]
    calibrate = require("onnxruntime.quantization.calibrate")
    method = getattr(calibrate.CalibrationMethod, _METHODS[static.calibration_method])
    extra: dict = {"symmetric": static.activation_symmetric}
    if static.calibration_method == "entropy":
        extra.update(num_bins=static.num_bins, num_quantized_bins=static.num_quantized_bins)
    elif static.calibration_method == "percentile":
        extra.update(num_bins=static.num_bins, percentile=static.percentile)
    index = len(ctx._ranges)
    cache = ctx.workdir / f"calibration-{index}.json"
    with quiet(not ctx.debug):
        calibrator = calibrate.create_calibrator(
            Path(source), op_types, augmented_model_path=str(ctx.workdir / f"augmented-{index}.onnx"),
            calibrate_method=method, providers=["CPUExecutionProvider"], extra_options=extra)
        calibrator.collect_data(calibration_reader(ctx.calibration))
        ranges = calibrator.compute_data()
        del calibrator
    calibrate.save_tensors_data(ranges, cache)
    ctx._ranges[key] = cache
    return cache


# QuantizeLinear/DequantizeLinear carry the ``axis`` of per-channel scales from opset 13 on
PER_CHANNEL_QDQ_OPSET = 13


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def per_channel_source(source: Path, static: StaticConfig, ctx: PassContext, notes: list[str]) -> Path:
    """The model that per-channel QDQ quantizes: ``source`` itself from opset 13, else a copy upgraded to 13.

    onnxruntime's QDQ quantizer writes per-channel DequantizeLinear nodes with an ``axis`` attribute whatever the
    model's opset; below 13 the result does not load ("Unrecognized attribute: axis"). A model whose weights are
    Constant nodes (Paddle exports) escapes this in a plain ``quantize_static`` only because per-channel then
    silently falls back to per-tensor; preprocessing folds those constants into initializers, so per-channel
    really happens, and the opset has to allow it.
    """
    opset = default_opset(ctx.model)
    if static.format != "qdq" or not static.per_channel or opset >= PER_CHANNEL_QDQ_OPSET:
        return source
    upgraded = ctx.workdir / f"preprocessed-opset{PER_CHANNEL_QDQ_OPSET}.onnx"
    if not upgraded.is_file():
        onnx = require("onnx")
        try:
            with quiet(not ctx.debug):
                model = onnx.version_converter.convert_version(onnx.load(str(source)), PER_CHANNEL_QDQ_OPSET)
            onnx.save(model, str(upgraded))
            ort = require("onnxruntime")
            ort.InferenceSession(str(upgraded), providers=["CPUExecutionProvider"])
        except Exception as exc:
            upgraded.unlink(missing_ok=True)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EdgeDLError(f"per-channel QDQ needs opset >= {PER_CHANNEL_QDQ_OPSET} (the axis of DequantizeLinear) "
                              f"and this model is opset {opset}; upgrading it failed ({type(exc).__name__}: {first})",
                              hint="quantize weights per tensor (--per-tensor), or per channel in QOperator form "
                                   "(--format qoperator)") from exc
    notes.append(f"per-channel QDQ: upgraded the model from opset {opset} to {PER_CHANNEL_QDQ_OPSET} first "
                 "(DequantizeLinear takes a per-channel axis from opset 13)")
    return upgraded


def static_pass(source: Path, target: Path, config: QuantizeConfig, ctx: PassContext) -> list[str]:
    q = require("onnxruntime.quantization")
    registry = require("onnxruntime.quantization.registry")
    static = config.static
    notes: list[str] = []
    source = per_channel_source(source, static, ctx, notes)
    keys = registry.QDQRegistry if static.format == "qdq" else registry.QLinearOpsRegistry
    ops = _op_types(keys, config, ctx, notes)
    cache = calibration_cache(source, ops, static, ctx)
    fmt = q.QuantFormat.QDQ if static.format == "qdq" else q.QuantFormat.QOperator
    calibrate = require("onnxruntime.quantization.calibrate")
    with quiet(not ctx.debug):
        q.quantize_static(
            str(source), str(target), None, quant_format=fmt, op_types_to_quantize=ops,
            per_channel=static.per_channel, reduce_range=static.reduce_range,
            activation_type=_qtype(static.activation_type), weight_type=_qtype(static.weight_type),
            nodes_to_exclude=list(ctx.exclude_nodes),
            calibrate_method=getattr(calibrate.CalibrationMethod, _METHODS[static.calibration_method]),
            extra_options={"ActivationSymmetric": static.activation_symmetric,
                           "WeightSymmetric": static.weight_symmetric},
            calibration_cache_path=str(cache))
    return notes


def fp16_pass(source: Path, target: Path, config: QuantizeConfig, ctx: PassContext) -> list[str]:
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    model = onnx.load(str(source))
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(config.exclude_op_types))
    with quiet(not ctx.debug):
        converted = float16.convert_float_to_float16(
            model, keep_io_types=config.fp16_keep_io_types, op_block_list=block,
            node_block_list=list(ctx.exclude_nodes) or None)
    onnx.save(converted, str(target))
    notes = [] if config.gates.gpu_target else [
        "fp16 on a CPU provider will not be faster: onnxruntime's CPU kernels mostly compute in fp32 and cast; "
        "fp16 halves the file and is meant for GPU targets (--target-provider cuda)"]
    if config.fp16_keep_io_types:
        notes.append("model inputs and outputs stay fp32 (casts inserted inside the graph)")
    return notes


def fp32_pass(source: Path, target: Path, config: QuantizeConfig, ctx: PassContext) -> list[str]:
    """Auto mode's "keep fp32": the preprocessed fp32 model itself."""
    shutil.copyfile(source, target)
    return []


PASSES: dict[str, Callable[[Path, Path, QuantizeConfig, PassContext], list[str]]] = {
    "dynamic": dynamic_pass,
    "static": static_pass,
    "fp16": fp16_pass,
    "fp32": fp32_pass,
}
