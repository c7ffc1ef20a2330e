"""Reading an ONNX file from the user, with errors they can act on: shared by inspect (describes any ONNX file) and
quantize (checks its input)."""

from __future__ import annotations

from pathlib import Path

from edgedl._lazy import require
from edgedl.errors import EdgeDLError


def load_onnx(path: Path, what: str = "model"):
    """onnx.load with errors a user can act on (missing file, not ONNX, missing external data)."""
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise EdgeDLError(f"{what} file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise EdgeDLError(f"{path} is not an ONNX model ({type(exc).__name__}); pass a .onnx file") from exc
