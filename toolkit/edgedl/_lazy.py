"""Lazy import of heavy optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgedl.errors import EdgeDLError

# module -> the pyproject extra that provides it
_EXTRA_OF = {
    "torch": "export",
    "onnx": "export",
    "onnxscript": "export",
    "onnxslim": "export",
    "sklearn": "train",
    "safetensors": "train",
    "onnxruntime.quantization": "quantize",
    "onnxruntime.transformers.float16": "quantize",
    "PIL": "quantize",
    "matplotlib": "plot",
    "rich": "cli",
}


def extra_of(module: str) -> str | None:
    """The extra that provides ``module`` (or its top-level package), or None when it is not edgedl's."""
    return _EXTRA_OF.get(module) or _EXTRA_OF.get(module.split(".")[0])


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an EdgeDLError saying which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra_of(module) or "all"
        raise EdgeDLError(
            f"{module} is not installed ({exc}); install it with: pip install 'edgedl[{extra}]'"
        ) from exc
