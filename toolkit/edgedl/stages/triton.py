"""Scale-out export: a Triton Inference Server model repository from ONNX models (the layout, the config.pbtxt
text and its validation: :mod:`edgedl.stages.repository`, which the KServe writer shares).

Every config.pbtxt written is validated by parsing it into Triton's own ``ModelConfig`` protobuf
(``tritonclient[grpc]``, a packaging-side dependency, imported lazily) and by checking it against the model; a
model that fails is never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.stages.files import atomic_output_dir, fresh_output_dir
from edgedl.stages.repository import TritonModelReport, TritonOptions, moved, populate_repository


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
