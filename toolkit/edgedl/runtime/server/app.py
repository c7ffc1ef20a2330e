"""The inference server as a bare ASGI application (no framework): routing, auth, limits, error mapping,
metrics and access log around the Open Inference Protocol v2 handlers.

A large request (a body of ``LARGE_BODY_BYTES`` or more) never runs on the event loop: its decoding, its
inference and its response encoding go to worker threads, and a batch of many rows runs as several
onnxruntime runs of about ``RUN_INPUT_BYTES`` of input each (for models whose axis 0 is the batch), so that
the memory onnxruntime keeps for intermediate results stays that of an ordinary request. Afterwards the
memory the request used is handed back to the operating system.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ctypes
import ctypes.util
import hmac
import json
import logging
import re
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from time import perf_counter

from edgedl.errors import EdgeDLError
from edgedl.runtime.server import documents
from edgedl.runtime.server.config import ServerConfig
from edgedl.runtime.server.metrics import ServerMetrics
from edgedl.runtime.server.models import Registry, ServedModel
from edgedl.runtime.server import tensorjson
from edgedl.runtime.server.protocol import HTTPError, encode_response, select_outputs
from edgedl.runtime.server.repository import config_from_json
from edgedl.runtime.server.settings import LogSettings, Tracer
from edgedl.runtime.server.shm import SystemSharedMemory
from edgedl.runtime.server.routes import Router
from edgedl.runtime.server.tensorjson import STREAM_ABOVE_BYTES

log = logging.getLogger("edgedl.serve")
_JSON = b"application/json"
_REASON = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "bad_request", 411: "bad_request",
           413: "too_large", 503: "unavailable"}
_READY_NOT_BOOLEAN = re.compile(rb'\s*\{\s*"ready"\s*:\s*[\[{]')
REPOSITORY_BODY_BYTES = 1024 * 1024  # a repository request's body (index, load, unload)
LARGE_BODY_BYTES = STREAM_ABOVE_BYTES  # from here a body is parsed by the streaming decoder, off the event loop
# Triton's words in its NONE mode (clients and Triton's own tests match on them), then edgedl's
_MODEL_CONTROL_OFF = ("explicit model load / unload is not allowed if polling is enabled: this server runs with "
                      "model control mode {mode} (models load at startup{poll} and reload on SIGHUP); start it in model "
                      "control mode explicit to load and unload models through the API")


def _malloc_trim():
    """glibc's malloc_trim, which returns freed heap memory to the OS (None elsewhere, e.g. musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class RequestContext:
    """One request: what a handler reads (its body's receive channel and size headers) and what it learned
    along the way, for metrics and the access log."""

    __slots__ = ("model", "version", "request_id", "endpoint", "large", "receive", "header_length", "content_length")

    def __init__(self):
        self.model = self.version = self.request_id = None
        self.endpoint = "other"
        self.large = False  # a large request: its memory is handed back to the OS once answered
        self.receive = self.header_length = self.content_length = None


class _Admission:
    """The context manager of ``InferenceApp.admitted`` (a class, not a generator: it runs on every request)."""

    __slots__ = ("app",)

    def __init__(self, app: InferenceApp):
        self.app = app

    def __enter__(self) -> None:
        app = self.app
        if app._in_flight >= app._max_in_flight:
            raise HTTPError(503, f"the server is serving {app._in_flight} infer requests (limit "
                                 f"{app._max_in_flight}: the server's max_in_flight); retry later")
        app._in_flight += 1

    def __exit__(self, *exc) -> None:
        self.app._in_flight -= 1


