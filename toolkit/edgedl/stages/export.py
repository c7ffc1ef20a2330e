"""Export a PyTorch model to one self-contained ONNX file and prove it faithful against PyTorch.

Flow: model source (a recipe, or ``file.py:Class`` with input specs) -> torch.onnx (dynamo) -> onnxslim ->
edgedl metadata -> optional onnxruntime offline optimization -> validation through ``edgedl.runtime`` ->
atomic move to the output path. Nothing is written at the output path unless validation passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgedl import __version__
from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.recipe import Recipe, TensorSpec, import_file, load_recipe
from edgedl.runtime import metadata as meta_codec
from edgedl.stages.files import atomic_output, writable_output
from edgedl.stages.opset import MIN_OPSET, default_opset, exporter_max_opset
from edgedl.stages.validate import ValidationReport, validate

_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}


@dataclass
class ExportConfig:
    output: Path
    checkpoint: Path | None = None
    opset: int | None = None  # None = default_opset()
    simplify: bool = True
    optimize: bool = False
    debug: bool = False


@dataclass
class ExportResult:
    onnx_path: Path
    opset: int
    size_bytes: int
    validation: ValidationReport
    recipe: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "onnx_path": str(self.onnx_path),
            "opset": self.opset,
            "size_bytes": self.size_bytes,
            "recipe": self.recipe,
            "validation": self.validation.to_json(),
            "metadata": self.metadata,
        }


# --- model sources -----------------------------------------------------------------------------------------
def parse_input_spec(text: str) -> TensorSpec:
    """'x=2x3x32x32' or 'ids=2x16:int64' -> TensorSpec with fixed example dims."""
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*=\s*(\d+(?:x\d+)*)\s*(?::\s*(\w+))?\s*", text)
    if not m:
        raise EdgeDLError(f"malformed --input '{text}'; use NAME=DIMS[:DTYPE], e.g. x=2x3x32x32 or ids=2x16:int64")
    name, dims, dtype = m.group(1), tuple(int(d) for d in m.group(2).split("x")), m.group(3) or "float32"
    if dtype not in _DTYPES:
        raise EdgeDLError(f"--input {name}: unknown dtype '{dtype}'; use one of {', '.join(sorted(_DTYPES))}")
    if any(d < 1 for d in dims):
        raise EdgeDLError(f"--input {name}: every dim must be >= 1, got {m.group(2)}")
    value_range = (0.0, 10.0) if np.dtype(dtype).kind in "iu" else (0.0, 1.0)
    return TensorSpec(name, dims, dtype, value_range)


def parse_dynamic_spec(text: str) -> tuple[str, dict[int, str]]:
    """'x=0:batch,2:seq' -> ('x', {0: 'batch', 2: 'seq'})."""
    m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*=\s*(.+)", text)
    axes: dict[int, str] = {}
    if m:
        for part in m.group(2).split(","):
            am = re.fullmatch(r"\s*(\d+)\s*:\s*([A-Za-z_]\w*)\s*", part)
            if not am:
                m = None
                break
            axes[int(am.group(1))] = am.group(2)
    if not m or not axes:
        raise EdgeDLError(f"malformed --dynamic '{text}'; use NAME=AXIS:label[,AXIS:label], e.g. x=0:batch,2:seq")
    return m.group(1), axes


def recipe_from_module(
    target: str, input_specs: list[str], dynamic_specs: list[str], output_names: list[str]
) -> Recipe:
    """Build an ad-hoc recipe for ``path/to/file.py:ClassName`` (constructed with no arguments)."""
    if ":" not in target:
        raise EdgeDLError(f"'{target}' is neither a recipe nor path/to/file.py:ClassName")
    file_part, _, class_name = target.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise EdgeDLError(f"model file not found: {path}; pass path/to/file.py:ClassName")
    if not class_name.isidentifier():
        raise EdgeDLError(f"'{class_name}' is not a class name; pass path/to/file.py:ClassName")
    module = import_file(path.resolve())
    cls = getattr(module, class_name, None)
    if cls is None:
        found = [n for n, v in vars(module).items() if isinstance(v, type) and hasattr(v, "forward")]
        raise EdgeDLError(f"{path} has no class '{class_name}'; modules found there: {', '.join(found) or 'none'}")
    if not input_specs:
        raise EdgeDLError("a module without a recipe needs --input NAME=DIMS[:DTYPE] for each forward() argument")
    specs = [parse_input_spec(s) for s in input_specs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EdgeDLError(f"duplicate --input names: {names}")
    dynamic: dict[str, dict[int, str]] = {}
    for text in dynamic_specs:
        name, axes = parse_dynamic_spec(text)
        if name not in names and name not in output_names:
            raise EdgeDLError(f"--dynamic names '{name}', which is neither an --input nor an --output")
        dynamic.setdefault(name, {}).update(axes)
    dim_examples: dict[str, tuple[int, int]] = {}
    inputs = []
    for spec in specs:
        shape: list[int | str] = list(spec.shape)
        for axis, label in dynamic.get(spec.name, {}).items():
            if axis >= len(shape):
                raise EdgeDLError(f"--dynamic {spec.name}: axis {axis} out of range for rank {len(shape)}")
            # size-1 examples are silently specialized by the exporter: export at >= 2, check at another size
            first = max(2, int(shape[axis]))
            if label in dim_examples and dim_examples[label][0] != first:
                raise EdgeDLError(f"--input sizes disagree on dynamic dim '{label}' ({dim_examples[label][0]} vs "
                                  f"{shape[axis]} in {spec.name}); give every input the same example size for it")
            dim_examples.setdefault(label, (first, first + 3))
            shape[axis] = label
        inputs.append(TensorSpec(spec.name, tuple(shape), spec.dtype, spec.value_range))
    outputs = []
    for name in output_names:
        axes = dynamic.get(name, {})
        for label in axes.values():
            if label not in dim_examples:
                raise EdgeDLError(f"--dynamic {name}: '{label}' is not a dynamic dim of any input")
        outputs.append(TensorSpec(name, None, "float32") if not axes else
                       TensorSpec(name, tuple(axes.get(i, -1) for i in range(max(axes) + 1)), "float32"))
    recipe = Recipe(name=class_name, build=cls, inputs=inputs, outputs=outputs, dim_examples=dim_examples,
                    source=f"{path.resolve()}:{class_name}")
    return recipe


def resolve_source(target: str, input_specs: list[str], dynamic_specs: list[str], output_names: list[str]) -> Recipe:
    if ":" in target and not Path(target).exists():
        return recipe_from_module(target, input_specs, dynamic_specs, output_names)
    if input_specs or dynamic_specs:
        raise EdgeDLError("--input/--dynamic are for path/to/file.py:ClassName; a recipe declares its own inputs")
    return load_recipe(target)


# --- export ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(debug: bool):
    """The exporter prints progress and torchvision notices and warns a lot; keep the CLI clean unless --debug."""
    if debug:
        yield
        return
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_export(model, recipe: Recipe, opset: int, debug: bool):
    torch = require("torch")
    require("onnxscript")
    sizes = recipe.validation_sizes()[0]
    example = recipe.make_inputs(sizes, seed=0)
    args = tuple(torch.from_numpy(example[n]) for n in recipe.input_names)
    dynamic_axes = {s.name: s.dynamic_axes for s in recipe.inputs + recipe.outputs if s.shape and s.dynamic_axes}
    output_names = recipe.output_names or None
    try:
        with _quiet(debug), torch.no_grad():
            program = torch.onnx.export(
                model, args, None, input_names=recipe.input_names, output_names=output_names,
                opset_version=opset, dynamo=True, external_data=False, dynamic_axes=dynamic_axes or None,
                optimize=True, verbose=False,
            )
            return program.model_proto
    except EdgeDLError:
        raise
    except Exception as exc:
        raise EdgeDLError(f"torch could not export {recipe.name}: {_explain_export_failure(exc)} "
                          "(run with --debug for the full trace)") from exc


def _explain_export_failure(exc: BaseException) -> str:
    """One line from the exporter's page-long error: the root cause and the user's line that raised it."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    strip = lambda text: re.sub(r"\x1b\[[0-9;]*m", "", text)  # noqa: E731 - ANSI colours
    lines = [ln.strip() for ln in strip(str(root)).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if first.endswith(":") and len(lines) > 1:  # "Found the following conflicts ...:" -> add the conflict
        first = f"{first} {lines[1].lstrip('- ')}"
    where = ""
    match = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s*(.+)', strip(str(exc)))
    if match:
        where = f" at {Path(match.group(1)).name}:{match.group(2)} `{match.group(3).strip()}`"
    hint = ""
    if "data-dependent" in first:
        hint = "; replace Python control flow on tensor values with torch.where/torch.cond"
    return f"{type(root).__name__}: {first[:400]}{where}{hint}"


def _strip_bloat(model) -> None:
    """Drop per-node stack traces and doc strings the dynamo exporter leaves (tens of KB on small models)."""
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
    keep = [p for p in model.metadata_props if not p.key.startswith(meta_codec.PREFIX)]
    del model.metadata_props[:]
    for p in keep:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in meta_codec.encode(values).items():
        model.metadata_props.add(key=key, value=value)


def export(recipe: Recipe, config: ExportConfig) -> ExportResult:
    torch = require("torch")
    onnx = require("onnx")
    output = Path(config.output)
    if output.suffix != ".onnx":
        raise EdgeDLError(f"output path {output} must end in .onnx")
    if output.is_dir():
        raise EdgeDLError(f"output path {output} is a directory; pass a file path ending in .onnx")
    writable_output(output, "output path")  # before torch traces anything
    protected = [Path(recipe.source.rsplit(":", 1)[0]) if recipe.source else None, config.checkpoint]
    for path in protected:
        if path is not None and output.resolve() == Path(path).resolve():
            raise EdgeDLError(f"output path {output} would overwrite the {'checkpoint' if path == config.checkpoint else 'model source'}; choose another -o")
    if config.checkpoint is not None and Path(config.checkpoint).is_dir() and output.resolve() == (Path(config.checkpoint) / "model.safetensors").resolve():
        raise EdgeDLError(f"output path {output} would overwrite the checkpoint; choose another -o")

    top = exporter_max_opset()
    opset = config.opset if config.opset is not None else default_opset()
    if not MIN_OPSET <= opset <= top:
        raise EdgeDLError(f"--opset {opset} is out of range: this exporter supports {MIN_OPSET}..{top}")

    metrics = None
    checkpoint_hash = None
    if config.checkpoint is not None:
        from edgedl.stages.train import checkpoint_metrics, load_weights

        model, weights_file = load_weights(recipe, Path(config.checkpoint))
        metrics = checkpoint_metrics(Path(config.checkpoint))
        checkpoint_hash = _sha256(weights_file)
    else:
        try:
            torch.manual_seed(0)
            model = recipe.build().eval()
        except Exception as exc:
            raise EdgeDLError(f"constructing {recipe.name}() failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, torch.nn.Module):
            raise EdgeDLError(f"{recipe.name}() did not return a torch.nn.Module")

    proto = _torch_export(model, recipe, opset, config.debug)
    if config.simplify:
        onnxslim = require("onnxslim")
        with _quiet(config.debug):
            proto = onnxslim.slim(proto)
    _strip_bloat(proto)
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
        "checkpoint": str(Path(config.checkpoint).resolve()) if config.checkpoint else None,
        "checkpoint_sha256": checkpoint_hash,
        "exporter": f"torch {torch.__version__} dynamo, opset {opset}",
    }
    _set_metadata(proto, base_meta)

    with atomic_output(output) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        if config.optimize:
            _optimize_offline(tmp, proto)
        report = validate(model, recipe, tmp)
        if not report.passed:
            raise EdgeDLError(f"export of {recipe.name} is not faithful: {report.failure}")
        final = onnx.load(str(tmp))
        _set_metadata(final, {**base_meta, "validation": report.summary()})
        onnx.save_model(final, str(tmp), save_as_external_data=False)
    return ExportResult(output, opset, output.stat().st_size, report, recipe.name,
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
