"""Which ONNX opset to export at: the newest that both the exporter and the installed onnxruntime support."""

from __future__ import annotations

from functools import lru_cache

MIN_OPSET = 17


@lru_cache(maxsize=1)
def onnxruntime_max_opset() -> int:
    """Newest default-domain opset for which every non-deprecated op onnxruntime's CPU EP implements has a kernel
    matching that opset's schema (read from onnxruntime's kernel registry, not from a hand-kept table)."""
    import onnx.defs
    from onnxruntime.capi import _pybind_state as C

    ranges: dict[str, list[tuple[int, int]]] = {}
    for kernel in C.get_all_opkernel_def():
        if kernel.domain in ("", "ai.onnx") and kernel.provider == "CPUExecutionProvider":
            ranges.setdefault(kernel.op_name, []).append(tuple(kernel.version_range))
    best = MIN_OPSET
    for opset in range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1):
        for op, spans in ranges.items():
            try:
                schema = onnx.defs.get_schema(op, opset, "")
            except Exception:  # op not defined at this opset
                continue
            if schema.deprecated:
                continue
            if not any(lo <= schema.since_version <= hi for lo, hi in spans):
                return best
        best = opset
    return best


def exporter_max_opset(exporter: str = "dynamo") -> int:
    """Newest opset torch's exporter writes: the dynamo one builds at any opset torch knows, the TorchScript one
    stops earlier (20 in torch 2.13)."""
    from torch.onnx import _constants

    top = int(getattr(_constants, "ONNX_MAX_OPSET", 20))
    if exporter == "torchscript":
        return min(top, int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)))
    return top


def default_opset() -> int:
    return min(onnxruntime_max_opset(), exporter_max_opset())