class InferenceApp:
    def __init__(self, registry: Registry, config: ServerConfig, metrics: ServerMetrics,
                 logs: LogSettings | None = None):
        self.registry, self.config, self.metrics = registry, config, metrics
        self.started = False
        self.draining = False
        self._api_key = config.api_key.encode() if config.api_key else None
        self._in_flight = 0
        self._max_in_flight = config.limits.max_in_flight
        self._admission = _Admission(self)
        self._workers = ThreadPoolExecutor(2, thread_name_prefix="edgedl-decode")  # large requests' (de)coding
        self._trim = _malloc_trim()
        self._log_stream = None
        self.shared_memory = SystemSharedMemory()
        self.tracer = Tracer(config.trace_file)
        self.logs = logs if logs is not None else LogSettings()
        self.router = Router([(method, path, getattr(self, handler), endpoint, public)
                              for method, path, handler, endpoint, public in ROUTES])
        if config.access_log != "off":
            self._log_stream = open(config.access_log_path, "a", buffering=1) if config.access_log_path else sys.stderr

    @property
    def ready(self) -> bool:
        """Started and not draining, with a model loaded (explicit model control may start with none, as in
        Triton, and is ready then too)."""
        return self.started and not self.draining and (bool(self.registry.models) or
                                                       self.config.model_control == "explicit")

    # --- ASGI entry ----------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def close(self) -> None:
        """Stop taking requests; finish the queued ones, then free the models and worker threads."""
        self.draining = True
        await self.registry.close()
        self._workers.shutdown(wait=False)
        self.shared_memory.close()
        self.tracer.flush()
        self.logs.close()

    async def _http(self, scope, receive, send):
        """ASGI: one HTTP request (for embedding the app in another ASGI server; ``edgedl serve`` drives
        ``answer`` directly from its own HTTP/1.1 protocol, http1.py)."""
        t0 = perf_counter()
        ctx = RequestContext()
        header_length = content_length = auth = None
        for key, value in scope["headers"]:
            if key == b"inference-header-content-length":
                header_length = value
            elif key == b"content-length":
                content_length = value
            elif key == b"authorization":
                auth = value
        method, path = scope["method"], scope["path"]
        status, headers, parts, size = await self.answer(ctx, method, path, header_length, content_length, auth,
                                                         receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})
        del parts
        self.answered(ctx, scope.get("client"), method, path, status, size, t0)

    async def answer(self, ctx: RequestContext, method: str, path: str, header_length, content_length, auth, receive):
        """One HTTP request, for any front end: -> (status, response headers, body parts, body size). The size
        fields and the key are the raw header values (or None); ``receive()`` gives the body as ASGI messages."""
        try:
            status, body, extra = await self._route(method, path, receive, ctx, header_length, content_length, auth)
        except HTTPError as exc:
            status, body, extra = exc.status, _dumps({"error": exc.message}), None
        except EdgeDLError as exc:  # the runner's input checks and onnxruntime failures on this input
            status, body, extra = 400, _dumps({"error": str(exc)}), None
        except MemoryError:
            status, body, extra = 503, _dumps({"error": "the server ran out of memory for this request; send a "
                                                        "smaller one"}), None
        except Exception as exc:  # noqa: BLE001 - a bug must not take the server down; log it, answer 500
            log.error("internal error on %s %s:\n%s", method, path, traceback.format_exc())
            status, body, extra = 500, _dumps({"error": f"internal server error: {type(exc).__name__}: {exc}"}), None
        if body.__class__ is list:  # a large response in parts
            parts = body
            size = sum(len(p) for p in parts)
        else:
            parts, size = [body], len(body)
        headers = [(b"content-length", str(size).encode())]
        if extra:
            headers.extend(extra)
        if not extra or extra[0][0] != b"content-type":
            headers.append((b"content-type", _JSON))
        return status, headers, parts, size

    def answered(self, ctx: RequestContext, client, method: str, path: str, status: int, size: int, t0: float) -> None:
        """A response handed to the transport: metrics, the access log, and a large request's memory back to the
        operating system."""
        self._account(client, method, path, ctx, status, size, perf_counter() - t0)
        if ctx.large and self._trim is not None:  # once the transport has (likely) sent the response
            loop = asyncio.get_running_loop()
            loop.call_later(0.5, loop.run_in_executor, self._workers, self._trim, 0)

    def _account(self, client, method: str, path: str, ctx: RequestContext, status: int, size: int,
                 seconds: float) -> None:
        m = self.metrics
        m.http.inc((ctx.endpoint, status))
        if ctx.endpoint == "infer":
            model = ctx.model if ctx.version is not None else ""  # unknown names must not grow the label set
            version = ctx.version or ""
            m.requests.inc((model, version, status))
            if status != 200:
                m.failures.inc((model, _REASON.get(status, "internal")))
            else:
                m.total.observe((model, version), seconds)
        if self._log_stream is not None:
            client = client or ("-", 0)
            if self.config.access_log == "json":
                line = _dumps({"ts": round(time.time(), 6), "client": f"{client[0]}:{client[1]}",
                               "method": method, "path": path, "status": status, "bytes": size,
                               "ms": round(seconds * 1e3, 3), "model": ctx.model, "version": ctx.version,
                               "id": ctx.request_id}).decode()
            else:
                extra = f" model={ctx.model}" if ctx.model else ""
                extra += f" id={ctx.request_id}" if ctx.request_id else ""
                line = (f'{time.strftime("%Y-%m-%dT%H:%M:%S")} {client[0]}:{client[1]} "{method} '
                        f'{path}" {status} {size}B {seconds * 1e3:.3f}ms{extra}')
            self._log_stream.write(line + "\n")

    # --- routing -----------------------------------------------------------------------------------------
    async def _route(self, method, path, receive, ctx, header_length, content_length, auth):
        found = self.router.match(path)
        if self._api_key is not None and (found is None or not found[0].public):
            if not key_matches(auth, self._api_key):
                raise HTTPError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'")
        if found is None:
            if path.startswith("/v2/") or path == "/v2":
                raise HTTPError(404, f"no endpoint {path}")
            raise HTTPError(404, f"no endpoint {path}; see /v2, /v2/models/NAME/infer, /metrics")
        methods, params = found
        ctx.endpoint = methods.endpoint
        ctx.model = params.get("model")
        route = methods.get(method)
        if route is None:
            raise HTTPError(405, f"use {' or '.join(methods)} for this endpoint, not {method}")
        ctx.receive, ctx.header_length, ctx.content_length = receive, header_length, content_length
        return await route(ctx, **params)

    # --- handlers (ROUTES below maps paths to them) --------------------------------------------------------
    async def _live(self, ctx):
        return 200, b"", None

    async def _ready(self, ctx):
        if not self.ready:
            raise HTTPError(503, "server is not ready (loading, draining or no model loaded)")
        return 200, b"", None

    async def _metrics(self, ctx):
        return 200, self.metrics.render(), [(b"content-type", b"text/plain; version=0.0.4")]

    async def _server_metadata(self, ctx):
        return 200, _dumps(documents.server_metadata()), None

    async def _all_stats(self, ctx):
        return 200, _dumps({"model_stats": documents.statistics(self.registry, None)}), None

    async def _model_metadata(self, ctx, model, version=None):
        return 200, _dumps(documents.model_metadata(self.registry, self.registry.get(model, version))), None

    async def _model_ready(self, ctx, model, version=None):
        self.registry.get(model, version)
        if not self.started or self.draining:
            raise HTTPError(503, f"model '{model}' is loaded but the server is starting or draining")
        return 200, b"", None

    async def _model_config(self, ctx, model, version=None):
        return 200, _dumps(documents.model_config(self.registry.get(model, version))), None

    async def _model_stats(self, ctx, model, version=None):
        self.registry.get(model, version)
        return 200, _dumps({"model_stats": documents.statistics(self.registry, model, version)}), None

    async def _json_body(self, ctx, limit: int = REPOSITORY_BODY_BYTES):
        """The request's JSON body (None when empty), refused with 400 when it is not JSON."""
        body = await self._read_body(ctx.receive, ctx.content_length, limit)
        if not body.strip():
            return None
        try:
            return tensorjson.loads(bytes(body))
        except (ValueError, UnicodeDecodeError) as exc:
            if _READY_NOT_BOOLEAN.match(body):  # a value too deep to parse, where a boolean belongs
                raise HTTPError(400, "Invalid value for 'ready': expected a boolean") from None
            raise HTTPError(400, f"malformed JSON in request body: {exc}") from None

    async def _index(self, ctx):
        doc = await self._json_body(ctx)
        ready = doc.get("ready", False) if isinstance(doc, dict) else False
        if not isinstance(ready, bool):
            raise HTTPError(400, "Invalid value for 'ready': expected a boolean")
        models = documents.index(self.registry, self.config.model_repository)
        if ready:
            models = [m for m in models if m["state"] == "READY"]
        return 200, _dumps(models), None

    async def _load(self, ctx, model):
        doc = await self._json_body(ctx, self.config.limits.max_body_bytes)  # file overrides carry models
        self.require_model_control()
        config, files = load_parameters(doc)
        try:
            await self.registry.reload(model, config, files)
        except EdgeDLError as exc:
            raise HTTPError(400, f"failed to load '{model}': {exc}") from None
        return 200, b"", None

    async def _unload(self, ctx, model):
        await self._read_body(ctx.receive, ctx.content_length, REPOSITORY_BODY_BYTES)
        self.require_model_control()
        await self.registry.unload(model)
        return 200, b"", None

    # --- shared memory, trace, logging ---------------------------------------------------------------------
    async def _shm_status(self, ctx, region=None):
        if region is not None and region not in self.shared_memory.regions:
            raise HTTPError(404, f"Unable to find system shared memory region: '{region}'")
        return 200, _dumps(self.shared_memory.status(region)), None

    async def _shm_register(self, ctx, region):
        doc = await self._json_body(ctx)
        if not isinstance(doc, dict):
            raise HTTPError(400, "register a shared memory region with {\"key\": ..., \"offset\": ..., "
                                 "\"byte_size\": ...}")
        self.shared_memory.register(region, doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
        return 200, b"", None

    async def _shm_unregister(self, ctx, region=None):
        await self._read_body(ctx.receive, ctx.content_length, REPOSITORY_BODY_BYTES)
        self.shared_memory.unregister(region)
        return 200, b"", None

    async def _cuda_status(self, ctx, region=None):
        if region is not None:
            raise HTTPError(404, f"Unable to find cuda shared memory region: '{region}'")
        return 200, b"[]", None

    async def _cuda_register(self, ctx, region):
        await self._read_body(ctx.receive, ctx.content_length, REPOSITORY_BODY_BYTES)
        raise HTTPError(400, "CUDA shared memory is not available: this server keeps tensors in CPU memory; "
                             "register system shared memory instead")

    async def _cuda_unregister(self, ctx, region=None):  # nothing is ever registered: a no-op, as on Triton's CPU
        await self._read_body(ctx.receive, ctx.content_length, REPOSITORY_BODY_BYTES)
        return 200, b"", None

    async def _trace_get(self, ctx, model=None):
        if model is not None:
            self.registry.get(model, None)
        return 200, _dumps(self.tracer.of(model).to_json()), None

    async def _trace_update(self, ctx, model=None):
        doc = await self._json_body(ctx)
        if model is not None:
            self.registry.get(model, None)
        return 200, _dumps(self.tracer.update({} if doc is None else doc, model).to_json()), None

    async def _log_get(self, ctx):
        return 200, _dumps(self.logs.values), None

    async def _log_update(self, ctx):
        doc = await self._json_body(ctx)
        return 200, _dumps(self.logs.update({} if doc is None else doc)), None

    def require_model_control(self) -> None:
        """Repository load/unload (HTTP and gRPC) need --model-control explicit; otherwise 503, as Triton answers
        in its NONE mode."""
        if self.config.model_control != "explicit":
            mode = self.config.model_control
            raise HTTPError(503, _MODEL_CONTROL_OFF.format(mode=mode, poll=", follow the repository" if mode == "poll"
                                                                           else ""))

    async def _read_body(self, receive, content_length, limit: int) -> bytes | bytearray:
        """The whole body, refused with 413 past ``limit`` bytes; read into one buffer when its length is known."""
        declared = None
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                raise HTTPError(400, "Content-Length is not a number") from None
            if declared > limit:
                raise HTTPError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes "
                                     "(the server's max_body_bytes limit, or the model's edgedl_max_body_bytes)")
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        # one buffer; allocated once and filled in place when the length is known (no list of chunks, no join)
        buf = bytearray(declared) if declared is not None else bytearray()
        size = 0
        while True:
            if size + len(body) > limit:
                raise HTTPError(413, f"request body exceeds the limit of {limit} bytes "
                                     "(the server's max_body_bytes limit, or the model's edgedl_max_body_bytes)")
            if declared is None:
                buf += body
            else:
                buf[size:size + len(body)] = body
            size += len(body)
            if not message.get("more_body", False):
                return buf
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client disconnected before sending the whole body")
            body = message.get("body", b"")

    # --- infer ---------------------------------------------------------------------------------------------
    async def _infer(self, ctx, model, version=None):
        header_length = ctx.header_length
        if header_length is not None:
            try:
                header_length = int(header_length)
            except ValueError:
                raise HTTPError(400, "Inference-Header-Content-Length is not a number") from None
        served = self.registry.get(model, version)
        ctx.version = served.version
        started = perf_counter()
        with self.admitted():  # from the first byte of the body: a client that never sends it holds a place
            body = await self._read_body(ctx.receive, ctx.content_length, served.limits.max_body_bytes)
            ctx.large = len(body) >= LARGE_BODY_BYTES
            decode = partial(served.decode, body, header_length, self.shared_memory)
            del body  # the feeds may still view its memory; nothing else needs it
            body, json_len = await self.infer(served, decode, ctx.large, started, ctx)
        extra = None if json_len is None else [(b"inference-header-content-length", str(json_len).encode())]
        return 200, body, extra

    def admitted(self) -> _Admission:
        """``with app.admitted():`` one infer request being served (HTTP or gRPC); 503 beyond --max-in-flight."""
        return self._admission

    async def infer(self, model: ServedModel, decode, large: bool, started: float, ctx: RequestContext | None = None,
                    encode=None):
        """Decode, run and encode one request for ``model``: the path HTTP and gRPC share. ``decode()`` gives
        the InferRequest; ``large``: decode, run and encode off the event loop; ``encode(model, request_id,
        outputs)`` (default: the HTTP body in parts) gives the result."""
        with model.busy(self.metrics):
            request = await self._off_loop(decode) if large else decode()
            if ctx is not None:
                ctx.request_id = request.id
            decoded = perf_counter()
            out, timing = await model.serve(request, self.metrics, started, large)
        outputs = select_outputs(request, out, model.output_names, model.labels, model.row_outputs,
                                 self.shared_memory)
        del out
        if self.tracer.enabled and self.tracer.sample(model.name):
            self._trace(model, request.id, started, decoded, timing)
        if not large:
            out_bytes = 0
            for output in outputs:
                out_bytes += output[1].nbytes
            large = out_bytes >= LARGE_BODY_BYTES
            if large and ctx is not None:
                ctx.large = True
        if encode is None:
            encode = partial(encode_response, model.name, model.version, request.id, outputs, parts=True)
        else:
            encode = partial(encode, model, request.id, outputs)
        del request, outputs
        return await self._off_loop(encode) if large else encode()

    def _trace(self, model: ServedModel, request_id, started: float, queued: float, t) -> None:
        compute = queued + t.queue
        self.tracer.record(model.name, model.version, request_id, [
            ("REQUEST_START", started), ("QUEUE_START", queued), ("COMPUTE_START", compute),
            ("COMPUTE_INPUT_END", compute + t.input), ("COMPUTE_OUTPUT_START", compute + t.input + t.infer),
            ("COMPUTE_END", compute + t.input + t.infer + t.output), ("REQUEST_END", perf_counter())])

    async def _off_loop(self, fn):
        return await asyncio.get_running_loop().run_in_executor(self._workers, fn)


