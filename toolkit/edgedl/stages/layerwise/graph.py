"""One ONNX model as ``edgedl debug compare`` sees it: every node output in topological order, the float tensor
each stands for, how to read an integer tensor as real values, and which PyTorch module and source line made it.

A quantized model renames and splits the tensors of the float model it came from: onnxruntime's QDQ quantizer
puts ``X_QuantizeLinear_Output`` / ``X_DequantizeLinear_Output`` after ``X`` (and renames a graph output's producer
``X_QuantizeLinear_Input``); the QOperator form writes ``X_quantized`` (uint8) from ``QLinearConv`` & co.; dynamic
quantization keeps ``X`` and adds ``X_quantized`` beside it. ``base_name`` maps every such name back to ``X``,
and ``Point.quant`` says which scale and zero point turn an integer tensor into what it stands for. The source
of each tensor comes from the ``edgedl.provenance`` key export wrote, looked up by that float name, so it survives
quantization.

``augmented(names)`` is a copy whose graph outputs are those tensors, for onnxruntime to return them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.stages.provenance import NodeSource, tensor_sources

# onnxruntime quantizer name suffixes, longest first: what they follow is the float tensor's name
_SUFFIXES = ("_DequantizeLinear_Output", "_QuantizeLinear_Output", "_QuantizeLinear_Input", "_quantized")
# ops whose integer output carries the scale and zero point of its integer input
_PASS_THROUGH = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Split",
                 "Resize", "Pad", "DepthToSpace", "SpaceToDepth", "Identity", "Expand", "Tile"}
# quantized op -> (input index of its output scale, of its output zero point)
_OUTPUT_PARAMS = {
    "QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QGemm": (7, 8),
    "QLinearAdd": (6, 7), "QLinearMul": (6, 7), "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4),
    "QLinearSoftmax": (3, 4), "QLinearAveragePool": (3, 4), "QLinearGlobalAveragePool": (3, 4),
    "QLinearConcat": (0, 1),
}
# quantized op -> (weight input, its scale, its zero point) for the weights table
_WEIGHT_PARAMS = {"QLinearConv": (3, 4, 5), "QLinearMatMul": (3, 4, 5), "QGemm": (3, 4, 5)}
# an activation the quantizer folds into the preceding op's output range (QLinearConv + Relu -> QLinearConv)
_FOLDABLE = {"Relu", "Clip"}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
             "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", *_OUTPUT_PARAMS}
_FLOAT16 = 10
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def base_name(name: str) -> str:
    """The float tensor a quantizer-made tensor name stands for (the name itself when it is not one)."""
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name, changed = name[: -len(suffix)], True
    return name


@dataclass(frozen=True, eq=False)
class Quant:
    """How to read an integer tensor as reals: ``(q - zero_point) * scale`` (per channel along ``axis``)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zero = self.scale.astype(np.float64), self.zero_point.astype(np.float64)
        if self.axis is not None and scale.ndim == 1 and q.ndim > 0:
            shape = [1] * q.ndim
            shape[self.axis % q.ndim] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (q.astype(np.float64) - zero) * scale


@dataclass(frozen=True, eq=False)
class Point:
    """One node output: ``tensor`` in this model, ``base`` the float tensor it stands for."""

    tensor: str
    base: str
    node: str
    op_type: str
    index: int  # the producing node's position in the (topologically sorted) graph
    slot: int  # which output of that node
    integer: bool  # an integer tensor made by quantization (read through ``quant``)
    quant: Quant | None = None
    source: NodeSource | None = None

    def value(self, array: np.ndarray) -> np.ndarray | None:
        """What this tensor stands for as float64 values; None for tensors that are not real numbers."""
        if self.integer:
            return self.quant.dequantize(array) if self.quant is not None else None
        if array.dtype.kind != "f":
            return None
        return array.astype(np.float64, copy=False)


