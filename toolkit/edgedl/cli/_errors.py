"""How the CLI words a library error: the setting an ``EdgeDLError`` names becomes the flag that sets it."""

from __future__ import annotations

from edgedl.errors import EdgeDLError

# setting key (used by library code) -> the command-line flag that sets it
OPTION_FLAGS = {
    "input_shape": "--input-shape",
    "dim": "--shape",
    "batch_axis": "--batch-axis",
    "value_range": "--input-range",
    "batch": "--batch",
    "data": "--data",
    "max_samples": "--max-samples",
    "opset": "--opset",
    "exporter": "--exporter",
    "init_args": "--init-args",
    "torch_checkpoint": "--torch-checkpoint",
    "torch_model": "--torch-model",
    "torch_init_args": "--torch-init-args",
    "samples": "--samples",
    "top": "--top",
    "atol": "--atol",
    "space": "--space",
    "budget": "--budget",
    "latency_budget": "--latency-budget",
    "output": "-o",
    "device": "--device",
    "exclude_nodes": "--exclude-nodes",
    "allow_fallback": "--allow-fallback",
    "model_repository": "--model-repository",
    "allow_missing_manifest": "--allow-missing-manifest",
    "allow_outside_repository": "--allow-outside-repository",
    "model_name": "--model-name",
    "api_key": "--api-key",
    "threads": "--threads",
    "max_batch_size": "--max-batch-size",
    "max_queue_delay_us": "--max-queue-delay-us",
    "max_queue": "--max-queue",
    "instances": "--instances",
}


def describe(exc: EdgeDLError) -> str:
    """The message, and instead of the library's own hint the flag that fixes it (a flag without a value: a switch)."""
    option = getattr(exc, "option", None)
    if option and option[0] in OPTION_FLAGS:
        value = f" {option[1]}" if option[1] not in (None, "") else ""
        return f"{exc.message}; pass {OPTION_FLAGS[option[0]]}{value}"
    return str(exc)