# (method, path, handler, endpoint label for metrics, reachable without the API key). A /v2/models/{model}/...
# path also matches with /versions/{version} after the model; the router tries literal segments first.
ROUTES = (
    ("GET", "/v2/health/live", "_live", "health", True),
    ("GET", "/v2/health/ready", "_ready", "health", False),
    ("GET", "/metrics", "_metrics", "metrics", False),
    ("GET", "/v2", "_server_metadata", "metadata", False),
    ("GET", "/v2/models/stats", "_all_stats", "stats", False),
    ("GET", "/v2/models/{model}", "_model_metadata", "metadata", False),
    ("GET", "/v2/models/{model}/ready", "_model_ready", "ready", False),
    ("GET", "/v2/models/{model}/config", "_model_config", "config", False),
    ("GET", "/v2/models/{model}/stats", "_model_stats", "stats", False),
    ("POST", "/v2/models/{model}/infer", "_infer", "infer", False),
    ("POST", "/v2/repository/index", "_index", "repository", False),
    ("POST", "/v2/repository/models/{model}/load", "_load", "repository", False),
    ("POST", "/v2/repository/models/{model}/unload", "_unload", "repository", False),
    ("GET", "/v2/systemsharedmemory/status", "_shm_status", "shared_memory", False),
    ("GET", "/v2/systemsharedmemory/region/{region}/status", "_shm_status", "shared_memory", False),
    ("POST", "/v2/systemsharedmemory/region/{region}/register", "_shm_register", "shared_memory", False),
    ("POST", "/v2/systemsharedmemory/unregister", "_shm_unregister", "shared_memory", False),
    ("POST", "/v2/systemsharedmemory/region/{region}/unregister", "_shm_unregister", "shared_memory", False),
    ("GET", "/v2/cudasharedmemory/status", "_cuda_status", "shared_memory", False),
    ("GET", "/v2/cudasharedmemory/region/{region}/status", "_cuda_status", "shared_memory", False),
    ("POST", "/v2/cudasharedmemory/region/{region}/register", "_cuda_register", "shared_memory", False),
    ("POST", "/v2/cudasharedmemory/unregister", "_cuda_unregister", "shared_memory", False),
    ("POST", "/v2/cudasharedmemory/region/{region}/unregister", "_cuda_unregister", "shared_memory", False),
    ("GET", "/v2/trace/setting", "_trace_get", "trace", False),
    ("POST", "/v2/trace/setting", "_trace_update", "trace", False),
    ("GET", "/v2/models/{model}/trace/setting", "_trace_get", "trace", False),
    ("POST", "/v2/models/{model}/trace/setting", "_trace_update", "trace", False),
    ("GET", "/v2/logging", "_log_get", "logging", False),
    ("POST", "/v2/logging", "_log_update", "logging", False),
)