def precision(model) -> str:
    """'int8' when the graph runs quantized ops, 'fp16' when it computes in half precision, else 'fp32'."""
    ops = {n.op_type for n in model.graph.node}
    if ops & QUANT_OPS:
        return "int8"
    if any(i.data_type == _FLOAT16 for i in model.graph.initializer) or any(
            n.op_type == "Cast" and any(a.name == "to" and a.i == _FLOAT16 for a in n.attribute)
            for n in model.graph.node):
        return "fp16"
    return "fp32"


class OnnxGraph:
    """An ONNX model read for comparison (``onnx`` is needed; the model runs on onnxruntime elsewhere)."""

    def __init__(self, path: Path):
        onnx = require("onnx")
        self.path = Path(path)
        try:
            self.proto = onnx.load(str(self.path))
        except Exception as exc:
            raise EdgeDLError(f"{self.path} is not an ONNX model onnx can read ({type(exc).__name__}: "
                              f"{str(exc).strip()[:200]})") from exc
        graph = self.proto.graph
        self.nodes = list(graph.node)
        self.initializers = {i.name: i for i in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.outputs = [o.name for o in graph.output]
        self.precision = precision(self.proto)
        self.types = self._types(onnx)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.sources = tensor_sources(self.proto)
        self.points: dict[str, Point] = {}
        for index, node in enumerate(self.nodes):
            for slot, out in enumerate(node.output):
                if out:
                    integer = self._integer(node, out)
                    base = base_name(out)
                    self.points[out] = Point(out, base, node.name, node.op_type, index, slot, integer,
                                             self._quant(out) if integer else None,
                                             self.sources.get(base) or self.sources.get(out))

    def _types(self, onnx) -> dict[str, int]:
        try:  # best effort: a custom op or an odd graph leaves types unknown (then taken for float)
            inferred = onnx.shape_inference.infer_shapes(self.proto).graph
        except Exception:
            inferred = self.proto.graph
        out = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.value_info, *inferred.input,
                                                                 *inferred.output] if vi.type.HasField("tensor_type")}
        out.update({i.name: i.data_type for i in self.proto.graph.initializer})
        return out

    def real(self, point: Point) -> bool:
        """Whether a tensor holds real numbers (a float type, or integers standing for reals); unknown: yes."""
        return point.integer or self.types.get(point.tensor, 1) in _FLOAT_TYPES or not self.types.get(point.tensor)

    def constant(self, point: Point) -> bool:
        """Computed from initializers only (a weight's DequantizeLinear): the same for every input."""
        node = self.producer[point.tensor]
        return all(i in self.initializers for i in node.input if i)

    def computed_by(self, point: Point) -> Point:
        """The point behind a Q/DQ pair: ``X_DequantizeLinear_Output`` is computed by whatever made ``X``."""
        seen = 0
        while point.op_type in ("DequantizeLinear", "QuantizeLinear") and seen < 8:
            node = self.producer[point.tensor]
            prev = self.points.get(node.input[0])
            if prev is None:
                break
            point, seen = prev, seen + 1
        return point

    # --- integer tensors ----------------------------------------------------------------------------------
    def _integer(self, node, out: str) -> bool:
        if node.op_type in _OUTPUT_PARAMS or (node.op_type == "DynamicQuantizeLinear" and out == node.output[0]):
            return True
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in self.producer:
            first = self.producer[node.input[0]]
            return self._integer(first, node.input[0])
        return False

    def _constant(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        if init is None:
            return None
        return require("onnx.numpy_helper").to_array(init)

    def _quant(self, tensor: str, depth: int = 0) -> Quant | None:
        """The scale and zero point of an integer tensor, when they are constants of the graph."""
        node = self.producer.get(tensor)
        if node is None or depth > 64:
            return None
        if node.op_type in _OUTPUT_PARAMS:
            s, z = _OUTPUT_PARAMS[node.op_type]
            if len(node.input) <= s:
                return None
            scale = self._constant(node.input[s])
            zero = self._constant(node.input[z]) if len(node.input) > z and node.input[z] else None
            if scale is None:
                return None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.ndim == 1 and scale.size > 1 else None
            return Quant(scale, zero if zero is not None else np.zeros_like(scale, np.int32), axis)
        if node.op_type in _PASS_THROUGH:
            return self._quant(node.input[0], depth + 1)
        return None

    # --- what to compare ----------------------------------------------------------------------------------
    def representative(self) -> dict[str, Point]:
        """Per float tensor name (base): the point of this model that stands for it - a float tensor over an
        integer one, and the last one in the graph (the value after its own quantize/dequantize pair)."""
        best: dict[str, Point] = {}
        for p in self.points.values():
            if p.integer and p.quant is None:
                continue
            old = best.get(p.base)
            if old is None or (old.integer, -old.index) > (p.integer, -p.index):
                best[p.base] = p
        return best

    def weight_pairs(self) -> list[tuple[str, str, np.ndarray]]:
        """Quantized weights: (float initializer name, node using it, dequantized values)."""
        out = []
        for node in self.nodes:
            if node.op_type == "DequantizeLinear" and node.input[0] in self.initializers:
                q = self._constant(node.input[0])
                scale = self._constant(node.input[1])
                zero = self._constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                if scale is None:
                    continue
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.ndim == 1 and scale.size > 1 else None
                users = [c.name for c in self.consumers.get(node.output[0], [])]
                out.append((base_name(node.input[0]), users[0] if users else node.name,
                            Quant(scale, zero if zero is not None else np.zeros_like(scale, np.int32), axis)
                            .dequantize(q)))
            elif node.op_type in _WEIGHT_PARAMS:
                w, s, z = _WEIGHT_PARAMS[node.op_type]
                q, scale = self._constant(node.input[w]), self._constant(node.input[s])
                if q is None or scale is None:
                    continue
                zero = self._constant(node.input[z])
                axis = 0 if scale.ndim == 1 and scale.size > 1 else None
                out.append((base_name(node.input[w]), node.name,
                            Quant(scale, zero if zero is not None else np.zeros_like(scale, np.int32), axis)
                            .dequantize(q)))
        return out

    def folded_activation(self, tensor: str, matched: set[str]) -> str | None:
        """When this (float) model's ``tensor`` feeds only a Relu/Clip whose output the quantized model lacks
        (``matched``: the float names it has), the quantizer folded that activation into its output range: its
        ``tensor`` is compared with the activation's output."""
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type in _FOLDABLE and users[0].output[0] not in matched:
            return users[0].output[0]
        return None

    def initializer(self, name: str) -> np.ndarray | None:
        return self._constant(name)

    def augmented(self, names: list[str]) -> bytes:
        """The model with ``names`` added as graph outputs (after its own outputs), serialized."""
        onnx = require("onnx")
        copy = onnx.ModelProto()
        copy.CopyFrom(self.proto)
        have = {o.name for o in copy.graph.output}
        for name in names:
            if name not in have:
                copy.graph.output.append(onnx.ValueInfoProto(name=name))
                have.add(name)
        return copy.SerializeToString()

    def span(self, tensor: str, keep: set[str], limit: int = 10_000) -> tuple[set[str], list[str]]:
        """Where ``tensor``'s value comes from: the nearest tensors in ``keep`` (or graph inputs) it is computed
        from, and the nodes in between (in graph order), its own producer included."""
        found: set[str] = set()
        seen: set[str] = set()
        nodes: set[str] = set()
        stack = [tensor]
        while stack and len(seen) < limit:
            name = stack.pop()
            if name in seen or name in self.initializers:
                continue
            seen.add(name)
            if name != tensor and (name in keep or name not in self.producer):
                found.add(name)
                continue
            node = self.producer.get(name)
            if node is None:
                continue
            nodes.add(node.name)
            # not into shape arithmetic (Shape -> Concat -> Reshape's second input): no value flows that way
            stack.extend(i for i in node.input if i and (i not in self.points or (
                self.real(self.points[i]) and not self.constant(self.points[i]))))
        order = {n.name: i for i, n in enumerate(self.nodes)}
        return found, sorted(nodes, key=lambda n: order.get(n, 0))
