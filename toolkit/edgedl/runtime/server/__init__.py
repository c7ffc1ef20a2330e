"""``edgedl serve``: the Open Inference Protocol v2 server (Triton/KServe-compatible, binary tensors).

Needs numpy, onnxruntime, the standard library and uvicorn (+ httptools, uvloop when installed) - no torch,
onnx or click. ``serve(ServerConfig(model=Path("cnn.onnx")))`` blocks until SIGTERM/SIGINT.
"""

from edgedl.runtime.server.config import LIMITS, Limits, ServerConfig
from edgedl.runtime.server.repository import BatchPolicy
from edgedl.runtime.server.server import build, serve

__all__ = ["LIMITS", "BatchPolicy", "Limits", "ServerConfig", "build", "serve"]
