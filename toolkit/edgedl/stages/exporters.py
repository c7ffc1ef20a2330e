"""torch's two ONNX exporters behind one call, and the ``auto`` choice between them.

- ``dynamo``: ``torch.onnx.export(dynamo=True)``, built on ``torch.export``; keeps dynamic dims symbolic. The default.
- ``torchscript``: ``torch.onnx.export(dynamo=False)``, the tracing exporter; takes what ``torch.export`` cannot
  (TorchScript modules, a ``forward`` argument named like a submodule in torch 2.13) but traces Python: a branch
  on a tensor's value is baked in (refused here), and shape arithmetic in Python can bake a size (torch's own
  ``nn.MultiheadAttention`` does: validation at a second size catches it).

``auto`` takes dynamo, and when it fails says why in one notice and takes the TorchScript exporter; a
TorchScript module goes to the TorchScript exporter directly. Either result is validated the same way by the caller.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.recipe import Recipe
from edgedl.stages.opset import MIN_OPSET, default_opset, exporter_max_opset

EXPORTERS = {
    "dynamo": "torch.export-based (dynamic dims stay symbolic)",
    "torchscript": "the TorchScript tracer (dynamo=False): TorchScript files, modules torch.export cannot capture",
}
MODES = ("auto", *EXPORTERS)


@dataclass
class Exported:
    proto: Any  # onnx.ModelProto, with the exporter's per-node source metadata still in it
    exporter: str  # dynamo | torchscript
    opset: int
    fallback_reason: str | None = None  # auto: why the dynamo exporter was not used
    warnings: tuple[str, ...] = ()  # what the tracer said it could not record


class _ExportFailed(Exception):
    """One exporter failed; ``reason`` is the one-line explanation."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@contextlib.contextmanager
