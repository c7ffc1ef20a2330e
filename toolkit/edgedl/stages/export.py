"""Export a PyTorch model to one self-contained ONNX file and prove it faithful against PyTorch.

Flow: model source (a recipe, ``file.py:Class`` or a TorchScript file, see ``export_source``) -> the module, built
from its ``TorchSource`` -> torch.onnx (``exporters``: dynamo, else TorchScript) -> onnxslim -> the node-to-source
mapping kept (``provenance``) and the exporter's bloat stripped -> edgedl metadata -> optional onnxruntime offline
optimization -> validation through ``edgedl.runtime`` -> atomic move to the output path. Nothing is written at
the output path unless validation passed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgedl import __version__
from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.runtime import metadata as meta_codec
from edgedl.stages import provenance
from edgedl.stages.export_source import ModelSource
from edgedl.stages.exporters import check_mode, quiet, run_exporter
from edgedl.stages.files import atomic_output, writable_output
from edgedl.stages.torch_source import checkpoint_metrics, sha256, weights_file
from edgedl.stages.validate import ValidationReport, validate


@dataclass
class ExportConfig:
    output: Path
    checkpoint: Path | None = None
    opset: int | None = None  # None = the newest both the exporter and onnxruntime support
    exporter: str = "auto"  # auto | dynamo | torchscript
    strict: bool = False  # a warning (degenerate outputs, the tracer's) fails the export
    simplify: bool = True
    optimize: bool = False
    debug: bool = False

    def __post_init__(self) -> None:
        check_mode(self.exporter)


@dataclass
class ExportResult:
    onnx_path: Path
    opset: int
    size_bytes: int
    validation: ValidationReport
    recipe: str
    exporter: str
    fallback_reason: str | None
    provenance: provenance.ProvenanceStats
    notices: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "onnx_path": str(self.onnx_path),
            "opset": self.opset,
            "size_bytes": self.size_bytes,
            "recipe": self.recipe,
            "exporter": self.exporter,
            "fallback_reason": self.fallback_reason,
            "provenance": self.provenance.to_json(),
            "notices": self.notices,
            "validation": self.validation.to_json(),
            "metadata": self.metadata,
        }


def _strip_bloat(model) -> None:
    """Drop per-node stack traces and doc strings the exporters leave (tens of KB on small models)."""
    def clean(graph):
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    clean(attr.g)
                for g in attr.graphs:
                    clean(g)
    clean(model.graph)
    for fn in model.functions:
        for node in fn.node:
            node.doc_string = ""
            del node.metadata_props[:]
    for vi in list(model.graph.value_info):
        del vi.metadata_props[:]


def _set_metadata(model, values: dict[str, Any]) -> None:
    keep = [p for p in model.metadata_props
            if not p.key.startswith(meta_codec.PREFIX) or p.key == provenance.KEY]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in meta_codec.encode(values).items():
        model.metadata_props.add(key=key, value=value)


def _check_output(output: Path, source: ModelSource, checkpoint: Path | None) -> None:
    if output.suffix != ".onnx":
        raise EdgeDLError(f"output path {output} must end in .onnx")
    if output.is_dir():
        raise EdgeDLError(f"output path {output} is a directory; pass a file path ending in .onnx")
    writable_output(output, "output path")  # before torch traces anything
    protected = {"model source": source.torch.source_file()}
    if checkpoint is not None:
        protected["checkpoint"] = weights_file(Path(checkpoint))
    for what, path in protected.items():
        if output.resolve() == path.resolve():
            raise EdgeDLError(f"output path {output} would overwrite the {what}; choose another -o")


def _with_checkpoint(source: ModelSource, checkpoint: Path | None):
    if checkpoint is None:
        return source.torch
    path = weights_file(Path(checkpoint))
    if not path.is_file():
        hint = ("the model.safetensors written by `edgedl train`" if source.kind == "recipe" else
                "a .safetensors file, a state_dict saved with torch.save, or an `edgedl train` --out directory")
        raise EdgeDLError(f"checkpoint not found: {path}; pass {hint}")
    return dataclasses.replace(source.torch, checkpoint=str(Path(checkpoint).resolve()), checkpoint_sha256=sha256(path))


def export(source: ModelSource, config: ExportConfig, notice: Callable[[str], None] | None = None) -> ExportResult:
    """Export and validate; ``notice`` receives one line per thing the user should know (a fallback, a warning)."""
    onnx = require("onnx")
    recipe = source.recipe
    output = Path(config.output)
    _check_output(output, source, config.checkpoint)
    notices: list[str] = []

    def say(line: str) -> None:
        notices.append(line)
        if notice is not None:
            notice(line)

    torch_source = _with_checkpoint(source, config.checkpoint)
    model = torch_source.build()
    metrics = None
    if config.checkpoint is not None and source.kind == "recipe":
        metrics = checkpoint_metrics(Path(config.checkpoint))

    try:
        exported = run_exporter(model, recipe, config.exporter, config.opset, config.debug, notice=say)
    except EdgeDLError as exc:
        children = [n for n, _ in model.named_children()] if source.kind == "torchscript" else []
        if children and not exc.hint and not exc.option:  # a scripted pipeline often wraps an exportable network
            raise EdgeDLError(exc.message, hint=f"its submodules ({', '.join(children[:8])}) may export on their own: "
                                                f"pass {source.torch.source_file()}:NAME") from exc
        raise
    proto = exported.proto
    origins = provenance.collect(proto, exported.exporter)
    if config.simplify:
        onnxslim = require("onnxslim")
        with quiet(config.debug):
            proto = onnxslim.slim(proto)
    _strip_bloat(proto)
    for line in exported.warnings:
        say(f"the TorchScript tracer: {line}")
    base_meta = {
        "version": __version__,
        "recipe": recipe.name,
        "recipe_source": recipe.source,
        "task": recipe.task if recipe.data is not None else None,
        # batch axes and value ranges: read back by every later stage through edgedl.runtime.signature
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "batch_axis": s.resolved_batch_axis,
                    "value_range": list(s.value_range)} for s in recipe.inputs],
        "outputs": [{"name": o.name, "dynamic_axes": o.dynamic_axes if o.shape else {},
                     **({"batch_axis": o.resolved_batch_axis} if o.shape else {})} for o in recipe.outputs],
        "labels": recipe.labels,
        "preprocessing": recipe.preprocessing,
        "metrics": metrics,
        # how to build the module again (bench --baseline torch)
        "torch_source": torch_source.to_json(),
        "exporter": f"torch {require('torch').__version__} {exported.exporter}, opset {exported.opset}",
    }
    _set_metadata(proto, base_meta)

    with atomic_output(output) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        if config.optimize:
            _optimize_offline(tmp, proto)
        report = validate(model, recipe, tmp)
        how = f"{exported.exporter} exporter"
        if exported.fallback_reason:
            how += f"; the dynamo exporter failed: {exported.fallback_reason}"
        if not report.passed:
            hint = ""
            if exported.exporter == "torchscript" and report.stage in ("shapes", "values"):
                hint = (" (the TorchScript exporter can bake example sizes into the graph, as it does for "
                        "nn.MultiheadAttention; the dynamo exporter keeps them symbolic)")
            raise EdgeDLError(f"export of {recipe.name} ({how}) is not faithful: {report.failure}{hint}")
        for name, reason in report.degenerate.items():
            line = f"validation proves nothing about output '{name}': {reason}"
            if config.strict:
                raise EdgeDLError(f"{line} (export of {recipe.name})",
                                  hint="export with real weights (a checkpoint) or with inputs in the value range "
                                       "the model expects, or accept a weak check without strict mode")
            say(line)
        if config.strict and exported.warnings:
            raise EdgeDLError(f"the TorchScript tracer warned while exporting {recipe.name}: {exported.warnings[0]}",
                              hint="accept the warning without strict mode once validation has checked it")
        final = onnx.load(str(tmp))
        _set_metadata(final, {**base_meta, "validation": report.summary()})
        stats = provenance.attach(final, origins)
        onnx.save_model(final, str(tmp), save_as_external_data=False)
    return ExportResult(output, exported.opset, output.stat().st_size, report, recipe.name, exported.exporter,
                        exported.fallback_reason, stats, notices,
                        {k: v for k, v in base_meta.items() if v is not None})


def _optimize_offline(path: Path, proto) -> None:
    """onnxruntime's basic-level graph optimizations, saved as a portable model (extended/all levels may fuse
    into provider-specific ops, so they are left to load time on the device)."""
    onnx = require("onnx")
    from edgedl.runtime import RunnerConfig, load_session

    optimized = path.with_name(path.stem + ".opt.onnx")
    try:
        load_session(str(path), RunnerConfig(graph_optimization="basic", optimized_model_path=str(optimized)))
        model = onnx.load(str(optimized))
        _set_metadata(model, meta_codec.decode({p.key: p.value for p in proto.metadata_props}))
        onnx.save_model(model, str(path), save_as_external_data=False)
    finally:
        optimized.unlink(missing_ok=True)
