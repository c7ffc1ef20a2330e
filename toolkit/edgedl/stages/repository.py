"""A model repository in Triton's layout - what a bundle's ``models/`` and ``edgedl package --format triton|kserve``
both write, and what ``edgedl serve --model-repository`` reads::

    REPO/NAME/config.pbtxt       text form of Triton's inference.ModelConfig
    REPO/NAME/VERSION/model.onnx
    REPO/NAME/labels.txt         when the model's metadata has class labels (Triton's classification extension)

One home for what both writers share: the model names of a repository, loading a model file a repository may
hold (:func:`load_model`), writing the models into one with each ``config.pbtxt`` validated against Triton's own
``ModelConfig`` and the model (:func:`populate_repository`, used by the Triton and KServe writers), and the text of
a ``config.pbtxt`` (:func:`config_text`), derived from the model
itself: input/output names and data types; when every input and output has the same dynamic first axis, that axis
is Triton's batch dimension (``max_batch_size`` > 0, ``dims`` without it, ``dynamic_batching`` on request);
otherwise ``max_batch_size: 0`` and full dims (-1 for a dynamic axis).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.tensors import dtype_of_onnx

INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": "KIND_AUTO"}
PLATFORM = "onnxruntime_onnx"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # \Z: a trailing newline is not part of a name


def load_model(path: Path):
    """A Runner for an ``.onnx`` file a repository can hold: it exists, is one file (no external weights) and
    onnxruntime loads it. The one loader of ``edgedl package`` (every format)."""
    from edgedl.runtime import load

    path = Path(path)
    if not path.is_file():
        raise EdgeDLError(f"model {path} does not exist; pass the path of an .onnx file")
    if path.suffix != ".onnx":
        raise EdgeDLError(f"{path} is not an .onnx file; export it first with `edgedl export`")
    if (path.parent / f"{path.name}.data").exists():
        raise EdgeDLError(f"{path} keeps its weights in external data ({path.name}.data); re-export it as one file "
                          "(edgedl export writes single files)")
    try:
        return load(path)
    except EdgeDLError:
        raise
    except Exception as exc:  # onnxruntime's own load error: a corrupt or non-ONNX file
        raise EdgeDLError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None


def model_names(models: list[Path], names: list[str] | None) -> list[str]:
    """The repository names of ``models``: ``names`` (one per model) or the file stems; usable and distinct."""
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


def model_labels(runner) -> list | None:
    """The class labels a model's metadata carries (a non-empty list), else None."""
    labels = runner.metadata.get("labels")
    return labels if isinstance(labels, list) and labels else None


@dataclass(frozen=True)
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

    def to_json(self) -> dict:
        return {**asdict(self), "preferred_batch_sizes": list(self.preferred_batch_sizes)}


@dataclass(frozen=True)
class TritonTensor:
    name: str
    data_type: str
    dims: list[int]


@dataclass(frozen=True)
class TritonModelReport:
    """What a config.pbtxt says about one model, and where it was written."""

    name: str
    path: str
    config: str
    max_batch_size: int
    batch_axis: str | None
    dynamic_batching: bool
    inputs: list[TritonTensor]
    outputs: list[TritonTensor]
    labels: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def triton_type(model: str, tensor) -> str:
    """Triton's data type of a model's tensor (from the runtime's one dtype table)."""
    row = dtype_of_onnx(tensor.onnx_type)
    if row is None:
        raise EdgeDLError(f"{model}: tensor {tensor.name!r} has type {tensor.onnx_type}, which Triton's ONNX backend "
                          "cannot take; cast it in the model before exporting")
    return row.triton


def batch_axis(tensors) -> str | None:
    """The shared dynamic first axis of all tensors (Triton's implicit batch dimension), or None."""
    firsts = {t.shape[0] if t.shape else None for t in tensors}
    if len(firsts) == 1:
        (axis,) = firsts
        if isinstance(axis, str):
            return axis
    return None


def triton_dims(shape, batched: bool) -> list[int]:
    dims = [d if isinstance(d, int) else -1 for d in shape]
    return dims[1:] if batched else dims


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text-format string


