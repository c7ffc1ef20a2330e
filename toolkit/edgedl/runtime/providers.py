"""The table of onnxruntime execution providers: short names, full names, "did you mean"."""

from __future__ import annotations

import difflib

from edgedl.errors import EdgeDLError

# short name -> onnxruntime's provider name. One table; everything dispatches through it.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "cann": "CANNExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
    "azure": "AzureExecutionProvider",
}
ALIASES = {"trt": "tensorrt", "directml": "dml", "onednn": "dnnl", "gpu": "cuda"}
_SHORT_OF = {full.lower(): short for short, full in PROVIDERS.items()}


def resolve_provider(name: str) -> str:
    """Map a short or full provider name (any case) to onnxruntime's name, or fail with a suggestion."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in PROVIDERS:
        return PROVIDERS[key]
    if key in _SHORT_OF:
        return PROVIDERS[_SHORT_OF[key]]
    if key.endswith("executionprovider") and key[: -len("executionprovider")] in PROVIDERS:
        return PROVIDERS[key[: -len("executionprovider")]]
    known = list(PROVIDERS) + list(PROVIDERS.values())
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5) or difflib.get_close_matches(
        key, list(PROVIDERS), n=1, cutoff=0.5
    )
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise EdgeDLError(f"unknown execution provider '{name}'; {hint}known: {', '.join(PROVIDERS)}")


def short_name(provider: str) -> str:
    """'CUDAExecutionProvider' -> 'cuda' (unknown names are returned unchanged)."""
    return _SHORT_OF.get(provider.lower(), provider)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())
