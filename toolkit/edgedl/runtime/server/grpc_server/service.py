"""The KServe v2 ``GRPCInferenceService`` with Triton's extensions (model config, statistics, repository), served
by this package's HTTP/2 layer (http2.py) on the HTTP server's event loop, over the same Registry, models and statistics.

One decoder for both protocols: a ModelInferRequest is rewritten into the document of the equivalent HTTP binary
request (its JSON header, never serialized, and the raw tensors) and decoded by ``protocol.parse_infer_document``,
so every check and message is the HTTP one; outputs go out as their binary wire bytes (``protocol.wire_bytes``)
in ``raw_output_contents``.
Metadata, config, statistics and the index are the HTTP documents converted with protobuf's JSON mapping
(Triton's HTTP documents are that mapping); shared memory, trace and log settings go to the same objects as
HTTP's. A large request is decoded, run and encoded off the event loop, as over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import traceback
from functools import partial
from time import perf_counter

from edgedl.errors import EdgeDLError
from edgedl.runtime.server import documents
from edgedl.runtime.server.app import key_matches, load_parameters
from edgedl.runtime.server.grpc_server import http2, messages
from edgedl.runtime.server.grpc_server.messages import SERVICE, json_format, message
from edgedl.runtime.server.memo import Memo
from edgedl.runtime.server.protocol import HTTPError, output_datatype, wire_bytes
from edgedl.runtime.server.tensorjson import STREAM_ABOVE_BYTES as LARGE_BODY_BYTES

log = logging.getLogger("edgedl.serve")

# the status an HTTP front end would answer -> the gRPC code Triton uses for the same case
_CODES = {400: http2.INVALID_ARGUMENT, 401: http2.UNAUTHENTICATED, 404: http2.NOT_FOUND,
          413: http2.RESOURCE_EXHAUSTED, 503: http2.UNAVAILABLE}
# typed InferTensorContents field for each datatype (FP16 and BF16 have none: raw_input_contents only)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_FIELDS = sorted(set(_CONTENTS.values()))
STREAM_WINDOW = 64  # requests of one ModelStreamInfer stream in flight at once; the next waits (backpressure)

InferResponse = message("ModelInferResponse")
OutputTensor = InferResponse.InferOutputTensor
StreamResponse = message("ModelStreamInferResponse")


def _param(p):
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def request_document(request) -> tuple[dict, bytes]:
    """A ModelInferRequest as the HTTP binary-tensor request it is equivalent to: (the JSON document, the
    binary tensors after it), for the HTTP decoder's checks and messages."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise HTTPError(400, f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs; "
                             "send one per input, in the order of 'inputs'")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        params = {k: _param(v) for k, v in tensor.parameters.items()} if tensor.parameters else {}
        typed = [f for f in _FIELDS if len(getattr(tensor.contents, f))] if tensor.HasField("contents") else []
        if raw:
            if typed:
                raise HTTPError(400, f"input '{tensor.name}' has both contents and raw_input_contents; send one")
            params["binary_data_size"] = len(raw[i])
        elif typed:
            field = _CONTENTS.get(tensor.datatype)
            if typed != [field]:
                raise HTTPError(400, f"input '{tensor.name}' is {tensor.datatype} but its data is in "
                                     f"{', '.join(typed)}; use {field or 'raw_input_contents'}")
            values = list(getattr(tensor.contents, field))
            if field == "bytes_contents":
                try:
                    values = [v.decode("utf-8") for v in values]
                except UnicodeDecodeError:
                    raise HTTPError(400, f"BYTES input '{tensor.name}': an element is not valid UTF-8") from None
            entry["data"] = values
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    doc = {"inputs": inputs}
    if request.id:
        doc["id"] = request.id
    if request.parameters:
        doc["parameters"] = {k: _param(v) for k, v in request.parameters.items()}
    if request.outputs:
        doc["outputs"] = [{"name": o.name, "parameters": {k: _param(v) for k, v in o.parameters.items()}}
                          for o in request.outputs]
    return doc, raw[0] if len(raw) == 1 else b"".join(raw)


