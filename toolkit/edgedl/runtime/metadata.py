"""edgedl's keys in an ONNX model's ``metadata_props`` (written by export, read by every later stage)."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "edgedl."
# keys whose values are JSON documents; every other edgedl.* key is a plain string
JSON_KEYS = {"inputs", "outputs", "labels", "preprocessing", "metrics", "training", "validation", "quantization",
             "torch_source", "provenance", "optimization"}


def encode(meta: dict[str, Any]) -> dict[str, str]:
    """{'labels': [...], 'version': '0.1'} -> {'edgedl.labels': '[...]', 'edgedl.version': '0.1'}"""
    out = {}
    for key, value in meta.items():
        if value is None:
            continue
        out[PREFIX + key] = json.dumps(value, sort_keys=True) if key in JSON_KEYS else str(value)
    return out


def decode(props: dict[str, str]) -> dict[str, Any]:
    """Inverse of encode; non-edgedl keys are ignored, a malformed JSON value is kept as the raw string."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):]
        if name in JSON_KEYS:
            try:
                out[name] = json.loads(value)
            except ValueError:
                out[name] = value
        else:
            out[name] = value
    return out
