"""Shared test helpers (imported as ``edgedl_testing``; a module name no other test directory reuses, unlike
``conftest``): the trained and exported zoo, cached under build/ keyed by its sources, and helpers that drive
the real ``edgedl`` CLI."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = ("mlp", "cnn", "lstm", "transformer")
EDGEDL = [sys.executable, "-m", "edgedl"]
# what the trained zoo depends on, and what its exports depend on as well; a change to any of these retrains or
# re-exports (an export-only change reuses the trained weights)
_TRAIN_SOURCES = [
    *sorted(ROOT / "models" / f"{name}.py" for name in ZOO),  # the zoo's recipes, not every file in models/
    *sorted((ROOT / "toolkit/edgedl/data").glob("*.py")),
    ROOT / "toolkit/edgedl/recipe.py",
    ROOT / "toolkit/edgedl/stages/train.py",
]
_ZOO_SOURCES = [
    *_TRAIN_SOURCES,
    *(ROOT / "toolkit/edgedl/stages" / f"{name}.py" for name in (
        "export", "export_source", "exporters", "torch_source", "provenance", "validate", "compare", "opset")),
]


@dataclass(frozen=True)
class ZooModel:
    name: str
    recipe: Path  # models/NAME.py
    checkpoint: Path  # the train --out directory
    onnx: Path
    metrics: dict


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback TCP ports (bound together, then released)."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_edgedl(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI (python -m edgedl ...) and return the completed process (text mode)."""
    proc = subprocess.run([*EDGEDL, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgedl {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_edgedl_inprocess(*args: str) -> CliResult:
    """Run the CLI in this process (click's runner): the same code path as the console script, without paying
    for a fresh interpreter and torch import per call. Use run_edgedl for anything that needs a real process."""
    from click.testing import CliRunner

    from edgedl.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="edgedl")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def _zoo_key(sources: list[Path] = _ZOO_SOURCES) -> str:
    h = hashlib.sha256()
    for path in sources:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_zoo(base: Path) -> dict[str, ZooModel]:
    """Train (full recipe config) and export the four zoo models through the CLI, once per source version."""
    trained = base / f"trained-{_zoo_key(_TRAIN_SOURCES)}"
    target = base / _zoo_key()
    target.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel pytest runs share one build
        for name in ZOO:
            if not (trained / name / "config.json").is_file():  # written last by train
                run_edgedl("train", name, "--out", trained / name)
            if not (target / f"{name}.onnx").is_file():
                # dynamo only: a broken environment must fail here, not leave TorchScript fallbacks in the cache
                run_edgedl("export", name, "--checkpoint", trained / name, "--exporter", "dynamo",
                           "-o", target / f"{name}.onnx")
    return {
        name: ZooModel(name, ROOT / "models" / f"{name}.py", trained / name, target / f"{name}.onnx",
                       json.loads((trained / name / "metrics.json").read_text()))
        for name in ZOO
    }


def assert_one_line_error(proc, *fragments: str, code: int | None = 1) -> None:
    """A CLI run that failed (with ``code``; None: any non-zero) and said so in one ``error:`` line holding each
    fragment - the way every user error must look."""
    assert proc.returncode != 0 if code is None else proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def rehashed_bundle(bundle: Path, dest: Path, name: str, data: str | bytes) -> Path:
    """A copy of ``bundle`` with file ``name`` replaced by ``data`` and its manifests' hashes recomputed: it passes
    every hash check, installs, then fails however ``data`` makes it (a crashing start.sh, a model that is not ONNX)."""
    import json
    import shutil

    from edgedl.runtime.manifest import hash_tree

    shutil.copytree(bundle, dest)
    target = dest / name
    target.write_bytes(data) if isinstance(data, bytes) else target.write_text(data)
    for manifest_path, root in ((dest / "models/manifest.json", dest / "models"), (dest / "manifest.json", dest)):
        manifest = json.loads(manifest_path.read_text())
        manifest["files"] = hash_tree(root)
        manifest_path.write_text(json.dumps(manifest))
    return dest


def stateful_model(path: Path, named: bool = True) -> Path:
    """A voice-activity-detector-shaped model: audio [B, N], state [2, B, 4], sr scalar int64 ->
    prob [B, 1] = mean(audio) * sr / 1000 + state[0, :, 0], new_state [2, B, 4] = state + mean(audio)."""
    import onnx
    from onnx import TensorProto, helper

    b, n = ("batch", "samples") if named else (None, None)
    nodes = [
        helper.make_node("ReduceMean", ["audio"], ["mean"], axes=[1], keepdims=1),  # [B, 1]
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mean", "sr_f"], ["scaled"]),
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.FLOAT, [], [1000.0])),
        helper.make_node("Div", ["scaled", "k"], ["scaled_k"]),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.INT64, [1], [2])),
        helper.make_node("Slice", ["state", "zero", "one", "zero"], ["s0"]),  # [1, B, 4]
        helper.make_node("Slice", ["s0", "zero", "one", "two"], ["s00"]),  # [1, B, 1]
        helper.make_node("Squeeze", ["s00", "zero"], ["s00_sq"]),  # [B, 1]
        helper.make_node("Add", ["scaled_k", "s00_sq"], ["prob"]),
        helper.make_node("Unsqueeze", ["mean", "zero"], ["mean3"]),  # [1, B, 1]
        helper.make_node("Add", ["state", "mean3"], ["new_state"]),
    ]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [b, n]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, b, 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [b, 1]),
         helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, b, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path
