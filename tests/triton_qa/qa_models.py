"""The models Triton's own QA tests expect, rebuilt as ONNX, and the repositories that hold them.

Triton's QA suite generates its models with ``qa/common/gen_qa_models.py`` (the ``onnx_{in}_{out0}_{out1}``
add/sub family, ``*_nobatch`` variants, extra versions that swap add and sub, version policies, a
``label_filename``), ``qa/common/gen_qa_identity_models.py`` (the ``onnx_zero_*`` identity models) and
``docs/examples/model_repository`` (``simple``, ``simple_string``, ``simple_identity``). This module builds
the same graphs with onnx.helper and writes a repository in one of two flavours:

- ``edgedl``: ``NAME/config.pbtxt`` (platform onnxruntime_onnx) and ``NAME/V/model.onnx``, as Triton's QA has it;
- ``triton``: the same config with ``backend: "python"`` and the same ``model.onnx`` next to a ``model.py``
  that runs it with onnxruntime (the nvidia-pytriton wheel ships Triton without its onnxruntime backend).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STRING = np.dtype(object)
_PBTXT_TYPE = {np.dtype(np.bool_): "TYPE_BOOL", np.dtype(np.int8): "TYPE_INT8", np.dtype(np.int16): "TYPE_INT16",
               np.dtype(np.int32): "TYPE_INT32", np.dtype(np.int64): "TYPE_INT64", np.dtype(np.uint8): "TYPE_UINT8",
               np.dtype(np.float16): "TYPE_FP16", np.dtype(np.float32): "TYPE_FP32",
               np.dtype(np.float64): "TYPE_FP64", STRING: "TYPE_STRING"}

# Triton's python backend runs model.py; this one runs the model.onnx beside it with onnxruntime, so the
# numbers both servers return come from the same graph and the same runtime.
TRITON_MODEL_PY = '''\
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, i.type == "tensor(string)") for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {}
                for name, is_string in self.inputs:
                    value = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    if is_string:
                        value = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v)
                                          for v in value.ravel()], dtype=object).reshape(value.shape)
                    feeds[name] = value
                wanted = request.requested_output_names() or self.outputs
                results = self.session.run(None, feeds)
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, results)
                           if n in wanted]
                responses.append(pb_utils.InferenceResponse(tensors))
            except Exception as exc:  # the client gets onnxruntime's message, as from Triton's own backend
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
'''


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: np.dtype
    dims: tuple[int, ...]  # without the batch dimension, -1 = variable
    label_filename: str | None = None


@dataclass(frozen=True)
class QAModel:
    """One repository model: ``kind`` 'addsub' (OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; swapped
    in the versions marked True) or 'identity' (OUTPUTi = INPUTi)."""

    name: str
    kind: str
    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    versions: dict[int, bool] = field(default_factory=lambda: {1: False})  # version -> swap add/sub
    version_policy: str = "{ latest { num_versions: 1 }}"
    labels: int = 0  # lines in output0_labels.txt (label0, label1, ...)
    extra_config: str = ""

    def config(self, flavour: str) -> str:
        backend = 'backend: "python"' if flavour == "triton" else 'platform: "onnxruntime_onnx"'
        lines = [f'name: "{self.name}"', backend, f"max_batch_size: {self.max_batch_size}",
                 f"version_policy: {self.version_policy}"]
        for key, tensors in (("input", self.inputs), ("output", self.outputs)):
            for t in tensors:
                label = f' label_filename: "{t.label_filename}"' if t.label_filename else ""
                lines.append(f'{key} [ {{ name: "{t.name}" data_type: {_PBTXT_TYPE[t.dtype]} '
                             f'dims: [ {", ".join(map(str, t.dims))} ]{label} }} ]')
        lines.append("instance_group [ { count: 1 kind: KIND_CPU } ]")
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"


def _onnx_type(dtype: np.dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(np.str_) if dtype == STRING else np.dtype(dtype))


def onnx_model(model: QAModel, swap: bool):
    """The ONNX graph of ``model`` (gen_qa_models.create_onnx_modelfile / gen_qa_identity_models)."""
    from onnx import TensorProto, helper

    batch = [None] if model.max_batch_size > 0 else []
    counter = iter(range(1000))

    def value_info(t: Tensor):
        return helper.make_tensor_value_info(t.name, _onnx_type(t.dtype),
                                             batch + [f"var_{next(counter)}" if d < 0 else d for d in t.dims])

    nodes = []
    if model.kind == "identity":
        nodes = [helper.make_node("Identity", [i.name], [o.name]) for i, o in zip(model.inputs, model.outputs)]
    else:
        in_type = _onnx_type(model.inputs[0].dtype)
        # Add/Sub do not take int8, int16 or strings: compute in int32, as Triton's generator does
        widen = in_type in (TensorProto.INT8, TensorProto.INT16, TensorProto.STRING)
        for i in model.inputs:
            nodes.append(helper.make_node("Cast", [i.name], [f"_{i.name}"], to=TensorProto.INT32) if widen
                         else helper.make_node("Identity", [i.name], [f"_{i.name}"]))
        a, b = (f"_{i.name}" for i in model.inputs)
        nodes.append(helper.make_node("Add", [a, b], ["CAST1" if swap else "CAST0"]))
        nodes.append(helper.make_node("Sub", [a, b], ["CAST0" if swap else "CAST1"]))
        for k, o in enumerate(model.outputs):
            out_type = _onnx_type(o.dtype)
            same_fp16 = in_type == TensorProto.FLOAT16 and out_type == in_type
            nodes.append(helper.make_node("Identity", [f"CAST{k}"], [o.name]) if same_fp16
                         else helper.make_node("Cast", [f"CAST{k}"], [o.name], to=out_type))
    graph = helper.make_graph(nodes, model.name, [value_info(t) for t in model.inputs],
                              [value_info(t) for t in model.outputs])
    proto = helper.make_model(graph, producer_name="triton", opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


# --- the catalogue ---------------------------------------------------------------------------------------------
def _name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name


def add_sub(in_dtype, out0, out1, batch: bool = True, policy: str | None = None,
            swapped_versions: bool = False) -> QAModel:
    in_dtype, out0, out1 = np.dtype(in_dtype), np.dtype(out0), np.dtype(out1)
    prefix = "onnx" if batch else "onnx_nobatch"
    versions = {1: False, 2: True, 3: True} if swapped_versions else {1: False}
    return QAModel(
        f"{prefix}_{_name(in_dtype)}_{_name(out0)}_{_name(out1)}", "addsub", 8 if batch else 0,
        (Tensor("INPUT0", in_dtype, (16,)), Tensor("INPUT1", in_dtype, (16,))),
        (Tensor("OUTPUT0", out0, (16,), "output0_labels.txt"), Tensor("OUTPUT1", out1, (16,))),
        versions, policy or "{ latest { num_versions: 1 }}", labels=16)


def identity(name: str, dtype, dims: tuple[int, ...], count: int = 1, max_batch_size: int = 8,
             extra_config: str = "") -> QAModel:
    dtype = np.dtype(dtype)
    return QAModel(name, "identity", max_batch_size, tuple(Tensor(f"INPUT{i}", dtype, dims) for i in range(count)),
                   tuple(Tensor(f"OUTPUT{i}", dtype, dims) for i in range(count)), extra_config=extra_config)


def _simple(name: str, dtype) -> QAModel:
    dtype = np.dtype(dtype)
    return QAModel(name, "addsub", 8, (Tensor("INPUT0", dtype, (16,)), Tensor("INPUT1", dtype, (16,))),
                   (Tensor("OUTPUT0", dtype, (16,)), Tensor("OUTPUT1", dtype, (16,))))


# gen_qa_models.py (onnx): (input, output0, output1, version policy); uint8 and bf16 combinations are left out
# (validate_for_onnx_model refuses uint8; no onnx test of infer_test.py uses bf16)
_FIXED = [
    (np.int8, np.int8, np.int8, "{ latest { num_versions: 1 }}"),
    (np.int16, np.int16, np.int16, "{ latest { num_versions: 2 }}"),
    (np.int32, np.int32, np.int32, "{ all { }}"),
    (np.int64, np.int64, np.int64, None),
    (np.float16, np.float16, np.float16, "{ specific { versions: [1] }}"),
    (np.float32, np.float32, np.float32, "{ specific { versions: [1, 3] }}"),
    (np.float16, np.float32, np.float32, None),
    (np.int32, np.int8, np.int8, None),
    (np.int8, np.int32, np.int32, None),
    (np.int32, np.int8, np.int16, None),
    (np.int32, np.float32, np.float32, None),
    (np.float32, np.int32, np.int32, None),
    (np.int32, np.float16, np.int16, None),
    (STRING, np.int32, np.int32, None),
    (STRING, STRING, STRING, None),
    (STRING, np.int32, STRING, None),
    (STRING, STRING, np.int32, None),
    (np.int32, STRING, STRING, None),
    (np.int32, np.int32, STRING, None),
    (np.int32, STRING, np.int32, None),
]
_SWAPPED = {np.dtype(t) for t in (np.float16, np.float32, np.int8, np.int16, np.int32)}  # versions 2, 3


def infer_models() -> list[QAModel]:
    """What qa/L0_infer/infer_test.py needs for BACKENDS=onnx (no ensembles)."""
    out = []
    for in_dtype, out0, out1, policy in _FIXED:
        swapped = np.dtype(in_dtype) == np.dtype(out0) == np.dtype(out1) and np.dtype(in_dtype) in _SWAPPED
        for batch in (True, False):
            out.append(add_sub(in_dtype, out0, out1, batch, policy, swapped))
    return out


_QUEUE_OF_ONE = ("dynamic_batching { max_queue_delay_microseconds: 1000000 preferred_batch_size: [ 8 ] "
                 "default_queue_policy { max_queue_size: 1 } }")


def http_models() -> list[QAModel]:
    """The repository qa/L0_http/test.sh builds for http_test.py."""
    return [
        identity("onnx_zero_1_float32", np.float32, (-1,)),
        identity("onnx_zero_1_object", STRING, (-1,)),
        identity("onnx_zero_1_float16", np.float16, (-1, -1)),
        identity("onnx_zero_3_float32", np.float32, (-1,), count=3),
        identity("onnx_zero_1_object_1_element", STRING, (1,)),
        identity("onnx_zero_1_float32_queue", np.float32, (-1,), extra_config=_QUEUE_OF_ONE),
        identity("simple_identity", STRING, (-1,)),
        identity("simple_identity_int64", np.int64, (-1,)),
    ]


def example_models() -> list[QAModel]:
    """docs/examples/model_repository's simple models (python_http_aio_test.py uses ``simple``)."""
    return [_simple("simple", np.int32), _simple("simple_string", STRING), identity("simple_identity", STRING, (-1,))]


def write_repository(root: Path, models: list[QAModel], flavour: str) -> Path:
    """Write ``models`` under ``root`` (emptied first) as an ``edgedl`` or ``triton`` repository."""
    import onnx

    if flavour not in ("edgedl", "triton"):
        raise ValueError(f"flavour must be 'edgedl' or 'triton', not {flavour!r}")
    if root.exists():
        shutil.rmtree(root)
    for model in models:
        folder = root / model.name
        folder.mkdir(parents=True)
        (folder / "config.pbtxt").write_text(model.config(flavour))
        if model.labels:
            (folder / "output0_labels.txt").write_text("".join(f"label{i}\n" for i in range(model.labels)))
        for version, swap in model.versions.items():
            (folder / str(version)).mkdir()
            onnx.save(onnx_model(model, swap), folder / str(version) / "model.onnx")
            if flavour == "triton":
                (folder / str(version) / "model.py").write_text(TRITON_MODEL_PY)
    return root
