"""Which execution provider actually ran each node, read from onnxruntime's profiling trace.

Session providers only say what was *registered*; the trace's per-node ``args.provider`` says what executed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from edgedl.runtime.providers import short_name


_SHAPE_TYPES = {"int64", "int32"}


def _is_shape_computation(args: dict[str, Any]) -> bool:
    """A node whose outputs are all small integer tensors computes shapes (onnxruntime deliberately keeps those
    on the CPU even under CUDA); anything producing floats is model compute."""
    outputs = args.get("output_type_shape") or []
    types = {t for out in outputs if isinstance(out, dict) for t in out}
    return bool(types) and types <= _SHAPE_TYPES and all(
        len(shape) <= 1 for out in outputs for shape in out.values() if isinstance(shape, list))


def parse_profile(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Profile events -> {'nodes': n, 'by_provider': {short: count}, 'ops_by_provider': {short: {op: count}},
    'shape_nodes_by_provider': {short: count}}."""
    seen: dict[str, tuple[str, str, bool]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        args = event.get("args") or {}
        provider = args.get("provider")
        if not provider:
            continue
        node = str(event["name"])[: -len("_kernel_time")]
        seen.setdefault(node, (short_name(provider), str(args.get("op_name", "?")), _is_shape_computation(args)))
    by_provider = Counter(p for p, _, _ in seen.values())
    shape_nodes = Counter(p for p, _, shape in seen.values() if shape)
    ops: dict[str, Counter] = {}
    for provider, op, _ in seen.values():
        ops.setdefault(provider, Counter())[op] += 1
    return {
        "nodes": len(seen),
        "by_provider": dict(by_provider.most_common()),
        "ops_by_provider": {p: dict(c.most_common()) for p, c in ops.items()},
        "shape_nodes_by_provider": dict(shape_nodes.most_common()),
    }


def profile_placement(make_runner: Callable[[], Any], run: Callable[[Any], object], runs: int = 3) -> dict[str, Any]:
    """Build a profiling runner (``make_runner``), run it ``runs`` times, parse and delete its trace.

    onnxruntime writes the trace into the working directory, so this happens inside a private temp dir.
    """
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgedl-profile-") as tmp:
        os.chdir(tmp)
        try:
            runner = make_runner()
            try:
                for _ in range(runs):
                    run(runner)
                path = runner.end_profiling()
            finally:
                runner.close()
            events = json.loads(Path(path).read_text()) if path else []
        finally:
            os.chdir(old)
    return parse_profile(events)


def foreign_nodes(placement: dict[str, Any], requested: str, count_shape_nodes: bool = False) -> dict[str, int]:
    """Compute nodes that ran on a provider other than the requested one: {provider: count}.

    Shape-computation nodes on the CPU are left out unless ``count_shape_nodes`` (onnxruntime places them there on
    purpose for GPU providers); they stay visible in ``shape_nodes_by_provider``.
    """
    want = short_name(requested)
    shape = {} if count_shape_nodes else placement.get("shape_nodes_by_provider", {})
    out = {}
    for p, n in placement.get("by_provider", {}).items():
        if p == want:
            continue
        n -= shape.get(p, 0) if p == "cpu" else 0
        if n > 0:
            out[p] = n
    return out
