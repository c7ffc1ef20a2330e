"""Quantization stage: int8 (dynamic, static QDQ/QOperator) and fp16, behind an accuracy gate and a speed gate.

Modules: ``config`` (typed settings, hardware presets), ``preprocess`` (input checks, quant_pre_process),
``data`` (calibration/evaluation data, the calibration reader), ``passes`` (one function per mode),
``gates`` (accuracy and speed measurement through edgedl.runtime), ``debug`` (--bisect: which nodes to keep in float),
``ops`` (what got quantized), ``report``, ``pipeline`` (the flow, auto mode, atomic write).
Importing this package is cheap: onnx and onnxruntime.quantization load inside the functions that use them.
"""

from edgedl.stages.quantize.config import PRESETS, GateConfig, QuantizeConfig, StaticConfig, preset
from edgedl.stages.quantize.pipeline import quantize
from edgedl.stages.quantize.report import Candidate, QuantizeReport

__all__ = ["PRESETS", "Candidate", "GateConfig", "QuantizeConfig", "QuantizeReport", "StaticConfig", "preset",
           "quantize"]
