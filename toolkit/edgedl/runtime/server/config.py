"""The server's typed configuration: the click command builds one of these and calls ``serve``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.server.repository import BatchPolicy
from edgedl.runtime.signature import ShapeOptions

ACCESS_LOG_FORMATS = ("off", "text", "json")
API_KEY_ENV = "EDGEDL_API_KEY"


def _default_threads() -> int:
    # onnxruntime's default counts physical cores and ignores taskset/cgroup pinning; over-subscribed intra-op
    # threads on a pinned server cost more than they give, so follow the CPUs this process may actually use.
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class ServerConfig:
    model: Path | None = None  # one MODEL.onnx ...
    model_repository: Path | None = None  # ... or a Triton-layout repository
    model_name: str | None = None  # name for the single model (default: file stem)
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None  # also serve the KServe v2 gRPC API (same host and API key); 0 = a free port
    api_key: str | None = None  # bearer token for everything but liveness
    verify_key: Path | None = None  # OpenSSH ed25519 public key: serve only bundles it signed (runtime.manifest)
    max_body_bytes: int = 64 * 1024 * 1024
    batching: BatchPolicy = field(default_factory=BatchPolicy)
    providers: tuple[str, ...] = ("cpu",)
    allow_fallback: bool = False
    intra_op_threads: int = field(default_factory=_default_threads)
    access_log: str = "off"
    access_log_path: Path | None = None  # default: stderr
    drain_timeout_s: float = 30.0
    allow_nonfinite: bool = False  # NaN/Inf inputs are refused unless the model expects them
    warmup_iterations: int = 5
    inline_below_ms: float = 1.0  # models faster than this run on the event loop (a thread hop costs more)
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)  # warm-up sizes, batch axes, value ranges

    def __post_init__(self) -> None:
        if (self.model is None) == (self.model_repository is None):
            raise EdgeDLError("give either a MODEL.onnx or --model-repository DIR (not both)")
        if self.access_log not in ACCESS_LOG_FORMATS:
            raise EdgeDLError(f"access log format must be one of {', '.join(ACCESS_LOG_FORMATS)}, got '{self.access_log}'")
        if not 0 <= self.port <= 65535:
            raise EdgeDLError(f"port must be between 0 and 65535, got {self.port}")
        if self.grpc_port is not None and (not 0 <= self.grpc_port <= 65535 or self.grpc_port == self.port != 0):
            raise EdgeDLError(f"gRPC port must be between 0 and 65535 and differ from the HTTP port, "
                              f"got {self.grpc_port}")
        if self.max_body_bytes < 1024:
            raise EdgeDLError("--max-body-bytes must be at least 1024")
        b = self.batching
        if b.max_batch_size < 0 or b.max_queue_delay_us < 0 or b.max_queue < 1 or b.instances < 1:
            raise EdgeDLError("--max-batch-size and --max-queue-delay-us must be >= 0, --max-queue and --instances >= 1")
        if self.api_key is not None and not self.api_key.strip():
            raise EdgeDLError("the API key is empty; set a non-empty --api-key or unset EDGEDL_API_KEY")
        if self.intra_op_threads < 0:
            raise EdgeDLError("--threads must be >= 0 (0 lets onnxruntime choose)")