# an answer's ModelInferResponse fields 1-5 (names, version, id, the outputs' names, types and shapes) are the same
# for every answer with the same outputs: serialized once and remembered (a bounded number), the tensors appended
# as field 6 (raw_output_contents) entries - protobuf's own encoding of the whole message
_RESPONSE_HEADS = Memo(256)  # -> (serialized head, the outputs' datatypes)
_RAW_OUTPUT_CONTENTS = b"\x32"  # field 6, length-delimited
_INFER_RESPONSE = b"\x12"  # ModelStreamInferResponse field 2 (infer_response), length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _encode_grpc(model, request_id, outputs) -> bytes:
    """The outputs (as ``select_outputs`` gives them) as a serialized ModelInferResponse, every tensor in
    raw_output_contents; an output in shared memory gets an empty entry (the entries stay in the order of the
    outputs) and the region in its parameters, as the HTTP response names it."""
    if any(o[3] is not None for o in outputs):
        return _response_message(model, request_id, outputs).SerializeToString()
    key = (model.name, model.version, request_id, tuple((o[0], o[1].dtype, o[1].shape) for o in outputs))
    known = _RESPONSE_HEADS.get(key)
    if known is None:
        head = _response_message(model, request_id, outputs, contents=False)
        known = _RESPONSE_HEADS.keep(key, (head.SerializeToString(), tuple(t.datatype for t in head.outputs)))
    head, datatypes = known
    parts = [head]
    for output, datatype in zip(outputs, datatypes):
        blob = wire_bytes(output[1], datatype)
        parts += (_RAW_OUTPUT_CONTENTS, _varint(len(blob)), blob)
    return b"".join(parts)


def _response_message(model, request_id, outputs, contents: bool = True):
    response = InferResponse(model_name=model.name, model_version=model.version, id=request_id or "")
    tensors, raw = response.outputs, response.raw_output_contents
    for name, arr, _, shared in outputs:
        datatype = output_datatype(arr)
        tensor = tensors.add(name=name, datatype=datatype, shape=arr.shape)
        if not contents:
            continue
        if shared is None:
            raw.append(wire_bytes(arr, datatype))
            continue
        tensor.parameters["shared_memory_region"].string_param = shared.region
        tensor.parameters["shared_memory_byte_size"].int64_param = shared.byte_size
        if shared.offset:
            tensor.parameters["shared_memory_offset"].int64_param = shared.offset
        raw.append(b"")
    return response


def _as_is(serialized: bytes) -> bytes:
    return serialized


