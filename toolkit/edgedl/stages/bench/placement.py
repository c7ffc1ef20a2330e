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


def parse_profile(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Profile events -> {'nodes': n, 'by_provider': {short: count}, 'ops_by_provider': {short: {op: count}}}."""
    seen: dict[str, tuple[str, str]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        args = event.get("args") or {}
        provider = args.get("provider")
        if not provider:
            continue
        node = str(event["name"])[: -len("_kernel_time")]
        seen.setdefault(node, (short_name(provider), str(args.get("op_name", "?"))))
    by_provider = Counter(p for p, _ in seen.values())
    ops: dict[str, Counter] = {}
    for provider, op in seen.values():
        ops.setdefault(provider, Counter())[op] += 1
    return {
        "nodes": len(seen),
        "by_provider": dict(by_provider.most_common()),
        "ops_by_provider": {p: dict(c.most_common()) for p, c in ops.items()},
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


def foreign_nodes(placement: dict[str, Any], requested: str) -> dict[str, int]:
    """Nodes that ran on a provider other than the requested one: {provider: count}."""
    want = short_name(requested)
    return {p: n for p, n in placement.get("by_provider", {}).items() if p != want}
