"""The two sides of ``edgedl debug compare``: what the user named (``SideSpec``) and how it runs.

A side is an ONNX model on onnxruntime - in this process on an execution provider, with another Python on this
machine, or on a device over SSH - or a PyTorch module (a recipe, ``file.py:Class`` with its checkpoint, a
TorchScript file, or ``torch``: the module the other side's metadata records). ``run(batches, wanted)`` yields,
per batch, the values it captured: ONNX tensors by name (the graph outputs from the model as it is, the
intermediate ones from a copy that also outputs them), a module's outputs under the ONNX output names and its
records (``capture.Record``) under ``RECORDS``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.stages.compare import compare_arrays
from edgedl.stages.layerwise.graph import OnnxGraph

RECORDS = "__records__"
WHERE = ("local", "python", "device")


@dataclass(frozen=True)
class Placement:
    """Where an ONNX side runs: this process (``local``), another Python here (``python``: ``command``), or a
    device over SSH (``device``: ``target``, an ``SSHTarget``)."""

    kind: str = "local"
    command: tuple[str, ...] = ()
    target: Any = None
    remote_dir: str = "edgedl-bench"
    remote_python: str = "python3"

    def __post_init__(self) -> None:
        if self.kind not in WHERE:
            raise EdgeDLError(f"unknown placement '{self.kind}'; one of {', '.join(WHERE)}")
        if self.kind == "python" and not self.command:
            raise EdgeDLError("give the Python to run the model with")
        if self.kind == "device" and self.target is None:
            raise EdgeDLError("give the device to run the model on")

    def describe(self) -> str:
        if self.kind == "python":
            return f"python {' '.join(self.command)}"
        if self.kind == "device":
            return f"device {self.target.label}"
        return "this process"


@dataclass(frozen=True)
class SideSpec:
    """One side as the user named it. ``text``: a ``.onnx`` file, or a PyTorch module (recipe, ``file.py:Class``,
    TorchScript file, or ``torch`` for the module the ONNX side records)."""

    text: str
    provider: str = "cpu"
    placement: Placement = field(default_factory=Placement)
    torch_checkpoint: str | None = None
    torch_init_args: dict | list | None = None

    @property
    def kind(self) -> str:
        return "onnx" if str(self.text).lower().endswith(".onnx") else "torch"

    def describe(self) -> str:
        if self.kind == "torch":
            return "PyTorch (the module the model records)" if self.text == "torch" else f"PyTorch {self.text}"
        return f"{Path(self.text).name} on onnxruntime {self.provider}, {self.placement.describe()}"


class OnnxSide:
    kind = "onnx"

    def __init__(self, spec: SideSpec, threads: int = 1, cache_dir: Path | None = None):
        self.spec = spec
        self.path = Path(spec.text)
        if not self.path.is_file():
            raise EdgeDLError(f"model file not found: {self.path}; pass the path to an .onnx file")
        self.graph = OnnxGraph(self.path)
        self.threads = threads
        self.cache_dir = cache_dir
        self.environment: dict = {}
        self.capture_effect = 0.0  # largest relative change of an output from adding the captured outputs

    @property
    def label(self) -> str:
        return self.spec.describe()

    def _note_effect(self, captured: dict[str, np.ndarray], plain: dict[str, np.ndarray]) -> None:
        for name, value in plain.items():
            got = captured.get(name)
            if got is None or got.shape != value.shape or value.dtype.kind != "f" or not value.size:
                continue
            c = compare_arrays(name, got, value, 0.0, 0.0)
            self.capture_effect = max(self.capture_effect, c.rel_diff if c.reference_scale > 0 else c.max_abs_diff)

    def run(self, batches: list, wanted: list[str]) -> Iterator[dict[str, np.ndarray]]:
        wanted = [w for w in dict.fromkeys(wanted) if w not in self.graph.outputs]
        if self.spec.placement.kind == "local":
            yield from self._run_here(batches, wanted)
        else:
            yield from self._run_elsewhere(batches, wanted)

    def _run_here(self, batches, wanted):
        from edgedl.runtime import Runner, RunnerConfig

        config = RunnerConfig(providers=(self.spec.provider,), intra_op_threads=self.threads, inter_op_threads=1,
                              spinning=False)
        outputs = self.graph.outputs
        with Runner(self.graph.augmented(wanted), config) as captured, Runner(str(self.path), config) as plain:
            self.environment = {"providers": captured.providers}
            for batch in batches:
                feeds = dict(batch.inputs)
                inner = captured.run(feeds, outputs + wanted)
                final = plain.run(feeds)
                self._note_effect(inner, final)
                yield {**inner, **final}

    def _run_elsewhere(self, batches, wanted):
        from edgedl.runtime.providers import resolve_provider
        from edgedl.stages.layerwise import offhost

        placement = self.spec.placement
        outputs = tuple(self.graph.outputs)
        with tempfile.TemporaryDirectory(prefix="edgedl-compare-") as tmp:
            augmented = Path(tmp) / f"{self.path.stem}.captured.onnx"
            augmented.write_bytes(self.graph.augmented(wanted))
            job = offhost.WorkerJob(((augmented, outputs + tuple(wanted)), (self.path, outputs)),
                                    tuple(self.graph.inputs), tuple(dict(b.inputs) for b in batches),
                                    (resolve_provider(self.spec.provider),), self.threads)
            if placement.kind == "python":
                results, self.environment = offhost.run_with_python(job, placement.command)
            else:
                results, self.environment = offhost.run_on_device(job, placement.target, placement.remote_dir,
                                                                  placement.remote_python, self.cache_dir)
        for inner, final in results:
            self._note_effect(inner, final)
            yield {**inner, **final}


class TorchSide:
    kind = "torch"

    def __init__(self, spec: SideSpec, onnx: OnnxSide, threads: int = 1):
        from edgedl.stages.torch_source import source_for

        self.spec = spec
        metadata = _metadata(onnx.graph)
        try:
            self.source = source_for(None if spec.text == "torch" else spec.text, spec.torch_checkpoint, metadata,
                                     spec.torch_init_args)
        except EdgeDLError as exc:
            if exc.option and exc.option[0] == "torch_model":
                raise EdgeDLError(exc.message, hint="name the PyTorch module in place of 'torch': a recipe, "
                                                    "file.py:Class (with --torch-checkpoint) or a TorchScript file"
                                  ) from exc
            raise
        self.threads = threads
        self.output_names = list(onnx.graph.outputs)
        self.input_order = self.source.input_names() or list(onnx.graph.inputs)
        missing = [n for n in self.input_order if n not in onnx.graph.inputs]
        if missing:
            raise EdgeDLError(f"{self.source.describe()} takes input(s) {', '.join(missing)} that "
                              f"{onnx.path.name} lacks (it has {', '.join(onnx.graph.inputs)})")
        self.environment: dict = {}
        self.modules: set[str] | None = None
        self.scripted = False

    @property
    def label(self) -> str:
        source = self.source
        weights = f", weights {Path(source.checkpoint).name}" if source.checkpoint else ""
        return f"PyTorch {Path(source.target.rsplit(':', 1)[0]).name}" + (
            f":{source.target.rsplit(':', 1)[1]}" if source.kind == "module" else "") + weights

    def run(self, batches: list, wanted: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        from edgedl._lazy import require
        from edgedl.stages.layerwise.capture import TorchCapture

        torch = require("torch")
        torch.set_num_threads(max(self.threads, 1))
        module = self.source.build()
        capture = TorchCapture(module, self.modules)
        self.scripted = capture.scripted
        self.environment = {"torch": torch.__version__, "scripted": capture.scripted,
                            "module": self.source.to_json()}
        for batch in batches:
            records, outputs = capture.run([batch.inputs[n] for n in self.input_order])
            values: dict[str, Any] = {RECORDS: records}
            for i, value in enumerate(outputs):
                values[self.output_names[i] if i < len(self.output_names) else f"output{i}"] = value
            yield values


def _metadata(graph: OnnxGraph) -> dict:
    from edgedl.runtime import metadata as meta_codec

    return meta_codec.decode({p.key: p.value for p in graph.proto.metadata_props})


def build_side(spec: SideSpec, other: SideSpec, other_side: OnnxSide | None, threads: int,
               cache_dir: Path | None = None):
    """The runnable side for ``spec``; a PyTorch side needs the other (ONNX) side for its inputs and outputs."""
    if spec.kind == "onnx":
        return OnnxSide(spec, threads, cache_dir)
    if spec.placement.kind != "local":
        raise EdgeDLError(f"{spec.text} is a PyTorch module: only ONNX models run on a device or another Python")
    if other_side is None:
        raise EdgeDLError(f"both sides are PyTorch modules ({spec.text}, {other.text}); one side must be an .onnx "
                          "model")
    return TorchSide(spec, other_side, threads)
