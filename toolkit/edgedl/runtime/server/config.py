"""The server's typed configuration: the click command builds one of these and calls ``serve``.

``LIMITS`` is the one table of what a client or a request may take (body bytes, tensor elements, batch rows,
connections, requests in flight, timeouts): ``default`` for a server-class machine, ``small`` for a 1-4 GB board
such as a Raspberry Pi. A model's ``config.pbtxt`` may narrow or widen the per-request limits for that model
(``max_batch_size`` as in Triton, and ``parameters`` keys named in ``MODEL_LIMIT_PARAMETERS``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.runtime.server.pbtxt import first
from edgedl.runtime.server.repository import BatchPolicy
from edgedl.runtime.signature import ShapeOptions

ACCESS_LOG_FORMATS = ("off", "text", "json")
MODEL_CONTROL_MODES = ("none", "explicit", "poll")  # Triton's --model-control-mode values
API_KEY_ENV = "EDGEDL_API_KEY"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request or client may take before the server answers 4xx/503 or closes the connection."""

    max_body_bytes: int  # per request (413 beyond)
    max_tensor_elements: int  # per input tensor (413 beyond)
    max_batch_rows: int  # axis 0 of a request (400 beyond, as Triton answers past max_batch_size)
    max_connections: int  # open connections; beyond, the longest-idle one is closed, or the new one gets 503
    max_in_flight: int  # infer requests being decoded, queued or run at once (503 beyond)
    header_timeout_s: float  # from connect (or the first byte of a request) to the end of its headers
    body_timeout_s: float  # from the end of the headers to the end of the body
    keep_alive_timeout_s: float  # an idle keep-alive connection is closed after this
    max_header_bytes: int = 64 * 1024  # request line + headers (431 beyond)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise EdgeDLError(f"the body limit must be at least 1024 bytes, got {self.max_body_bytes}")
        for name in ("max_tensor_elements", "max_batch_rows", "max_connections", "max_in_flight", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise EdgeDLError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            if not getattr(self, name) > 0:
                raise EdgeDLError(f"{name[:-2].replace('_', '-')} must be a positive number of seconds")

    def replace(self, **changes) -> Limits:
        """These limits with the given fields changed (None values keep the preset's)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


LIMITS: dict[str, Limits] = {
    # 64 MiB = 16 Mi FP32 values = 256 Ki rows of a 1x8x8 image; 1024 sockets fit the usual 4096+ file limit
    "default": Limits(max_body_bytes=64 * MIB, max_tensor_elements=16 * MIB, max_batch_rows=256 * 1024,
                      max_connections=1024, max_in_flight=256, header_timeout_s=10.0, body_timeout_s=60.0,
                      keep_alive_timeout_s=30.0),
    # a 1-4 GB board: a quarter of the request sizes, and fewer sockets and requests held at once
    "small": Limits(max_body_bytes=16 * MIB, max_tensor_elements=4 * MIB, max_batch_rows=64 * 1024,
                    max_connections=256, max_in_flight=64, header_timeout_s=10.0, body_timeout_s=60.0,
                    keep_alive_timeout_s=15.0),
}

# config.pbtxt `parameters { key: K value: { string_value: "N" } }` entries that set a limit for one model
MODEL_LIMIT_PARAMETERS = {"edgedl_max_body_bytes": "max_body_bytes",
                          "edgedl_max_tensor_elements": "max_tensor_elements",
                          "edgedl_max_batch_rows": "max_batch_rows"}


@dataclass(frozen=True)
class RequestLimits:
    """The per-request part of ``Limits`` as it applies to one model."""

    max_body_bytes: int
    max_tensor_elements: int
    max_batch_rows: int


def model_limits(limits: Limits, model_config: dict, where: str = "config.pbtxt") -> RequestLimits:
    """The request limits for a model: the server's, then its config.pbtxt (Triton's ``max_batch_size`` caps
    the rows of a request, as in Triton; ``edgedl_max_*`` parameters set the others)."""
    values = {"max_body_bytes": limits.max_body_bytes, "max_tensor_elements": limits.max_tensor_elements,
              "max_batch_rows": limits.max_batch_rows}
    max_batch = first(model_config, "max_batch_size", 0)
    if isinstance(max_batch, int) and max_batch > 0:
        values["max_batch_rows"] = max_batch
    for entry in model_config.get("parameters", []):
        key = first(entry, "key") if isinstance(entry, dict) else None
        if key not in MODEL_LIMIT_PARAMETERS:
            continue
        value = first(first(entry, "value", {}) or {}, "string_value")
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            raise EdgeDLError(f"{where}: parameter {key} must be a positive integer in string_value, got {value!r}")
        values[MODEL_LIMIT_PARAMETERS[key]] = number
    return RequestLimits(**values)


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
    limits: Limits = LIMITS["default"]
    # Triton's model control modes: "none" loads every model at start and refuses load/unload requests;
    # "explicit" loads those in load_models ("*": every model) and takes POST /v2/repository/models/NAME/load|unload;
    # "poll" loads every model and follows the repository every poll_interval_s
    model_control: str = "none"
    load_models: tuple[str, ...] = ()
    poll_interval_s: float = 15.0
    allow_outside_repository: bool = False  # serve repository models whose files resolve outside it
    batching: BatchPolicy = field(default_factory=BatchPolicy)
    providers: tuple[str, ...] = ("cpu",)
    allow_fallback: bool = False
    intra_op_threads: int = field(default_factory=_default_threads)
    access_log: str = "off"
    access_log_path: Path | None = None  # default: stderr
    trace_file: Path | None = None  # where Triton's trace extension writes traces (TIMESTAMPS needs one)
    drain_timeout_s: float = 30.0
    allow_nonfinite: bool = False  # NaN/Inf inputs are refused unless the model expects them
    warmup_iterations: int = 5
    inline_below_ms: float = 1.0  # models faster than this run on the event loop (a thread hop costs more)
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)  # warm-up sizes, batch axes, value ranges

    @property
    def loads_everything(self) -> bool:
        """Whether every model loads at startup (explicit model control: only those named, '*' for all)."""
        return self.model_control != "explicit" or "*" in self.load_models

    def __post_init__(self) -> None:
        if (self.model is None) == (self.model_repository is None):
            raise EdgeDLError("give either a model file or a model repository (not both)")
        if self.access_log not in ACCESS_LOG_FORMATS:
            raise EdgeDLError(f"access log format must be one of {', '.join(ACCESS_LOG_FORMATS)}, got '{self.access_log}'")
        if self.model_control not in MODEL_CONTROL_MODES:
            raise EdgeDLError(f"model control mode must be one of {', '.join(MODEL_CONTROL_MODES)}, "
                              f"got '{self.model_control}'")
        if self.load_models and self.model_control != "explicit":
            raise EdgeDLError("models to load at startup are named in explicit model control only; in the other "
                              "modes every model loads")
        if not self.poll_interval_s > 0:
            raise EdgeDLError(f"the repository poll interval must be a positive number of seconds, got "
                              f"{self.poll_interval_s}")
        if not 0 <= self.port <= 65535:
            raise EdgeDLError(f"port must be between 0 and 65535, got {self.port}")
        if self.grpc_port is not None and (not 0 <= self.grpc_port <= 65535 or self.grpc_port == self.port != 0):
            raise EdgeDLError(f"gRPC port must be between 0 and 65535 and differ from the HTTP port, "
                              f"got {self.grpc_port}")
        b = self.batching
        for key, value, least in (("max_batch_size", b.max_batch_size, 0), ("max_queue_delay_us", b.max_queue_delay_us, 0),
                                  ("max_queue", b.max_queue, 1), ("instances", b.instances, 1)):
            if value < least:
                raise EdgeDLError(f"{key.replace('_', ' ')} must be >= {least}, got {value}", option=(key, str(least)))
        if self.api_key is not None and not self.api_key.strip():
            raise EdgeDLError("the API key is empty; give a non-empty key, or unset EDGEDL_API_KEY",
                              option=("api_key", "KEY"))
        if self.intra_op_threads < 0:
            raise EdgeDLError(f"threads must be >= 0 (0 lets onnxruntime choose), got {self.intra_op_threads}",
                              option=("threads", "0"))
