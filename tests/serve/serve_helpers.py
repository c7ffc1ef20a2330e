"""Helpers for the server tests: small ONNX models built with onnx.helper, and a real `edgedl serve` process
on a free loopback port, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

EDGEDL = [sys.executable, "-m", "edgedl"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m edgedl serve ARGS --port P` in a subprocess; ``url`` is host:port (tritonclient style).
    ``script``: run that instead (a bundle's start.sh), told the port by EDGEDL_PORT."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 30.0, preexec_fn=None,
                 script: Path | None = None):
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.stderr_lines: list[str] = []
        command, port_env = [*EDGEDL, "serve", *map(str, args), "--port", str(self.port)], {}
        if script:
            command, port_env = [str(script), *map(str, args)], {"EDGEDL_PORT": str(self.port)}
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **port_env, **(env or {})}, preexec_fn=preexec_fn)
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not become ready:\n{self.stderr}")

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if "ready in" in line:
                self._ready.set()

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def serve_fails(*args) -> str:
    """`edgedl serve ARGS` must exit 1 with exactly one 'error: ...' line; -> that line."""
    proc = subprocess.run([*EDGEDL, "serve", *map(str, args), "--port", "0"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def gemm_model(path: Path, seed: int, in_name="pixels", out_name="logits", n_in=64, n_out=10) -> Path:
    """[batch, n_in] -> Gemm with seeded random weights -> [batch, n_out] (same signature as the zoo MLP)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", [in_name, "w", "b"], [out_name])], "gemm",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", n_out])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def slow_model(path: Path, width: int = 512, depth: int = 24) -> Path:
    """[batch, width] -> depth x (MatMul + Tanh) -> [batch, width]: about a millisecond per row on one core at the
    default depth (more on slow machines); past 24 layers the weights repeat, so a deeper model costs more time,
    not more file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        if i < 24:
            inits.append(numpy_helper.from_array(
                (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i % 24}"], [f"m{i}"]))
        out = "y" if i == depth - 1 else f"t{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def strings_model(path: Path) -> Path:
    """text: string[batch] -> Identity -> text_out, and a length-independent flag: Equal(text, "hello")."""
    import onnx
    from onnx import TensorProto, helper

    hello = helper.make_tensor("hello", TensorProto.STRING, [1], [b"hello"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"]),
         helper.make_node("Equal", ["text", "hello"], ["is_hello"])], "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("text_out", TensorProto.STRING, ["batch"]),
         helper.make_tensor_value_info("is_hello", TensorProto.BOOL, ["batch"])], [hello])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9), path)
    return path


def place(repo: Path, name: str, version: int, source: Path, config: str | None = None) -> Path:
    """Put a model file into a Triton layout repository (optionally with a config.pbtxt)."""
    target = repo / name / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(Path(source).read_bytes())
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return target


class Reference:
    """In-process onnxruntime sessions: the expected output for any request."""

    def __init__(self):
        import onnxruntime as ort

        self._ort = ort
        self._sessions = {}

    def __call__(self, path: Path, feeds: dict) -> dict:
        s = self._sessions.get(str(path))
        if s is None:
            so = self._ort.SessionOptions()
            so.intra_op_num_threads = 1
            s = self._sessions[str(path)] = self._ort.InferenceSession(str(path), so)
        names = [o.name for o in s.get_outputs()]
        return dict(zip(names, s.run(names, feeds)))
