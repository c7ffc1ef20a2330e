"""The embeddable runtime: load and run ONNX models with onnxruntime.

Imports only numpy, onnxruntime and the standard library, so it installs on a device without torch.
"""

from edgedl.errors import EdgeDLError
from edgedl.runtime.providers import PROVIDERS, available_providers, resolve_provider, short_name
from edgedl.runtime.runner import Runner, RunnerConfig, load_session
from edgedl.runtime.tensors import TensorInfo, concrete_shape, iter_batches, random_inputs
from edgedl.runtime.timing import LatencyStats, measure

__all__ = [
    "EdgeDLError",
    "LatencyStats",
    "PROVIDERS",
    "Runner",
    "RunnerConfig",
    "TensorInfo",
    "available_providers",
    "concrete_shape",
    "iter_batches",
    "load",
    "load_session",
    "measure",
    "random_inputs",
    "resolve_provider",
    "short_name",
]


def load(model, **options) -> Runner:
    """``edgedl.runtime.load("model.onnx", providers=("cpu",), intra_op_threads=1)`` -> a Runner."""
    return Runner(model, RunnerConfig(**options))
