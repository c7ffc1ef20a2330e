"""Benchmark models ON the device over SSH: the building block of ``edgedl bench --remote``.

The device gets the models and the edgedl runtime (numpy, onnxruntime, edgedl; never torch) the way every
command that runs models on a device sets it up (:func:`edgedl.stages.device.runtime.stage_runtime`: an offline
wheelhouse for its arch and Python in a venv keyed by the wheel set, reused by later runs). Each configuration then
runs in its own fresh process there (``device.sh bench``: ``python -m edgedl.stages.bench.worker CONFIG_JSON``,
the same worker local benchmarks use) and its result comes back labelled with the device.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedl.errors import EdgeDLError
from edgedl.stages.device import DeviceFacts, SSHTarget


@dataclass(frozen=True)
class RemoteBench:
    """What ``remote_bench`` measured on a device."""

    host: str
    device: DeviceFacts
    profile: str  # the device profile whose wheels it ran on
    environment: dict | None  # the device's, as the worker reports it
    results: list[dict[str, Any]]  # worker results: "model" is the local path again, "device" the host
    command: str


def _configs(models: list[Path], config: dict | list[dict]) -> list[dict]:
    if isinstance(config, dict):
        if "model" in config:
            raise EdgeDLError("give the bench config without 'model': it is run once per model")
        return [{**config, "model": str(m)} for m in models]
    known = {str(m) for m in models}
    for c in config:
        if c.get("model") not in known:
            raise EdgeDLError(f"bench config names model {c.get('model')!r}, which is not among the models pushed")
    return [dict(c) for c in config]


def remote_bench(target: SSHTarget, models: list[Path], config: dict | list[dict], *, remote_dir: str = "edgedl-bench",
                 remote_python: str = "python3", profile: str | None = None, cache_dir: Path | None = None,
                 timeout_s: float = 600, progress: bool = True) -> RemoteBench:
    """Push ``models`` and the runtime to ``target``, run each configuration there, return the parsed results.

    ``config``: one JSON-able worker config applied to every model, or a list of configs whose ``model`` is one of
    ``models``.
    """
    from edgedl.console import progress as progress_bar
    from edgedl.stages.bench.orchestrate import worker_result
    from edgedl.stages.device.runtime import stage_runtime

    models = [Path(m) for m in models]
    for m in models:
        if not m.is_file():
            raise EdgeDLError(f"model {m} does not exist")
    configs = _configs(models, config)
    if any(c.get("engine", "onnxruntime") != "onnxruntime" for c in configs):
        raise EdgeDLError("only the onnxruntime engine runs on a device (the device gets no torch); drop the torch baseline")
    # the models, and the input data (.npz) configurations name, go as content-addressed copies
    inputs = [Path(c["input_data"]) for c in configs if c.get("input_data")]
    for i in inputs:
        if not i.is_file():
            raise EdgeDLError(f"input data file {i} does not exist")
    with progress_bar(f"benchmarking on {target.label}", total=3 + len(configs), enabled=progress, lines=True) as advance:
        staged = stage_runtime(target, [*models, *inputs], remote_dir=remote_dir, remote_python=remote_python,
                               profile=profile, cache_dir=cache_dir, advance=advance)
        device, remote_of = staged.device, staged.remote_of
        results = []
        for cfg in configs:
            local_model = cfg["model"]
            payload = json.dumps({**cfg, "model": remote_of[local_model],
                                  "input_data": remote_of[str(Path(cfg["input_data"]))] if cfg.get("input_data") else None})
            proc = device.bench(staged.env, payload, timeout=timeout_s)
            result = worker_result(Path(local_model).name, proc.returncode, proc.stdout, proc.stderr,
                                   where=f" on {target.label}")
            result["model"] = local_model
            result["model_name"] = Path(local_model).stem  # not the content-addressed name of the pushed copy
            result["remote_model"] = remote_of[local_model]
            result["device"] = target.label
            results.append(result)
            advance(info=Path(local_model).name)
    return RemoteBench(host=target.label, device=staged.facts, profile=staged.profile,
                       environment=results[0]["environment"] if results else None, results=results,
                       command=f"python -m edgedl.stages.bench.worker {shlex.quote('CONFIG_JSON')}")