def config_text(name: str, runner, options: TritonOptions | None, labels: list | None = None,
                labels_file: str = "labels.txt") -> tuple[str, TritonModelReport | None]:
    """config.pbtxt text for a loaded edgedl Runner (its inputs/outputs) and a report of what was derived.

    ``options=None``: the model's name and platform only (a bundle's repository: ``edgedl serve``'s own options
    decide batching and instances there, and Triton completes the rest from the model); no report."""
    head = [f"name: {_quote(name)}", f"platform: {_quote(PLATFORM)}"]
    if options is None:
        return "\n".join(head) + "\n", None
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
    lines = [*head, f"max_batch_size: {options.max_batch_size if batched else 0}"]
    label_output = None
    if labels:  # Triton's classification extension: labels for the output whose last axis has one per class
        label_output = next((t.name for t in runner.outputs if t.shape and t.shape[-1] == len(labels)), None)
    for kind, items in (("input", runner.inputs), ("output", runner.outputs)):
        lines.append(f"{kind} [")
        for i, t in enumerate(items):
            label = f", label_filename: {_quote(labels_file)}" if kind == "output" and t.name == label_output else ""
            sep = "," if i < len(items) - 1 else ""
            lines.append(f"  {{ name: {_quote(t.name)}, data_type: {triton_type(name, t)}, "
                         f"dims: [ {', '.join(map(str, triton_dims(t.shape, batched)))} ]{label} }}{sep}")
        lines.append("]")
    if dynamic:
        pref = (f"  preferred_batch_size: [ {', '.join(map(str, options.preferred_batch_sizes))} ]\n"
                if options.preferred_batch_sizes else "")
        lines.append(f"dynamic_batching {{\n{pref}  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}")
    lines.append(f"instance_group [ {{ count: {options.instance_count}, kind: {INSTANCE_KINDS[options.instance_kind]} }} ]")
    lines.append(f"version_policy: {{ specific: {{ versions: [ {options.version} ] }} }}")
    describe = lambda ts: [TritonTensor(t.name, triton_type(name, t), triton_dims(t.shape, batched))  # noqa: E731
                           for t in ts]
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
    if config.platform != PLATFORM:
        problems.append(f"platform {config.platform!r} is not {PLATFORM}")
    batched = config.max_batch_size > 0
    for kind, declared, actual in (("input", config.input, runner.inputs), ("output", config.output, runner.outputs)):
        by_name = {t.name: t for t in declared}
        if set(by_name) != {t.name for t in actual}:
            problems.append(f"{kind}s {sorted(by_name)} != model {sorted(t.name for t in actual)}")
            continue
        for t in actual:
            got = by_name[t.name]
            want_type = triton_type(name, t)
            if model_config_pb2.DataType.Name(got.data_type) != want_type:
                problems.append(f"{kind} {t.name}: {model_config_pb2.DataType.Name(got.data_type)} != {want_type}")
            if list(got.dims) != triton_dims(t.shape, batched):
                problems.append(f"{kind} {t.name}: dims {list(got.dims)} != {triton_dims(t.shape, batched)}")
    if config.HasField("dynamic_batching") and not batched:
        problems.append("dynamic_batching with max_batch_size 0")
    if problems:
        raise EdgeDLError(f"config.pbtxt for {name} does not match the model: {'; '.join(problems)}")


def populate_repository(models: list[Path], repo: Path, options: TritonOptions, names: list[str] | None = None) -> list[TritonModelReport]:
    """Write the models into the (existing, empty) directory ``repo``; validate every config.pbtxt."""
    reports = []
    for src, name in zip(models, model_names(models, names)):
        src = Path(src)
        runner = load_model(src)
        labels = model_labels(runner)
        text, report = config_text(name, runner, options, labels)
        check_model_config(parse_model_config(text, f"{name}/config.pbtxt"), runner, name)
        model_dir = repo / name
        (model_dir / str(options.version)).mkdir(parents=True)
        shutil.copyfile(src, model_dir / str(options.version) / "model.onnx")
        (model_dir / "config.pbtxt").write_text(text)
        if report.labels:
            (model_dir / "labels.txt").write_text("\n".join(map(str, labels)) + "\n")
        reports.append(replace(report, path=str(model_dir / str(options.version) / "model.onnx"),
                               config=str(model_dir / "config.pbtxt")))
    return reports


def moved(reports: list[TritonModelReport], staging: Path, out: Path) -> list[TritonModelReport]:
    """The reports of models written under ``staging``, with their paths where ``staging`` was renamed to."""
    return [replace(r, path=r.path.replace(str(staging), str(out), 1), config=r.config.replace(str(staging), str(out), 1))
            for r in reports]