class InferenceService:
    """The RPC handlers over one InferenceApp (its registry, configuration, metrics and documents)."""

    def __init__(self, app):
        self.app, self.registry, self.metrics = app, app.registry, app.metrics

    # --- health and metadata -------------------------------------------------------------------------------
    async def ServerLive(self, request):
        return message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request):
        return message("ServerReadyResponse")(ready=self.app.ready)

    async def ModelReady(self, request):
        entry = self.registry.models.get(request.name)
        ready = (entry is not None and (not request.version or request.version in entry.versions)
                 and self.app.started and not self.app.draining)
        return message("ModelReadyResponse")(ready=ready)

    async def ServerMetadata(self, request):
        return message("ServerMetadataResponse")(**documents.server_metadata())

    async def ModelMetadata(self, request):
        model = self.registry.get(request.name, request.version or None)
        return self._parse(documents.model_metadata(self.registry, model), "ModelMetadataResponse")

    async def ModelConfig(self, request):
        model = self.registry.get(request.name, request.version or None)
        return self._parse({"config": documents.model_config(model)}, "ModelConfigResponse")

    async def ModelStatistics(self, request):
        if request.name:
            self.registry.get(request.name, request.version or None)
        stats = documents.statistics(self.registry, request.name or None, request.version or None)
        return self._parse({"model_stats": stats}, "ModelStatisticsResponse")

    @staticmethod
    def _parse(doc: dict, name: str):
        return json_format.ParseDict(doc, message(name)(), ignore_unknown_fields=True)

    # --- repository ----------------------------------------------------------------------------------------
    async def RepositoryIndex(self, request):
        models = [m for m in documents.index(self.registry, self.app.config.model_repository)
                  if not request.ready or m["state"] == "READY"]
        return self._parse({"models": models}, "RepositoryIndexResponse")

    async def RepositoryModelLoad(self, request):
        self.app.require_model_control()
        params = {}
        for key, value in request.parameters.items():
            kind = value.WhichOneof("parameter_choice")
            params[key] = base64.b64encode(value.bytes_param).decode() if kind == "bytes_param" else _param(value)
        config, files = load_parameters({"parameters": params} if params else None)
        try:
            await self.registry.reload(request.model_name, config, files)
        except EdgeDLError as exc:
            raise HTTPError(400, f"failed to load '{request.model_name}': {exc}") from None
        return message("RepositoryModelLoadResponse")()

    async def RepositoryModelUnload(self, request):
        self.app.require_model_control()
        await self.registry.unload(request.model_name)
        return message("RepositoryModelUnloadResponse")()

    # --- shared memory, trace, logging ---------------------------------------------------------------------
    async def SystemSharedMemoryStatus(self, request):
        shm = self.app.shared_memory
        if request.name and request.name not in shm.regions:
            raise HTTPError(404, f"Unable to find system shared memory region: '{request.name}'")
        return self._parse({"regions": {r["name"]: r for r in shm.status(request.name or None)}},
                           "SystemSharedMemoryStatusResponse")

    async def SystemSharedMemoryRegister(self, request):
        self.app.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return message("SystemSharedMemoryRegisterResponse")()

    async def SystemSharedMemoryUnregister(self, request):
        self.app.shared_memory.unregister(request.name or None)
        return message("SystemSharedMemoryUnregisterResponse")()

    async def CudaSharedMemoryStatus(self, request):
        if request.name:
            raise HTTPError(404, f"Unable to find cuda shared memory region: '{request.name}'")
        return message("CudaSharedMemoryStatusResponse")()

    async def CudaSharedMemoryRegister(self, request):
        raise HTTPError(400, "CUDA shared memory is not available: this server keeps tensors in CPU memory; "
                             "register system shared memory instead")

    async def CudaSharedMemoryUnregister(self, request):
        return message("CudaSharedMemoryUnregisterResponse")()

    async def TraceSetting(self, request):
        model = request.model_name or None
        if model is not None:
            self.registry.get(model, None)
        changes = {key: (list(v.value) if key == "trace_level" else v.value[0]) if v.value else None
                   for key, v in request.settings.items()}
        settings = (self.app.tracer.update(changes, model) if changes else self.app.tracer.of(model)).to_json()
        response = message("TraceSettingResponse")()
        for key, value in settings.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    async def LogSettings(self, request):
        changes = {key: _param(v) for key, v in request.settings.items()}
        values = self.app.logs.update(changes) if changes else self.app.logs.values
        response = message("LogSettingsResponse")()
        for key, value in values.items():
            field = {bool: "bool_param", int: "uint32_param", str: "string_param"}[type(value)]
            setattr(response.settings[key], field, value)
        return response

    # --- inference -----------------------------------------------------------------------------------------
    async def ModelInfer(self, request):
        started = perf_counter()
        model, status = None, 500
        try:
            model = self.registry.get(request.model_name, request.model_version or None)
            large = request.ByteSize() >= LARGE_BODY_BYTES  # typed contents too
            shared = self.app.shared_memory

            def decode():
                return model.decode_document(*request_document(request), shared)

            with self.app.admitted():
                response = await self.app.infer(model, decode, large, started, encode=_encode_grpc)
            status = 200
            return response
        except HTTPError as exc:
            status = exc.status
            raise
        except EdgeDLError:
            status = 400
            raise
        finally:
            self._count(model, status, perf_counter() - started)

    def _count(self, model, status: int, seconds: float) -> None:
        """The request metrics HTTP keeps per infer call, with the status HTTP would have answered."""
        from edgedl.runtime.server.app import _REASON

        m = self.metrics
        name, version = (model.name, model.version) if model is not None else ("", "")
        m.requests.inc((name, version, status))
        if status != 200:
            m.failures.inc((name, _REASON.get(status, "internal")))
        else:
            m.total.observe((name, version), seconds)

    async def ModelStreamInfer(self, requests):
        """Each request is answered as soon as it is done (not in order, as Triton does), up to STREAM_WINDOW at
        once, running or answered but not yet taken by the caller (a caller that stops taking answers stops the
        reading of requests); a failed request gets an error_message and the stream goes on."""
        responses: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        running: set[asyncio.Task] = set()

        async def answer(request):
            try:
                answer = await self.ModelInfer(request)
                result = _INFER_RESPONSE + _varint(len(answer)) + answer
            except Exception as exc:  # noqa: BLE001 - reported on the stream, like Triton
                _, text = _status(exc)
                result = StreamResponse(error_message=text).SerializeToString()
            await responses.put(result)

        async def read():
            try:
                async for request in requests:
                    await window.acquire()
                    task = asyncio.get_running_loop().create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running)
            finally:
                await responses.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (item := await responses.get()) is not None:
                yield item
                window.release()
            await reader  # surfaces a failed read (a broken stream)
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()


