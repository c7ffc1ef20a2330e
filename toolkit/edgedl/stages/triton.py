"""Scale-out export: a Triton Inference Server model repository from ONNX models (the layout and the config.pbtxt
text: :mod:`edgedl.stages.repository`).

Every config.pbtxt written is validated by parsing it into Triton's own ``ModelConfig`` protobuf
(``tritonclient[grpc]``, a packaging-side dependency, imported lazily) and by checking it against the model; a
model that fails is never written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.stages.files import atomic_output_dir, fresh_output_dir
from edgedl.stages.repository import (PLATFORM, TritonModelReport, TritonOptions, config_text, load_model, model_labels,
                                      model_names, triton_dims, triton_type)


@dataclass(frozen=True)
class TritonRepository:
    """What ``write_triton_repository`` wrote."""

    repository: str
    options: TritonOptions
    models: list[TritonModelReport]
    format: str = "triton"

    def to_json(self) -> dict:
        return {"format": self.format, "repository": self.repository, "options": self.options.to_json(),
                "models": [m.to_json() for m in self.models]}


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


def write_triton_repository(models: list[Path], out_dir: Path, options: TritonOptions | None = None,
                            names: list[str] | None = None) -> TritonRepository:
    """Create the Triton model repository ``out_dir`` (must not exist or be empty).
    Written into a staging directory next to it and renamed at the end: a failure leaves nothing behind."""
    options = options or TritonOptions()
    if not models:
        raise EdgeDLError("give at least one MODEL.onnx")
    out = fresh_output_dir(Path(out_dir))
    with atomic_output_dir(out) as staging:
        reports = populate_repository(models, staging, options, names)
    return TritonRepository(repository=str(out), options=options, models=moved(reports, staging, out))
