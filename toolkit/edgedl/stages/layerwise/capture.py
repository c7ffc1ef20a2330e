"""What a PyTorch module computes on the way, for ``edgedl debug compare``.

``TorchCapture`` runs a module under a ``TorchFunctionMode`` plus global module hooks: every tensor a torch
function returns is recorded with the innermost module running (its dotted path) and the source line that called
it - the innermost frame outside torch, found as ``edgedl.stages.provenance`` finds it for the exporter's nodes,
so a record and an ONNX node made by the same line carry the same (module, line). Functions called inside a
captured function are not seen (the mode is off while it runs), so ``F.multi_head_attention_forward`` is one
record, as it is one group of ONNX nodes. torch's fused fast paths of ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` are turned off while capturing: they would skip the submodules that the ONNX graph
keeps. TorchScript modules run as one call: only their outputs are captured.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.stages.provenance import torch_dirs, user_frame


def short_location(location: str | None) -> str | None:
    """'/abs/path/models/cnn.py:23' -> 'cnn.py:23': a file's name and line, the same wherever it was exported."""
    if not location:
        return None
    file, _, line = location.rpartition(":")
    return f"{Path(file).name}:{line}"


@dataclass(frozen=True)
class Record:
    """One tensor a torch function returned: made in ``module`` by the line ``location`` (short form)."""

    module: str
    location: str | None
    function: str
    position: int  # which tensor of what the function returned (flattened: LSTM's output, h, c are 0, 1, 2)
    value: np.ndarray


def _flat_tensors(value, torch) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat_tensors(v, torch)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flat_tensors(v, torch)]
    return []


class TorchCapture:
    """Run ``module`` and record what its functions return (only float tensors made in ``modules``, when given).

    ``run(args)`` -> (records in execution order, the module's outputs flattened)."""

    def __init__(self, module, modules: set[str] | None = None):
        self.torch = require("torch")
        self.module = module
        self.modules = modules
        self.scripted = isinstance(module, self.torch.jit.ScriptModule)
        self._skip = torch_dirs() + (str(Path(__file__).resolve()),)
        self._paths = {m: p for p, m in module.named_modules()}

    def _location(self) -> str | None:
        frames, frame = [], sys._getframe(2)
        while frame is not None:
            frames.append((frame.f_code.co_filename, frame.f_lineno))
            frame = frame.f_back
        where = user_frame(frames, self._skip)
        return f"{Path(where[0]).name}:{where[1]}" if where else None

    @contextlib.contextmanager
    def _hooks(self, stack: list[str]):
        torch = self.torch
        paths = self._paths

        def enter(mod, _args):
            stack.append(paths.get(mod, stack[-1] if stack else ""))

        def leave(_mod, _args, _out):
            if stack:
                stack.pop()

        pre = torch.nn.modules.module.register_module_forward_pre_hook(enter)
        post = torch.nn.modules.module.register_module_forward_hook(leave)
        fastpath = getattr(torch.backends, "mha", None)
        was = fastpath.get_fastpath_enabled() if fastpath is not None else None
        if fastpath is not None:
            fastpath.set_fastpath_enabled(False)
        try:
            yield
        finally:
            pre.remove()
            post.remove()
            if fastpath is not None:
                fastpath.set_fastpath_enabled(was)

    def run(self, args: list[np.ndarray]) -> tuple[list[Record], list[np.ndarray]]:
        torch = self.torch
        records: list[Record] = []
        stack: list[str] = []
        capture = self

        class Mode(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                module = stack[-1] if stack else ""
                if capture.modules is None or module in capture.modules:
                    tensors = [t for t in _flat_tensors(out, torch) if t.is_floating_point()]
                    if tensors:
                        where = capture._location()
                        name = getattr(func, "__name__", str(func))
                        for i, t in enumerate(tensors):  # a copy: a later in-place op (ReLU(inplace=True)) must not
                            records.append(Record(module, where, name, i,  # change it
                                                  t.detach().to("cpu", copy=True).numpy()))
                return out

        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
        try:
            with torch.inference_mode():
                if self.scripted:
                    out = self.module(*tensors)
                else:
                    with self._hooks(stack), Mode():
                        out = self.module(*tensors)
        except EdgeDLError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise EdgeDLError(f"the PyTorch module failed on the data: {type(exc).__name__}: {first}") from exc
        outputs = [t.detach().to("cpu").numpy() for t in _flat_tensors(out, torch)]
        return records, outputs
