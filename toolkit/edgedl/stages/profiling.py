"""onnxruntime's profiling trace, read once: the kernels that ran (node, op, provider, types, duration) and the
runs they belong to; and, built on that, which execution provider actually ran each node.

Session providers only say what was *registered*; the trace's per-node ``args.provider`` says what executed.
Shared by bench and doctor (where each node ran) and ``edgedl debug speed`` (per-operator times from the same
events, ``edgedl.stages.debug.profile``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from edgedl.runtime.providers import short_name

_SHAPE_TYPES = {"int64", "int32"}
_KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class KernelEvent:
    """One kernel execution in the trace. Times are whole microseconds, as onnxruntime records them (truncated).

    ``inputs``/``outputs`` are (element type, shape) pairs in the order onnxruntime lists them: inputs it no longer
    holds (an absent optional input, a weight it pre-packed) are left out, so positions are not the op's own."""

    node: str
    op_type: str
    provider: str  # short name: cpu, cuda, ...
    start_us: int
    dur_us: int
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def shape_computation(self) -> bool:
        """A node whose outputs are all small integer tensors computes shapes (onnxruntime deliberately keeps those
        on the CPU even under CUDA); anything producing floats is model compute."""
        types = {t for t, _ in self.outputs}
        return bool(types) and types <= _SHAPE_TYPES and all(len(shape) <= 1 for _, shape in self.outputs)


def _typed(entries: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    out = []
    for entry in entries or []:
        if isinstance(entry, dict):
            for dtype, shape in entry.items():
                out.append((str(dtype), tuple(int(d) for d in shape) if isinstance(shape, list) else ()))
    return tuple(out)


def kernel_events(events: list[dict[str, Any]]) -> list[KernelEvent]:
    """The trace's kernel executions (``cat == "Node"``, ``*_kernel_time``) that name a provider, in trace order."""
    out = []
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX):
            continue
        args = event.get("args") or {}
        provider = args.get("provider")
        if not provider:
            continue
        out.append(KernelEvent(node=name[: -len(_KERNEL_SUFFIX)], op_type=str(args.get("op_name", "?")),
                               provider=short_name(provider), start_us=int(event.get("ts", 0)),
                               dur_us=int(event.get("dur", 0)), inputs=_typed(args.get("input_type_shape")),
                               outputs=_typed(args.get("output_type_shape"))))
    return out


def run_spans(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, duration) in microseconds of every ``session.run`` in the trace (its ``model_run`` events), in order."""
    spans = [(int(e.get("ts", 0)), int(e.get("dur", 0))) for e in events
             if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return sorted(spans)


def read_trace(path: str | os.PathLike | None) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text()) if path else []


@contextlib.contextmanager
def profiling_dir() -> Iterator[Path]:
    """Run the block in a private temp dir: onnxruntime writes its trace into the working directory when profiling
    ends, so sessions that profile must be created *and* ended inside this block."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgedl-profile-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def parse_profile(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Profile events -> {'nodes': n, 'by_provider': {short: count}, 'ops_by_provider': {short: {op: count}},
    'shape_nodes_by_provider': {short: count}}."""
    seen: dict[str, tuple[str, str, bool]] = {}
    for k in kernel_events(events):
        seen.setdefault(k.node, (k.provider, k.op_type, k.shape_computation))
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
    """Build a profiling runner (``make_runner``), run it ``runs`` times, parse and delete its trace."""
    with profiling_dir():
        runner = make_runner()
        try:
            for _ in range(runs):
                run(runner)
            path = runner.end_profiling()
        finally:
            runner.close()
        events = read_trace(path)
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
