"""Which PyTorch module and source line each ONNX node came from, kept through simplification.

torch's exporters say where every node came from, at a cost: the dynamo exporter writes stack traces and module
scopes into each node's ``metadata_props`` (tens of KB even for small models), the TorchScript exporter writes
node names that follow the module path (``/encoder/layers.0/linear1/MatMul``) and, verbose, a traceback per node in
``doc_string``. Export strips all of that. Before it does, ``collect`` reads it into one entry per output tensor,
and ``attach`` writes the entries that still match the final graph (by output tensor name, which onnxslim,
onnxruntime's optimizer and quantization mostly keep where they rename or fuse nodes) into one compact metadata
key, ``edgedl.provenance``::

    {"v": 1, "modules": ["", "encoder.layers.0.self_attn", ...], "files": ["/src/model.py", ...],
     "tensors": {"linear_1": [1, 0, 25], ...}}          # tensor -> [module index, file index (-1: none), line]

The source line is the innermost frame outside torch itself: the line of the user's (or a library's, e.g.
transformers') ``forward`` that made the node. ``read`` gives ``{node name: NodeSource(module, location)}``.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from edgedl._lazy import require

KEY = "edgedl.provenance"
_DYNAMO_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_SCRIPT_FRAME = re.compile(r"^(.+)\((\d+)\): \S+$")


class NodeSource(NamedTuple):
    module: str  # dotted module path ('' for the top module)
    location: str | None  # 'file:line', or None when the exporter recorded none outside torch


@dataclass(frozen=True)
class ProvenanceStats:
    nodes: int
    mapped: int
    size_bytes: int

    def to_json(self) -> dict[str, int]:
        return {"nodes": self.nodes, "mapped": self.mapped, "size_bytes": self.size_bytes}


def torch_dirs() -> tuple[str, ...]:
    """Folders of torch's own code (and onnxscript's), whose frames are not where a node "came from"."""
    torch = require("torch")
    import importlib.util

    dirs = [str(Path(torch.__file__).resolve().parent)]
    spec = importlib.util.find_spec("onnxscript")  # where it is, without importing it (~0.5 s)
    if spec is not None and spec.origin:
        dirs.append(str(Path(spec.origin).resolve().parent))
    return tuple(d + "/" for d in dirs)


def user_frame(frames: list[tuple[str, int]], skip: tuple[str, ...]) -> tuple[str, int] | None:
    """The first frame (innermost first) whose file is not torch's own (``skip``: ``torch_dirs()``); also what
    ``edgedl debug compare`` records for each PyTorch op it captures, so both sides name the same line."""
    for file, line in frames:
        resolved = str(Path(file).resolve()) if file.startswith("/") else file
        if not resolved.startswith(skip) and not file.startswith(("torch/", "<")):
            return resolved, line
    return None


def _dynamo_entry(props: dict[str, str], skip: tuple[str, ...]) -> tuple[str, tuple[str, int] | None] | None:
    scopes_text = props.get("pkg.torch.onnx.name_scopes")
    if scopes_text is None:
        return None
    try:
        scopes = ast.literal_eval(scopes_text)
    except (ValueError, SyntaxError):
        return None
    module = scopes[-2] if isinstance(scopes, list) and len(scopes) >= 2 else ""
    if not isinstance(module, str) or module.startswith("_empty_nn_module_stack"):
        module = ""
    frames = [(f, int(n)) for f, n in _DYNAMO_FRAME.findall(props.get("pkg.torch.onnx.stack_trace", ""))]
    return module, user_frame(list(reversed(frames)), skip)  # the stack trace lists the outermost frame first


def _script_entry(name: str, doc: str, skip: tuple[str, ...]) -> tuple[str, tuple[str, int] | None]:
    parts = [p for p in name.split("/") if p]
    module = ".".join(parts[:-1])
    frames = []
    for line in doc.splitlines():
        m = _SCRIPT_FRAME.match(line.strip())
        if m:
            frames.append((m.group(1), int(m.group(2))))
    return module, user_frame(frames, skip)  # innermost frame first


def collect(proto, exporter: str) -> dict[str, tuple[str, tuple[str, int] | None]]:
    """From a fresh export (before stripping): output tensor name -> (module path, (file, line) or None)."""
    skip = torch_dirs()
    table: dict[str, tuple[str, tuple[str, int] | None]] = {}
    for node in proto.graph.node:
        if exporter == "dynamo":
            entry = _dynamo_entry({p.key: p.value for p in node.metadata_props}, skip)
        else:
            entry = _script_entry(node.name, node.doc_string, skip) if node.name.startswith("/") else None
        if entry is None:
            continue
        for out in node.output:
            if out:
                table[out] = entry
    return table


def attach(proto, table: dict[str, tuple[str, tuple[str, int] | None]]) -> ProvenanceStats:
    """Write the entries that match ``proto``'s nodes into its ``edgedl.provenance`` key (replacing any)."""
    modules: dict[str, int] = {}
    files: dict[str, int] = {}
    tensors: dict[str, list[int]] = {}
    nodes = mapped = 0
    for node in proto.graph.node:
        nodes += 1
        out = next((o for o in node.output if o in table), None)
        if out is None:
            continue
        module, where = table[out]
        if not module and where is None:
            continue  # nothing known beyond "the top module"
        mapped += 1
        m = modules.setdefault(module, len(modules))
        f = files.setdefault(where[0], len(files)) if where else -1
        tensors[out] = [m, f, where[1] if where else 0]
    keep = [p for p in proto.metadata_props if p.key != KEY]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    size = 0
    if tensors:
        value = json.dumps({"v": 1, "modules": list(modules), "files": list(files), "tensors": tensors},
                           separators=(",", ":"))
        proto.metadata_props.add(key=KEY, value=value)
        size = len(value)
    return ProvenanceStats(nodes, mapped, size)


def tensor_sources(model) -> dict[str, NodeSource]:
    """``{output tensor name: NodeSource}`` from the ``edgedl.provenance`` key of an ONNX model (path or
    ModelProto), for every tensor recorded, whether or not a node of this graph still produces it (a quantized
    model renames the outputs of the nodes it rewrites; ``edgedl debug compare`` maps them back)."""
    onnx = require("onnx")
    proto = model if hasattr(model, "graph") else onnx.load(str(model), load_external_data=False)
    value = next((p.value for p in proto.metadata_props if p.key == KEY), None)
    if value is None:
        return {}
    data: dict[str, Any] = json.loads(value)
    modules, files = data.get("modules", []), data.get("files", [])
    return {tensor: NodeSource(modules[m], f"{files[f]}:{line}" if f >= 0 else None)
            for tensor, (m, f, line) in data.get("tensors", {}).items()}


def read(model) -> dict[str, NodeSource]:
    """``{node name: NodeSource(module path, 'file:line')}`` for an ONNX model (path or ModelProto) whose
    ``edgedl.provenance`` key export wrote; nodes without a known origin are left out."""
    onnx = require("onnx")
    proto = model if hasattr(model, "graph") else onnx.load(str(model), load_external_data=False)
    tensors = tensor_sources(proto)
    out: dict[str, NodeSource] = {}
    for node in proto.graph.node:
        source = next((tensors[o] for o in node.output if o in tensors), None)
        if source is not None:
            out[node.name] = source
    return out
