"""The CLI as the acceptance suite drives it. Every run is checked for a traceback (none may reach a user, on
success or failure); a stage that fails must say so in one ``error:`` line that says what to do, and leave
nothing at its output path. Also the quantize stage's arguments and results (task data files in, int8 model out)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgedl_testing import CliResult, assert_one_line_error, run_edgedl, run_edgedl_inprocess


def edgedl(*args, process: bool = False, timeout: float = 300) -> CliResult:
    """Run ``edgedl ARGS`` (in this process, or with ``process`` in its own, as a user's shell does)."""
    result = run_edgedl(*args, check=False, timeout=timeout) if process else run_edgedl_inprocess(*args)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def report(*args, **kw) -> dict:
    """``edgedl ARGS --json`` that must succeed: its report."""
    result = edgedl(*args, "--json", **kw)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def refused(*args, output: Path, says: tuple[str, ...] = (), **kw) -> str:
    """``edgedl ARGS`` that must fail in one line holding each of ``says``, writing nothing at ``output`` or
    beside it (no partial or temporary file left in its folder). Returns the line."""
    before = set(output.parent.iterdir()) if output.parent.is_dir() else set()
    result = edgedl(*args, **kw)
    assert_one_line_error(result, *says, code=None)
    assert not output.exists(), f"{output} was written by a failed stage"
    after = set(output.parent.iterdir()) if output.parent.is_dir() else set()
    assert after == before, f"a failed stage left {sorted(map(str, after - before))}"
    return result.stderr.strip()


@dataclass(frozen=True)
class TaskFiles:
    evaluation: Path  # .npz: the model's labelled evaluation data (inputs + 'labels')
    calibration: Path  # .npz: other real inputs


@dataclass(frozen=True)
class Quantized:
    path: Path  # where quantize was asked to write
    report: dict  # its --json report ({} when it stopped before judging)
    error: str  # its one-line error, when it refused ("" when it wrote the model)


def quantize_args(path: Path, model, files: TaskFiles, output: Path, *extra) -> list:
    """`edgedl quantize` as the acceptance suite runs it: the model's size options and quantize options, its task
    data and task metric; no speed gate (benchmarks/real_models.py times the int8 models)."""
    return ["quantize", path, "-o", output, *model.options, *model.quantize, "--calibration", files.calibration,
            "--eval", files.evaluation, "--metric", model.metric_target, "--speed-seconds", "0", "--no-progress",
            *extra, "--json"]