def key_matches(auth: bytes | str | None, key: bytes) -> bool:
    """An ``Authorization: Bearer KEY`` value (HTTP header or gRPC metadata) that carries ``key``."""
    if auth is None:
        return False
    raw = auth.encode() if isinstance(auth, str) else auth
    return raw[:7].lower() == b"bearer " and hmac.compare_digest(raw[7:].strip(), key)


def load_parameters(doc) -> tuple[dict | None, dict[str, bytes]]:
    """A repository load's body, ``{"parameters": {"config": "<JSON>", "file:1/model.onnx": "<base64>"}}``, as
    (the parsed configuration or None, the files by path); anything else in it is refused, never ignored."""
    if doc is None:
        return None, {}
    params = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(params, dict) or set(doc) - {"parameters"}:
        raise HTTPError(400, "a load's body is {\"parameters\": {\"config\": ..., \"file:PATH\": ...}}")
    config, files = None, {}
    for key, value in params.items():
        if key == "config":
            if not isinstance(value, str):
                raise HTTPError(400, "the load parameter 'config' must be a string holding the model configuration "
                                     "as JSON")
            try:
                config = config_from_json(json.loads(value))
            except ValueError as exc:
                raise HTTPError(400, f"the load parameter 'config' is not JSON: {exc}") from None
            except EdgeDLError as exc:
                raise HTTPError(400, str(exc)) from None
        elif key.startswith("file:"):
            if not isinstance(value, str):
                raise HTTPError(400, f"the load parameter '{key[:60]}' must be the file's content in base64")
            try:
                files[key[5:]] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise HTTPError(400, f"the load parameter '{key[:60]}' is not valid base64") from None
        else:
            raise HTTPError(400, f"unknown load parameter '{key[:60]}'; a load takes 'config' and 'file:PATH'")
    if files and config is None:
        raise HTTPError(400, "failed to load: file overrides need the 'config' parameter too (as in Triton)")
    return config, files
