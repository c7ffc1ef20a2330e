"""Two models run side by side in one process, as quantize's gates run the fp32 model and a candidate and
``edgedl debug speed`` profiles them to explain the speed gate's verdict: how their sessions are built, feeds cast to
each model's input type, and the speed gate's defaults (both judge the same batch, threads and ratio)."""

from __future__ import annotations

import numpy as np

from edgedl.runtime import Runner, RunnerConfig

SPEED_BATCH = 32
THREADS = 1  # the same intra-op thread count for both models
MIN_SPEEDUP = 1.05  # "faster" means at least this ratio at SPEED_BATCH (medians drift ~5-10 %)


def runner_config(threads: int, provider: str = "cpu", **extra) -> RunnerConfig:
    """How the gates build sessions (``edgedl debug speed`` profiles with the same settings)."""
    # spinning off: with both models alive in one process, a spinning idle pool would steal the timed core
    return RunnerConfig(providers=(provider,), intra_op_threads=threads, inter_op_threads=1, spinning=False, **extra)


def adapt(model: Runner, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast float feeds to the model's float input type (an fp16 model with fp16 inputs gets fp16 data)."""
    out = {}
    for info in model.inputs:
        value = feeds[info.name]
        if value.dtype != info.dtype and value.dtype.kind == "f" and info.dtype.kind == "f":
            value = value.astype(info.dtype)
        out[info.name] = value
    return out