def quiet(debug: bool):
    """The exporter prints progress and torchvision notices and warns a lot; keep the CLI clean unless --debug
    (then its stdout goes to stderr, so --json output stays parseable)."""
    if debug:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _silent_fds(debug: bool):
    """The TorchScript exporter logs its graph from C++ when verbose: only the file descriptors catch that."""
    if debug:
        yield
        return
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def explain_failure(exc: BaseException) -> str:
    """One line from an exporter's page-long error: the root cause and the user's line that raised it."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    strip = lambda text: re.sub(r"\x1b\[[0-9;]*m", "", text)  # noqa: E731 - ANSI colours
    lines = [ln.strip() for ln in strip(str(root)).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if first.endswith(":") and len(lines) > 1:  # "Found the following conflicts ...:" -> add the conflict
        first = f"{first} {lines[1].lstrip('- ')}"
    first = re.sub(r"\s*\[Caused by the value .*", "", first)  # the TorchScript exporter appends its IR
    where = ""
    match = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s*(.+)', strip(str(exc)))
    if match:
        where = f" at {Path(match.group(1)).name}:{match.group(2)} `{match.group(3).strip()}`"
    hint = ""
    if "data-dependent" in first:
        hint = "; replace Python control flow on tensor values with torch.where/torch.cond"
    return f"{type(root).__name__}: {first[:400]}{where}{hint}"


def _example_args(recipe: Recipe):
    torch = require("torch")
    example = recipe.make_inputs(recipe.validation_sizes()[0], seed=0)
    return tuple(torch.from_numpy(example[n]) for n in recipe.input_names)


def describe_inputs(recipe: Recipe) -> str:
    return ", ".join(f"{s.name} {s.dtype}[{'x'.join(map(str, s.shape)) or 'scalar'}] values "
                     f"{s.value_range[0]:g}..{s.value_range[1]:g}" for s in recipe.inputs)


def check_runs(model, recipe: Recipe) -> int:
    """Run the module once on the example inputs, so inputs it rejects fail here with the inputs named (not twice,
    deep inside both exporters); returns how many output tensors it gives."""
    torch = require("torch")
    from edgedl.stages.validate import flatten_outputs

    try:
        with torch.no_grad():
            return len(flatten_outputs(model(*_example_args(recipe))))
    except EdgeDLError:
        raise
    except Exception as exc:
        raise EdgeDLError(f"{recipe.name} fails on example inputs ({describe_inputs(recipe)}): {explain_failure(exc)}",
                          hint="give each forward() argument, in order, with sizes, dtype and value range it accepts",
                          option=("value_range", "INPUT=LO..HI (or --input NAME=DIMS:DTYPE:LO..HI)")) from exc


def _dynamic_axes(recipe: Recipe) -> dict[str, dict[int, str]] | None:
    axes = {s.name: s.dynamic_axes for s in recipe.inputs + recipe.outputs if s.shape and s.dynamic_axes}
    return axes or None


def _dynamo(model, recipe: Recipe, opset: int, debug: bool, outputs: int):
    torch = require("torch")
    require("onnxscript")
    try:
        with quiet(debug), torch.no_grad():
            program = torch.onnx.export(
                model, _example_args(recipe), None, input_names=recipe.input_names,
                output_names=recipe.output_names or None, opset_version=opset, dynamo=True, external_data=False,
                dynamic_axes=_dynamic_axes(recipe), optimize=True, verbose=False,
            )
            return program.model_proto, ()
    except EdgeDLError:
        raise
    except Exception as exc:
        raise _ExportFailed(explain_failure(exc)) from exc


# what the tracer says when Python branched on a tensor's value: the trace holds one branch only
_BAKED_BRANCH = "Converting a tensor to a Python boolean"


def _torchscript(model, recipe: Recipe, opset: int, debug: bool, outputs: int):
    torch = require("torch")
    onnx = require("onnx")
    buffer = io.BytesIO()
    try:
        # not under no_grad: in eval mode without grad, nn.TransformerEncoderLayer takes a fused fast path
        # (aten::_transformer_encoder_layer_fwd) that this exporter cannot write
        with quiet(debug), _silent_fds(debug), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", torch.jit.TracerWarning)
            # verbose keeps each node's source location in its doc_string (read for the source mapping)
            # unnamed, this exporter calls outputs by graph value numbers ("10"): name them output_0, ...
            names = recipe.output_names or ([f"output_{i}" for i in range(outputs)] if outputs > 1 else ["output"])
            torch.onnx.export(
                model, _example_args(recipe), buffer, input_names=recipe.input_names,
                output_names=names, opset_version=opset, dynamo=False,
                dynamic_axes=_dynamic_axes(recipe), verbose=True,
            )
    except EdgeDLError:
        raise
    except Exception as exc:
        raise _ExportFailed(explain_failure(exc)) from exc
    from edgedl.stages.provenance import torch_dirs

    said = []
    torch_code = torch_dirs()
    for w in caught:
        where = f"{Path(w.filename).name}:{w.lineno}"
        text = str(w.message).split(". ")[0]
        if text.startswith(_BAKED_BRANCH):
            if str(Path(w.filename).resolve()).startswith(torch_code):
                continue  # torch's own shape assertions (nn.MultiheadAttention has three)
            raise _ExportFailed(f"the tracer met Python control flow on a tensor's value at {where} and would keep "
                                "one branch only; replace it with torch.where/torch.cond")
        said.append(f"{text} at {where}")
    return onnx.load_model_from_string(buffer.getvalue()), tuple(dict.fromkeys(said))


_RUN = {"dynamo": _dynamo, "torchscript": _torchscript}


def _opset_for(exporter: str, requested: int | None) -> int:
    top = exporter_max_opset(exporter)
    if requested is None:
        return min(default_opset(), top)
    if not MIN_OPSET <= requested <= top:
        raise EdgeDLError(f"opset {requested} is out of range: the {exporter} exporter writes {MIN_OPSET}..{top}",
                          option=("opset", f"{MIN_OPSET}..{top}"))
    return requested


def check_mode(mode: str) -> None:
    if mode not in MODES:
        import difflib

        close = difflib.get_close_matches(mode, list(MODES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise EdgeDLError(f"unknown exporter '{mode}'; {hint}use one of {', '.join(MODES)}")


def run_exporter(model, recipe: Recipe, mode: str = "auto", opset: int | None = None, debug: bool = False,
                 notice: Callable[[str], None] | None = None) -> Exported:
    """Export ``model`` with the exporter ``mode`` names (``auto``: dynamo, else TorchScript)."""
    torch = require("torch")
    check_mode(mode)
    scripted = isinstance(model, torch.jit.ScriptModule)
    if scripted and mode == "dynamo":
        raise EdgeDLError(f"{recipe.name} is a TorchScript module, which only the TorchScript exporter takes",
                          option=("exporter", "torchscript (or auto)"))
    order = ["torchscript"] if scripted or mode == "torchscript" else (["dynamo"] if mode == "dynamo" else
                                                                       ["dynamo", "torchscript"])
    outputs = check_runs(model, recipe)
    reasons: dict[str, str] = {}
    for exporter in order:
        chosen = _opset_for(exporter, opset) if not reasons else _fallback_opset(exporter, opset, reasons)
        try:
            proto, said = _RUN[exporter](model, recipe, chosen, debug, outputs)
        except _ExportFailed as exc:
            reasons[exporter] = exc.reason
            if exporter != order[-1] and notice is not None:
                notice(f"the dynamo exporter failed ({exc.reason}); trying the TorchScript exporter")
            continue
        return Exported(proto, exporter, chosen, reasons.get("dynamo"), said)
    if len(reasons) == 1:
        (exporter, reason), = reasons.items()
        raise EdgeDLError(f"torch could not export {recipe.name}: {reason} (run with --debug for the full trace)")
    raise EdgeDLError(f"torch could not export {recipe.name} with either exporter: dynamo: {reasons['dynamo']}; "
                      f"TorchScript: {reasons['torchscript']} (run with --debug for the full traces)")


def _fallback_opset(exporter: str, requested: int | None, reasons: dict[str, str]) -> int:
    try:
        return _opset_for(exporter, requested)
    except EdgeDLError as exc:
        raise EdgeDLError(f"the dynamo exporter failed ({reasons['dynamo']}) and {exc.message} for the TorchScript "
                          "exporter to try", option=exc.option) from None
