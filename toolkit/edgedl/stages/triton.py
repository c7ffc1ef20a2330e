"""Scale-out export: a Triton Inference Server model repository from ONNX models.

Layout written (the same one ``edgedl serve --model-repository`` reads)::

    REPO/NAME/config.pbtxt       text form of Triton's inference.ModelConfig
    REPO/NAME/1/model.onnx
    REPO/NAME/labels.txt         when the model's metadata has class labels (Triton's classification extension)

``config.pbtxt`` is derived from the model itself (edgedl.runtime metadata): input/output names and data types;
when every input and output has the same dynamic first axis, that axis is Triton's batch dimension
(``max_batch_size`` > 0, ``dims`` without it, ``dynamic_batching`` on request); otherwise ``max_batch_size: 0``
and full dims (-1 for a dynamic axis). Every file written is validated by parsing it into Triton's own
``ModelConfig`` protobuf (``tritonclient[grpc]``, a packaging-side dependency, imported lazily) and by checking it
against the model; a model that fails is never written.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.stages.files import atomic_output_dir

# numpy dtype name (or onnx tensor type) -> Triton data type
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64", "object": "TYPE_STRING",
    "str": "TYPE_STRING", "bfloat16": "TYPE_BF16",
}
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": "KIND_AUTO"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # \Z: a trailing newline is not part of a name


@dataclass
class TritonOptions:
    """What a config.pbtxt takes from the user; everything else comes from the model."""

    max_batch_size: int = 8  # used only when the model has a dynamic batch axis
    dynamic_batching: bool = True
    max_queue_delay_us: int = 100
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_count: int = 1
    instance_kind: str = "cpu"  # cpu | gpu | auto
    version: int = 1

    def __post_init__(self) -> None:
        if self.instance_kind not in INSTANCE_KINDS:
            from difflib import get_close_matches

            near = get_close_matches(self.instance_kind, INSTANCE_KINDS, n=1)
            hint = f" - did you mean {near[0]!r}?" if near else ""
            raise EdgeDLError(f"instance kind {self.instance_kind!r} is unknown; use one of "
                              f"{', '.join(INSTANCE_KINDS)}{hint}")
        for name in ("max_batch_size", "max_queue_delay_us"):
            if getattr(self, name) < 0:
                raise EdgeDLError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.instance_count < 1:
            raise EdgeDLError(f"--instances must be >= 1, got {self.instance_count}")
        if self.version < 1:
            raise EdgeDLError(f"model version must be >= 1 (Triton version folders are positive integers), got {self.version}")
        bad = [b for b in self.preferred_batch_sizes if not 0 < b <= max(self.max_batch_size, 0)]
        if bad:
            raise EdgeDLError(f"preferred batch sizes {bad} must be between 1 and --max-batch-size {self.max_batch_size}")


@dataclass
class TritonModelReport:
    name: str
    path: str
    config: str
    max_batch_size: int
    batch_axis: str | None
    dynamic_batching: bool
    inputs: list[dict]
    outputs: list[dict]
    labels: str | None = None
    notes: list[str] = field(default_factory=list)


def _triton_type(name: str, tensor) -> str:
    key = "object" if "string" in tensor.onnx_type else tensor.dtype.name
    if key not in TRITON_TYPES:
        raise EdgeDLError(f"{name}: tensor {tensor.name!r} has type {tensor.onnx_type}, which Triton's ONNX backend "
                          "cannot take; cast it in the model before exporting")
    return TRITON_TYPES[key]


def batch_axis(tensors) -> str | None:
    """The shared dynamic first axis of all tensors (Triton's implicit batch dimension), or None."""
    firsts = {t.shape[0] if t.shape else None for t in tensors}
    if len(firsts) == 1:
        (axis,) = firsts
        if isinstance(axis, str):
            return axis
    return None


def _dims(shape, batched: bool) -> list[int]:
    dims = [d if isinstance(d, int) else -1 for d in shape]
    return dims[1:] if batched else dims


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text-format string


def config_text(name: str, runner, options: TritonOptions, labels: list | None = None,
                labels_file: str = "labels.txt") -> tuple[str, TritonModelReport]:
    """config.pbtxt text for a loaded edgedl Runner (its inputs/outputs) and a report of what was derived."""
    tensors = [*runner.inputs, *runner.outputs]
    axis = batch_axis(tensors)
    notes: list[str] = []
    batched = axis is not None and options.max_batch_size > 0
    if axis is None and options.max_batch_size > 0:
        notes.append("no dynamic batch axis shared by every input and output: max_batch_size 0, full dims")
    if axis is not None and options.max_batch_size == 0:
        notes.append(f"--max-batch-size 0: the dynamic axis {axis!r} is kept as a -1 dim, no batching by Triton")
    dynamic = batched and options.dynamic_batching
    if options.dynamic_batching and not batched:
        notes.append("dynamic batching needs max_batch_size > 0: not enabled")
    lines = [f"name: {_quote(name)}", 'platform: "onnxruntime_onnx"',
             f"max_batch_size: {options.max_batch_size if batched else 0}"]
    label_output = None
    if labels:  # Triton's classification extension: labels for the output whose last axis has one per class
        label_output = next((t.name for t in runner.outputs if t.shape and t.shape[-1] == len(labels)), None)
    for kind, items in (("input", runner.inputs), ("output", runner.outputs)):
        lines.append(f"{kind} [")
        for i, t in enumerate(items):
            label = f", label_filename: {_quote(labels_file)}" if kind == "output" and t.name == label_output else ""
            sep = "," if i < len(items) - 1 else ""
            lines.append(f"  {{ name: {_quote(t.name)}, data_type: {_triton_type(name, t)}, "
                         f"dims: [ {', '.join(map(str, _dims(t.shape, batched)))} ]{label} }}{sep}")
        lines.append("]")
    if dynamic:
        pref = (f"  preferred_batch_size: [ {', '.join(map(str, options.preferred_batch_sizes))} ]\n"
                if options.preferred_batch_sizes else "")
        lines.append(f"dynamic_batching {{\n{pref}  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}")
    lines.append(f"instance_group [ {{ count: {options.instance_count}, kind: {INSTANCE_KINDS[options.instance_kind]} }} ]")
    lines.append(f"version_policy: {{ specific: {{ versions: [ {options.version} ] }} }}")
    describe = lambda ts: [{"name": t.name, "data_type": _triton_type(name, t),  # noqa: E731
                            "dims": _dims(t.shape, batched)} for t in ts]
    report = TritonModelReport(name=name, path="", config="", max_batch_size=options.max_batch_size if batched else 0,
                               batch_axis=axis if batched else None, dynamic_batching=dynamic,
                               inputs=describe(runner.inputs), outputs=describe(runner.outputs),
                               labels=labels_file if label_output else None, notes=notes)
    return "\n".join(lines) + "\n", report


def parse_model_config(text: str, where: str = "config.pbtxt"):
    """Parse config.pbtxt text into Triton's ModelConfig protobuf; a one-line EdgeDLError when it does not parse."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise EdgeDLError(f"validating Triton configs needs tritonclient[grpc] ({exc}); install it with: "
                          "pip install 'edgedl[triton]'") from None
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise EdgeDLError(f"{where} is not a valid Triton ModelConfig: {exc}") from None
    return config


def check_model_config(config, runner, name: str) -> None:
    """The parsed ModelConfig agrees with the model: name, platform, every tensor with its type and dims."""
    from tritonclient.grpc import model_config_pb2

    problems = []
    if config.name != name:
        problems.append(f"name {config.name!r} is not the directory name {name!r}")
    if config.platform != "onnxruntime_onnx":
        problems.append(f"platform {config.platform!r} is not onnxruntime_onnx")
    batched = config.max_batch_size > 0
    for kind, declared, actual in (("input", config.input, runner.inputs), ("output", config.output, runner.outputs)):
        by_name = {t.name: t for t in declared}
        if set(by_name) != {t.name for t in actual}:
            problems.append(f"{kind}s {sorted(by_name)} != model {sorted(t.name for t in actual)}")
            continue
        for t in actual:
            got = by_name[t.name]
            want_type = _triton_type(name, t)
            if model_config_pb2.DataType.Name(got.data_type) != want_type:
                problems.append(f"{kind} {t.name}: {model_config_pb2.DataType.Name(got.data_type)} != {want_type}")
            if list(got.dims) != _dims(t.shape, batched):
                problems.append(f"{kind} {t.name}: dims {list(got.dims)} != {_dims(t.shape, batched)}")
    if config.HasField("dynamic_batching") and not batched:
        problems.append("dynamic_batching with max_batch_size 0")
    if problems:
        raise EdgeDLError(f"config.pbtxt for {name} does not match the model: {'; '.join(problems)}")


def _load(path: Path):
    from edgedl.runtime import load

    if not path.is_file():
        raise EdgeDLError(f"model {path} does not exist; pass the path of an .onnx file")
    if path.suffix != ".onnx":
        raise EdgeDLError(f"{path} is not an .onnx file; export it first with `edgedl export`")
    if (path.parent / f"{path.name}.data").exists():
        raise EdgeDLError(f"{path} keeps its weights in external data ({path.name}.data); re-export it as one file")
    try:
        return load(path)
    except EdgeDLError:
        raise
    except Exception as exc:  # onnxruntime's own load error: a corrupt or non-ONNX file
        raise EdgeDLError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None


def model_names(models: list[Path], names: list[str] | None) -> list[str]:
    names = list(names or []) or [Path(p).stem for p in models]
    if len(names) != len(models):
        raise EdgeDLError(f"{len(names)} --name values for {len(models)} models; give one name per model")
    for n in names:
        if not _NAME_RE.match(n):
            raise EdgeDLError(f"model name {n!r} is not usable in a model repository; use letters, digits, '_', '-', '.'")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EdgeDLError(f"two models would both be named {dupes[0]!r}; rename one or pass --name for each model")
    return names


def _fresh_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgeDLError(f"{out} already exists and is not empty; choose another -o or remove it (nothing was written)")


def populate_repository(models: list[Path], repo: Path, options: TritonOptions, names: list[str] | None = None) -> list[TritonModelReport]:
    """Write the models into the (existing, empty) directory ``repo``; validate every config.pbtxt."""
    reports = []
    for src, name in zip(models, model_names(models, names)):
        src = Path(src)
        runner = _load(src)
        labels = runner.metadata.get("labels")
        labels = labels if isinstance(labels, list) and labels else None
        text, report = config_text(name, runner, options, labels)
        check_model_config(parse_model_config(text, f"{name}/config.pbtxt"), runner, name)
        model_dir = repo / name
        (model_dir / str(options.version)).mkdir(parents=True)
        shutil.copyfile(src, model_dir / str(options.version) / "model.onnx")
        (model_dir / "config.pbtxt").write_text(text)
        if report.labels:
            (model_dir / "labels.txt").write_text("\n".join(map(str, labels)) + "\n")
        report.path = str(model_dir / str(options.version) / "model.onnx")
        report.config = str(model_dir / "config.pbtxt")
        reports.append(report)
    return reports


def write_triton_repository(models: list[Path], out_dir: Path, options: TritonOptions | None = None,
                            names: list[str] | None = None) -> dict:
    """Create the Triton model repository ``out_dir`` (must not exist or be empty); return a report dict.
    Written into a staging directory next to it and renamed at the end: a failure leaves nothing behind."""
    options = options or TritonOptions()
    if not models:
        raise EdgeDLError("give at least one MODEL.onnx")
    out = Path(out_dir)
    _fresh_output(out)
    with atomic_output_dir(out) as staging:
        reports = populate_repository(models, staging, options, names)
    for r in reports:
        r.path = r.path.replace(str(staging), str(out), 1)
        r.config = r.config.replace(str(staging), str(out), 1)
    return {"format": "triton", "repository": str(out), "options": asdict(options),
            "models": [asdict(r) for r in reports]}