def _status(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HTTPError):
        return _CODES.get(exc.status, http2.INTERNAL), exc.message
    if isinstance(exc, EdgeDLError):  # the runner's input checks and onnxruntime failures on this input
        return http2.INVALID_ARGUMENT, str(exc)
    log.error("internal error in a gRPC call:\n%s", "".join(traceback.format_exception(exc)))
    return http2.INTERNAL, f"internal server error: {type(exc).__name__}: {exc}"


class GrpcServer:
    """The gRPC endpoint of one InferenceApp: ``await start(host, port)`` (-> the bound port) on the app's event
    loop, ``await stop(grace)`` lets calls in flight finish for up to ``grace`` seconds."""

    def __init__(self, app):
        self.app = app
        self.service = InferenceService(app)
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[http2.Connection] = set()

    def _methods(self) -> dict[bytes, http2.Method]:
        methods = {}
        for name, (request_type, response_type, streaming) in messages.methods().items():
            handler = getattr(self.service, name, None)
            if handler is not None:  # a method the service does not define is answered UNIMPLEMENTED
                encode = _as_is if name in ("ModelInfer", "ModelStreamInfer") else response_type.SerializeToString
                methods[f"/{SERVICE}/{name}".encode()] = http2.Method(
                    request_type.FromString, encode, handler, streaming,
                    public=name == "ServerLive")  # as HTTP exempts /v2/health/live from the API key
        return methods

    async def start(self, host: str, port: int) -> int:
        config = self.app.config
        key = config.api_key.encode() if config.api_key else None
        limits = config.limits
        endpoint = http2.Endpoint(self._methods(), _status, None if key is None else partial(key_matches, key=key),
                                  max_message_bytes=limits.max_body_bytes, max_header_bytes=limits.max_header_bytes,
                                  handshake_timeout_s=limits.header_timeout_s, max_connections=limits.max_connections)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(lambda: http2.Connection(endpoint, self.connections), host, port,
                                                   reuse_address=True, backlog=1024)
        except OSError as exc:
            raise EdgeDLError(f"cannot listen for gRPC on {address} ({exc.strerror or exc}); pick another gRPC "
                              "port") from None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self, grace: float) -> None:
        if self.server is None:
            return
        self.server.close()
        idle = [c.drain() for c in list(self.connections)]
        if idle:
            await asyncio.wait([asyncio.ensure_future(e.wait()) for e in idle], timeout=grace)
        for connection in list(self.connections):
            connection.abort()
