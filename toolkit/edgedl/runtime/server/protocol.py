"""Open Inference Protocol v2 bodies: parse an infer request (JSON + Triton binary tensors) into numpy feeds,
and encode the response. Pure functions over bytes; no web framework. Every malformed request becomes an
``HTTPError`` with the status the spec asks for and a message that says what is wrong. Large JSON bodies are
read by ``tensorjson`` (numbers straight into numpy); large responses are a list of parts (JSON header, then
each binary tensor's own memory) so nothing is copied to build them.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgedl.runtime.server import tensorjson
from edgedl.runtime.server.memo import Memo
from edgedl.runtime.server.tensorjson import NumberArray
from edgedl.runtime.tensors import DATATYPES, TensorInfo, datatype_of

# which numpy kinds a JSON list may hold for each target kind (JSON ints are fine for float inputs)
_JSON_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b", "O": "US"}
# the wire is little-endian; on a little-endian host the native dtype (the very object the runner's fast check
# compares against) already is, so arrays from the wire skip the runner's slow path
_NATIVE_LE = sys.byteorder == "little"


class HTTPError(Exception):
    """A request the server refuses: ``status`` and a one-line message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def v2_shape(info: TensorInfo) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in info.shape]


INT64_MAX = 2 ** 63 - 1  # Triton's bound on a tensor's element count and byte size


@dataclass(frozen=True)
class SharedSlice:
    """Where a tensor's bytes are in a registered system shared memory region."""

    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool
    classes: int = 0  # the classification extension: the top N as "value:index[:label]" strings
    shared: SharedSlice | None = None  # write it into system shared memory instead of the response


@dataclass
class InferRequest:
    id: str | None
    feeds: dict[str, np.ndarray]
    outputs: list[OutputRequest] | None  # in the order asked; None = all, in binary_default form
    binary_default: bool
    rows: int  # size of axis 0 of the first input (the batch, for batching models)

    @property
    def output_names(self) -> list[str] | None:
        return None if self.outputs is None else [o.name for o in self.outputs]


def _header_split(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if header_length < 0 or header_length > len(body):
        raise HTTPError(400, f"Inference-Header-Content-Length {header_length} does not fit the {len(body)}-byte "
                             "body; it must be the byte length of the JSON part")
    view = memoryview(body)
    return view[:header_length], view[header_length:]


def _loads(raw) -> Any:
    try:
        return tensorjson.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
    except UnicodeDecodeError:
        raise HTTPError(400, "request body is not UTF-8 JSON; binary tensors need an Inference-Header-Content-Length "
                             "header") from None
    except ValueError as exc:
        raise HTTPError(400, f"malformed JSON in request body: {exc}") from None


def _may_hold_booleans(json_text) -> bool:
    """Whether a JSON text has a true or false anywhere: a search at C speed (~1 us per KB) that spares requests
    that cannot hold any the look for booleans in numeric data lists (Python's, ~20 ns an element)."""
    raw = json_text if isinstance(json_text, bytes) else bytes(json_text)
    return b"true" in raw or b"false" in raw


def _holds_booleans(data: list) -> bool:
    """Whether a (nested) list holds a JSON true/false, which numpy would read as 1/0 among numbers."""
    lists = [data]
    while lists:
        items = lists.pop()
        kinds = set(map(type, items))
        if bool in kinds:
            return True
        if list in kinds:
            lists.extend(v for v in items if v.__class__ is list)
    return False


def bytes_elements(raw: memoryview, count: int, name: str) -> np.ndarray:
    """``count`` BYTES elements, each a 4-byte little-endian length and its UTF-8 bytes, as a str object array."""
    out = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise HTTPError(400, f"BYTES input '{name}': binary data holds fewer than the {count} elements of its shape")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > end:
            raise HTTPError(400, f"BYTES input '{name}': element {i} declares {length} bytes past the end of its data")
        try:
            out[i] = str(raw[pos:pos + length], "utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, f"BYTES input '{name}': element {i} is not valid UTF-8") from None
        pos += length
    if pos != end:
        raise HTTPError(400, f"BYTES input '{name}': {end - pos} bytes left over after its {count} elements")
    return out


_KIND_WORDS = {"U": "strings", "S": "strings", "b": "booleans", "f": "non-integer numbers", "i": "integers",
               "u": "integers"}


def _from_numbers(data: NumberArray, dtype: np.dtype, count: int, name: str, datatype: str) -> np.ndarray:
    """A large JSON number array: the same checks as ``_from_json`` makes on a list, then numpy parses it."""
    if data.shape is None:
        raise HTTPError(400, f"input '{name}': 'data' is not a regular array (nested lists of unequal lengths)")
    if data.count != count:
        raise HTTPError(400, f"input '{name}': 'data' has {data.count} elements but its shape needs {count}")
    kind = "f" if data.is_float else "i"
    if kind not in _JSON_KINDS[dtype.kind]:
        raise HTTPError(400, f"input '{name}' is {datatype} but 'data' holds {_KIND_WORDS[kind]}")
    try:
        return data.to_numpy(dtype)
    except tensorjson.DecodeError as exc:
        raise HTTPError(400, f"input '{name}': {exc}") from None
    except OverflowError:
        raise HTTPError(400, f"input '{name}': a value is out of range for {datatype}") from None


def _from_json(data: Any, dtype: np.dtype, count: int, name: str, datatype: str, streamed: bool,
               booleans: bool = True) -> np.ndarray:
    """``booleans``: the request's JSON may hold true/false (else numeric lists are not searched for them)."""
    if isinstance(data, NumberArray):
        return _from_numbers(data, dtype, count, name, datatype)
    if not isinstance(data, list):
        raise HTTPError(400, f"input '{name}': 'data' must be a list (row-major, flat or nested)")
    if streamed:  # numeric rows of a large body next to other values become lists again
        try:
            data = tensorjson.plain(data)
        except tensorjson.DecodeError as exc:
            raise HTTPError(400, f"malformed JSON in request body: {exc}") from None
    while len(data) == 1 and data[0].__class__ is list:  # [[[x]]]: deeper than numpy's 64 dimensions allow
        data = data[0]
    try:
        arr = np.array(data)
    except (ValueError, TypeError) as exc:
        raise HTTPError(400, f"input '{name}': 'data' is not a regular array ({exc})") from None
    if arr.size != count:
        raise HTTPError(400, f"input '{name}': 'data' has {arr.size} elements but its shape needs {count}")
    if count == 0:
        return arr.astype(dtype).ravel()
    kind = arr.dtype.kind
    if kind == "O" and any(v is None for v in arr.flat):  # numpy would make NaN of a null for a float input
        raise HTTPError(400, f"input '{name}' is {datatype} but 'data' holds null")
    if kind == "O" and dtype.kind == "f":  # integers past 64 bits are still numbers for a float input
        try:
            arr = arr.astype(np.float64)
            kind = "f"
        except (TypeError, ValueError, OverflowError):
            pass
    elif kind in "fO" and dtype.kind in "iu":  # int64 and uint64 values together (numpy makes floats of them), or
        exact = np.array(data, dtype=object)  # integers past 64 bits: judge the Python integers themselves
        if all(type(v) is int for v in exact.flat):
            arr, kind = exact, "i"
    if kind not in _JSON_KINDS[dtype.kind]:
        raise HTTPError(400, f"input '{name}' is {datatype} but 'data' holds {_KIND_WORDS.get(kind, 'mixed values')}")
    if booleans and kind in "fiu" and _holds_booleans(data):  # Triton refuses them too (500: not a number)
        raise HTTPError(400, f"input '{name}' is {datatype} but 'data' holds booleans among its numbers")
    if dtype.kind in "iu" and arr.dtype != dtype:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise HTTPError(400, f"input '{name}': a value is out of range for {datatype}")
    if dtype.kind == "O":
        return arr.astype(str).astype(object).ravel()
    return arr.astype(dtype, copy=False).ravel()


def _shared_slice(params: dict, what: str) -> SharedSlice | None:
    """The system shared memory a tensor's parameters name, or None."""
    region = params.get("shared_memory_region")
    if region is None:
        return None
    size, offset = params.get("shared_memory_byte_size"), params.get("shared_memory_offset", 0)
    if not isinstance(region, str) or type(size) is not int or size < 0 or type(offset) is not int or offset < 0:
        raise HTTPError(400, f"{what}: shared_memory_region must be a string and shared_memory_byte_size / "
                             "shared_memory_offset non-negative integers")
    return SharedSlice(region, offset, size)


def _check_count(name: str, shape: list[int], dtype: np.dtype, datatype: str, max_elements, max_rows) -> int:
    count = math.prod(shape)
    if count > INT64_MAX:
        raise HTTPError(400, f"input '{name}': shape {shape} causes total element count to exceed maximum size of "
                             f"{INT64_MAX}")
    if dtype.kind != "O" and count * dtype.itemsize > INT64_MAX:
        raise HTTPError(400, f"byte size overflow for input '{name}': shape {shape} of {datatype} is more than "
                             f"{INT64_MAX} bytes")
    if max_elements is not None and count > max_elements:
        raise HTTPError(413, f"input '{name}' has {count} elements (shape {shape}), more than this model's "
                             f"limit of {max_elements} per tensor; send smaller requests")
    if max_rows is not None and shape and shape[0] > max_rows:  # 400, as Triton answers past max_batch_size
        raise HTTPError(400, f"input '{name}' has {shape[0]} rows, more than this model's limit of {max_rows} "
                             "per request (its max_batch_size, or the server's max_batch_rows limit); split the batch")
    return count


def _tensor_from_bytes(raw, dtype: np.dtype, count: int, shape: list[int], name: str, datatype: str) -> np.ndarray:
    if dtype.kind == "O":
        return bytes_elements(raw, count, name)
    if len(raw) != count * dtype.itemsize:
        raise HTTPError(400, f"input '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                             f"got {len(raw)}")
    arr = np.frombuffer(raw, dtype=dtype if _NATIVE_LE else dtype.newbyteorder("<"), count=count)
    return arr if _NATIVE_LE else arr.astype(dtype)


def _raw_request(body, inputs: dict[str, TensorInfo], model_name: str, leading_batch: bool, max_elements,
                 max_rows) -> InferRequest:
    """A body that is the raw bytes of the model's one input (``Inference-Header-Content-Length: 0``): its
    shape deduced from the byte count, as Triton does; every output comes back binary."""
    if len(inputs) != 1:
        raise HTTPError(400, f"Raw request must only have 1 input (found 1) to be deduced but got {len(inputs)} "
                             f"inputs in '{model_name}' model configuration")
    (info,) = inputs.values()
    name, dtype, datatype = info.name, info.dtype, datatype_of(info.dtype)
    dims = list(info.shape)
    if leading_batch and dims:
        dims[0] = 1  # one row
    variable = [i for i, d in enumerate(dims) if not isinstance(d, int) or d < 0]
    if dtype.kind == "O":
        if variable or math.prod(dims) != 1:
            raise HTTPError(400, f"For BYTE datatype raw input '{name}', the model must have input shape [1]")
        arr = np.empty(1, dtype=object)
        try:
            arr[0] = str(body, "utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, f"BYTES input '{name}': the raw body is not valid UTF-8") from None
        return InferRequest(None, {name: arr.reshape(dims)}, None, True, 1)
    if len(variable) > 1:
        raise HTTPError(400, f"The shape of the raw input '{name}' can not be deduced because there are more than "
                             "one variable-sized dimension")
    fixed = math.prod(d for i, d in enumerate(dims) if i not in variable) * dtype.itemsize
    if variable:
        if fixed == 0 or len(body) % fixed or not body:
            raise HTTPError(400, f"The size of the raw input '{name}' ({len(body)} bytes) is not a positive "
                                 f"multiple of the {fixed} bytes its other dimensions take; its shape can not be "
                                 "deduced")
        dims[variable[0]] = len(body) // fixed
    count = _check_count(name, dims, dtype, datatype, max_elements, max_rows)
    arr = _tensor_from_bytes(memoryview(body), dtype, count, dims, name, datatype)
    return InferRequest(None, {name: arr.reshape(dims)}, None, True, dims[0] if dims else 1)


_FAST_FINITE_ELEMENTS = 4096
_ZEROS: dict[np.dtype, np.ndarray] = {}
# the dot product below is NaN for a tensor holding NaN or an infinity, which numpy reports as a warning; that
# tensor is then refused with a 400, so the warning says nothing (only this module's dot products are silenced)
warnings.filterwarnings("ignore", message="invalid value encountered in dot", category=RuntimeWarning,
                        module=__name__)


def _check_finite(name: str, arr: np.ndarray) -> None:
    if arr.dtype.kind != "f":
        return
    # a small tensor: its dot product with zeros is 0 when every value is finite and NaN otherwise (0 times NaN
    # or an infinity; it cannot overflow): one BLAS call, about a third of isfinite(...).all()'s time
    if arr.ndim == 1 and arr.size <= _FAST_FINITE_ELEMENTS:
        zeros = _ZEROS.get(arr.dtype)
        if zeros is None:
            zeros = _ZEROS[arr.dtype] = np.zeros(_FAST_FINITE_ELEMENTS, arr.dtype)
        if arr.dot(zeros[:arr.size]) == 0:
            return
    if not np.isfinite(arr).all():
        raise HTTPError(400, f"input '{name}' contains NaN or infinite values; send finite numbers")


PLAN_HEADER_BYTES = 4096  # JSON headers up to this size are remembered (a binary request's header is ~200 bytes)
PLANS_KEPT = 64  # per model; past this the remembered headers are forgotten and collected again


class _Plan:
    """A validated JSON header whose inputs are all binary tensors: what to cut from the binary part of another
    body with the same header."""

    __slots__ = ("request_id", "entries", "outputs", "binary_default", "rows", "binary_size")

    def __init__(self, request: InferRequest, entries: list[tuple], binary_size: int):
        self.request_id, self.outputs = request.id, request.outputs
        self.binary_default, self.rows = request.binary_default, request.rows
        self.entries, self.binary_size = entries, binary_size

    def apply(self, binary, allow_nonfinite: bool) -> InferRequest | None:
        """The request for ``binary`` (the tensors' bytes are checked as on the first parse), or None when its
        length differs from the header's sizes (the full parse then says what is wrong)."""
        if len(binary) != self.binary_size:
            return None
        feeds, offset = {}, 0
        for name, dtype, count, shape, size, datatype in self.entries:
            arr = _tensor_from_bytes(binary[offset:offset + size], dtype, count, shape, name, datatype)
            offset += size
            if not allow_nonfinite:
                _check_finite(name, arr)
            feeds[name] = arr.reshape(shape)
        return InferRequest(self.request_id, feeds, self.outputs, self.binary_default, self.rows)


class HeaderPlans:
    """One model's binary requests' JSON headers, validated, by their bytes. A client sends the same header with
    every request (only the tensors change), so a header seen before skips JSON parsing and its checks; the
    binary part is still checked each time (its length, BYTES elements, NaN). Kept only for headers whose
    inputs are all binary and that name no shared memory (a region can be unregistered); at most PLANS_KEPT."""

    def __init__(self):
        self._plans: Memo = Memo(PLANS_KEPT)  # header bytes -> _Plan

    def get(self, key: bytes) -> _Plan | None:
        return self._plans.get(key)

    def remember(self, key: bytes, doc: dict, request: InferRequest, inputs: dict[str, TensorInfo]) -> None:
        entries, size = [], 0
        for item in doc["inputs"]:
            params = item.get("parameters")
            if not params or "binary_data_size" not in params or "shared_memory_region" in params:
                return
            name = item["name"]
            arr = request.feeds[name]
            entries.append((name, inputs[name].dtype, arr.size, list(arr.shape), params["binary_data_size"],
                            item["datatype"]))
            size += params["binary_data_size"]
        if request.outputs is not None and any(o.shared is not None for o in request.outputs):
            return
        self._plans.keep(key, _Plan(request, entries, size))


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    inputs: dict[str, TensorInfo],
    output_names: list[str],
    *,
    allow_nonfinite: bool = False,
    max_elements: int | None = None,
    max_rows: int | None = None,
    model_name: str = "model",
    leading_batch: bool = False,
    shared_memory=None,
    plans: HeaderPlans | None = None,
) -> InferRequest:
    """Validate and decode one infer request against a model's inputs and outputs (and, when given, the
    model's limits on elements per tensor, 413 beyond, and rows per request, 400 beyond as in Triton).

    ``header_length`` 0 is a raw body (the one input's bytes; ``leading_batch``: its axis 0 is one row);
    ``shared_memory`` (a ``shm.SystemSharedMemory``) resolves inputs given as shared memory regions; ``plans``
    (the model's ``HeaderPlans``) remembers JSON headers already validated."""
    if header_length == 0:
        request = _raw_request(body, inputs, model_name, leading_batch, max_elements, max_rows)
        if not allow_nonfinite:
            ((name, arr),) = request.feeds.items()
            _check_finite(name, arr)
        return request
    json_part, binary = _header_split(body, header_length)
    if plans is None or header_length is None or len(json_part) > PLAN_HEADER_BYTES:
        # a streamed body's data lists are short or not all numbers (large numeric arrays stay NumberArrays, which
        # hold no booleans): look in them without searching megabytes of text first
        streamed = len(json_part) >= tensorjson.STREAM_ABOVE_BYTES
        return parse_infer_document(_loads(json_part), binary, inputs, output_names, allow_nonfinite=allow_nonfinite,
                                    max_elements=max_elements, max_rows=max_rows, shared_memory=shared_memory,
                                    streamed=streamed, booleans=streamed or _may_hold_booleans(json_part))
    key = bytes(json_part)
    plan = plans.get(key)
    if plan is not None:
        request = plan.apply(binary, allow_nonfinite)
        if request is not None:
            return request
    doc = _loads(key)
    request = parse_infer_document(doc, binary, inputs, output_names, allow_nonfinite=allow_nonfinite,
                                   max_elements=max_elements, max_rows=max_rows, shared_memory=shared_memory,
                                   booleans=_may_hold_booleans(key))
    if plan is None:
        plans.remember(key, doc, request, inputs)
    return request


def parse_infer_document(doc, binary, inputs: dict[str, TensorInfo], output_names: list[str], *,
                         allow_nonfinite: bool = False, max_elements: int | None = None, max_rows: int | None = None,
                         shared_memory=None, streamed: bool = False, booleans: bool = True) -> InferRequest:
    """``parse_infer_request`` of a request whose JSON header is already a document (gRPC's requests are one
    without being JSON): ``binary`` holds the tensors its ``binary_data_size`` entries declare, in order;
    ``streamed``: the document came from the streaming JSON parser (large data lists); ``booleans``: it may
    hold true/false values (False: its JSON text has none)."""
    if not isinstance(doc, dict):
        raise HTTPError(400, "request body must be a JSON object with an 'inputs' list")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise HTTPError(400, "'id' must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise HTTPError(400, "'parameters' must be an object")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise HTTPError(400, "parameter 'binary_data_output' must be true or false")
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise HTTPError(400, "request needs a non-empty 'inputs' list")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    rows = -1
    for item in items:
        if not isinstance(item, dict):
            raise HTTPError(400, "each entry of 'inputs' must be an object with name, shape, datatype and data")
        name = item.get("name")
        info = inputs.get(name) if isinstance(name, str) else None
        if info is None:
            if not isinstance(name, str):
                raise HTTPError(400, "each input needs a string 'name'")
            raise HTTPError(400, f"unknown input '{name}'; the model's inputs are {', '.join(inputs)}")
        if name in feeds:
            raise HTTPError(400, f"input '{name}' is given twice")
        datatype = item.get("datatype")
        want = datatype_of(info.dtype)
        if datatype != want:
            if datatype not in DATATYPES:
                raise HTTPError(400, f"input '{name}': unknown datatype {datatype!r}; it must be {want}")
            raise HTTPError(400, f"input '{name}' expects datatype {want}, got {datatype}")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise HTTPError(400, f"input '{name}': 'shape' must be a list of non-negative integers")
        if len(shape) != len(info.shape):
            raise HTTPError(400, f"input '{name}' expects rank {len(info.shape)} {v2_shape(info)}, got shape {shape}")
        for axis, (got, dim) in enumerate(zip(shape, info.shape)):
            if isinstance(dim, int) and got != dim:
                raise HTTPError(400, f"input '{name}' expects size {dim} on axis {axis} (shape {v2_shape(info)}), "
                                     f"got shape {shape}")
        if 0 in shape:
            raise HTTPError(400, f"input '{name}' has an empty dimension (shape {shape}); send at least one row")
        dtype = info.dtype
        count = _check_count(name, shape, dtype, datatype, max_elements, max_rows)
        item_params = item.get("parameters") or {}
        if not isinstance(item_params, dict):
            raise HTTPError(400, f"input '{name}': 'parameters' must be an object")
        size = item_params.get("binary_data_size")
        shared = _shared_slice(item_params, f"input '{name}'") if item_params else None
        if shared is not None:
            if size is not None or "data" in item:
                raise HTTPError(400, f"input '{name}' is in shared memory and also has 'data' or "
                                     "binary_data_size; send one")
            if shared_memory is None:
                raise HTTPError(400, f"input '{name}' names a shared memory region, which this endpoint does not "
                                     "serve")
            raw = shared_memory.view(shared.region, shared.offset, shared.byte_size)
            arr = _tensor_from_bytes(raw, dtype, count, shape, name, datatype)
        elif size is not None:
            if type(size) is not int or size < 0:
                raise HTTPError(400, f"input '{name}': binary_data_size must be a non-negative integer")
            if "data" in item:
                raise HTTPError(400, f"input '{name}' has both 'data' and binary_data_size; send one")
            if offset + size > len(binary):
                raise HTTPError(400, f"input '{name}' declares {size} bytes of binary data but only "
                                     f"{len(binary) - offset} remain in the body (truncated payload?)")
            raw = binary[offset:offset + size]
            offset += size
            arr = _tensor_from_bytes(raw, dtype, count, shape, name, datatype)
        else:
            if "data" not in item:
                raise HTTPError(400, f"input '{name}' has neither 'data' nor parameters.binary_data_size")
            if dtype == np.float16:
                raise HTTPError(400, f"input '{name}' is FP16, which cannot travel as JSON; send it as binary data")
            arr = _from_json(item["data"], dtype, count, name, datatype, streamed, booleans)
        if not allow_nonfinite:
            _check_finite(name, arr)
        feeds[name] = arr.reshape(shape)
        if rows < 0 and shape:
            rows = shape[0]
    if offset != len(binary):
        raise HTTPError(400, f"{len(binary) - offset} bytes of binary data follow the last binary tensor; "
                             "binary_data_size values must add up to the body after the JSON header")
    if len(feeds) != len(inputs):
        missing = [n for n in inputs if n not in feeds]
        raise HTTPError(400, f"missing input(s) {', '.join(missing)}; the model expects {', '.join(inputs)}")
    outputs = None
    wanted = doc.get("outputs")
    if wanted is not None:
        outputs = _requested_outputs(wanted, output_names, binary_default, shared_memory)
    return InferRequest(req_id, feeds, outputs, binary_default, max(rows, 1))


def _requested_outputs(wanted, output_names: list[str], binary_default: bool, shared_memory) -> list[OutputRequest]:
    if not isinstance(wanted, list):
        raise HTTPError(400, "'outputs' must be a list of {\"name\": ...} objects")
    outputs, seen = [], set()
    for out in wanted:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise HTTPError(400, "each entry of 'outputs' needs a string 'name'")
        name = out["name"]
        if name not in output_names:
            raise HTTPError(400, f"unknown output '{name}'; the model's outputs are {', '.join(output_names)}")
        if name in seen:  # as newer Tritons answer (2.51 answered it once)
            raise HTTPError(400, f"output '{name}' already exists in request; ask for each output once")
        seen.add(name)
        oparams = out.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise HTTPError(400, f"output '{name}': 'parameters' must be an object")
        as_binary = oparams.get("binary_data", binary_default)
        if not isinstance(as_binary, bool):
            raise HTTPError(400, f"output '{name}': binary_data must be true or false")
        classes = oparams.get("classification", 0)
        if type(classes) is not int or classes < 0:
            raise HTTPError(400, f"output '{name}': classification must be a non-negative integer (how many of "
                                 "the top classes to return)")
        shared = _shared_slice(oparams, f"output '{name}'") if oparams else None
        if shared is not None:
            if shared_memory is None:
                raise HTTPError(400, f"output '{name}' names a shared memory region, which this endpoint does not "
                                     "serve")
            if classes:
                raise HTTPError(400, f"output '{name}': classification results cannot go to shared memory; ask "
                                     "for one or the other")
            shared_memory.slice(shared.region, shared.offset, shared.byte_size)  # the region exists and fits
        outputs.append(OutputRequest(name, as_binary, classes, shared))
    return outputs


_CLASSIFIABLE = frozenset("iuf")


def classify(values: np.ndarray, count: int, labels: list[str] | None, per_row: bool, name: str) -> np.ndarray:
    """Triton's classification extension: the ``count`` largest values (of each row when ``per_row``) as BYTES
    "value:index[:label]" strings, largest first (floats with 9 decimals, as Triton prints them)."""
    if values.dtype.kind not in _CLASSIFIABLE or values.dtype == np.float16:
        raise HTTPError(400, f"class result not available for output '{name}' due to unsupported type "
                             f"'{datatype_of(values.dtype)}'")
    rows = values.reshape(values.shape[0], -1) if per_row and values.ndim > 1 else values.reshape(1, -1)
    top = min(count, rows.shape[1])
    out = np.empty((rows.shape[0], top), dtype=object)
    floating = values.dtype.kind == "f"
    for r, row in enumerate(rows):
        order = np.argsort(row, kind="stable")[::-1][:top]
        for k, idx in enumerate(order.tolist()):
            v = row[idx]
            text = f"{float(v):.9f}:{idx}" if floating else f"{int(v)}:{idx}"
            if labels is not None and idx < len(labels):
                text += ":" + labels[idx]
            out[r, k] = text
    return out if per_row and values.ndim > 1 else out.reshape(top)


def select_outputs(request: InferRequest, out: dict[str, np.ndarray], output_names: list[str],
                   labels: dict[str, list[str]], row_outputs: frozenset, shared_memory=None) -> list[tuple]:
    """(name, array, binary, shared slice) of each output to send: those asked for (every output, in the
    request's default form, when none is named), classified where asked, and copied into system shared memory
    where asked (the response then only names the region)."""
    if request.outputs is None:
        return [(n, out[n], request.binary_default, None) for n in output_names]
    chosen = []
    for o in request.outputs:
        value = out[o.name]
        if o.classes:
            value = classify(value, o.classes, labels.get(o.name), o.name in row_outputs, o.name)
        elif o.shared is not None:
            data = _bytes_blob(value) if value.dtype.kind in "OUS" else np.ascontiguousarray(
                value, dtype=value.dtype if _NATIVE_LE else value.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
            shared_memory.write(o.shared.region, o.shared.offset, o.shared.byte_size, data)
            chosen.append((o.name, value, False, SharedSlice(o.shared.region, o.shared.offset, len(data))))
            continue
        chosen.append((o.name, value, o.binary, None))
    return chosen


def wire_bytes(arr: np.ndarray, datatype: str, copy_below: int | None = None):
    """An output's bytes as the binary protocols carry them: little-endian, row-major, BYTES as 4-byte-length-
    prefixed elements. A view of the array's memory when it holds ``copy_below`` bytes or more, else bytes."""
    if datatype == "BYTES":
        return _bytes_blob(arr)
    wire = np.ascontiguousarray(arr, dtype=arr.dtype if _NATIVE_LE else arr.dtype.newbyteorder("<"))
    if copy_below is not None and wire.nbytes >= copy_below:
        return wire.reshape(-1).view(np.uint8).data
    return wire.tobytes()


def output_datatype(arr: np.ndarray) -> str:
    return datatype_of(arr.dtype) if arr.dtype.kind != "U" else "BYTES"


def _bytes_blob(arr: np.ndarray) -> bytes:
    parts = []
    for value in arr.ravel():
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


_JSON_VALUES_PER_CALL = 8192  # one json.dumps call holds the GIL (~1 us a float): a few ms at most
_JOIN_BELOW = 64 * 1024  # smaller responses go out as one bytes object (one write), larger ones as parts


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _dumps_plain(value) -> bytes:
    """``_dumps`` of a document that holds no float (names, shapes, sizes: a binary response's header): orjson's
    JSON of it is the same document, in a fraction of the time; without orjson, or for what it refuses, json's."""
    if tensorjson.orjson is not None:
        try:
            return tensorjson.orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError (e.g. a lone surrogate in a request id)
            pass
    return _dumps(value)


def _json_pieces(values: np.ndarray) -> list[bytes]:
    """A large array as JSON list items, in pieces (with the commas between them): no GIL hold, no big copy."""
    parts = []
    for i in range(0, values.size, _JSON_VALUES_PER_CALL):
        if i:
            parts.append(b",")
        parts.append(json.dumps(values[i:i + _JSON_VALUES_PER_CALL].tolist(), separators=(",", ":"))[1:-1].encode())
    return parts


def encode_response(
    model_name: str, version: str, req_id: str | None, outputs: list[tuple[str, np.ndarray, bool, Any]],
    parts: bool = False,
) -> tuple[bytes | list, int | None]:
    """-> (body, the JSON header's length or None when no binary data follows). With ``parts``, a large body
    is a list of parts - bytes or memoryviews of the outputs' own memory - to send in order."""
    body, json_len = _encode(model_name, version, req_id, outputs)
    if isinstance(body, list) and not parts:
        body = b"".join(body)
    return body, json_len


_BINARY_HEADERS = Memo(256)  # an all-binary response's JSON header and datatypes, by what it says


def _with_blobs(header: bytes, blobs: list, blob_bytes: int):
    if blob_bytes < _JOIN_BELOW:
        return b"".join([header, *blobs]), len(header)
    return [header, *blobs], len(header)


def _encode(model_name, version, req_id, outputs):
    # every output binary (the usual answer to a binary request): the JSON header is the same for every response
    # with the same names, types and shapes, so it is written once and remembered (a bounded number of them)
    key = [model_name, version, req_id]
    for name, arr, as_binary, shared in outputs:
        dtype = arr.dtype
        if shared is not None or dtype.kind in "OUS" or not (as_binary or dtype == np.float16):
            key = None
            break
        key += (name, dtype, arr.shape)
    if key is not None:
        key = tuple(key)
        known = _BINARY_HEADERS.get(key)
        if known is not None:
            header, datatypes = known
            blobs = [wire_bytes(o[1], datatype, copy_below=_JOIN_BELOW) for o, datatype in zip(outputs, datatypes)]
            return _with_blobs(header, blobs, sum(len(b) for b in blobs))
    entries = []
    blobs = []
    blob_bytes = 0
    large_json = {}  # entry index -> data too large for one json.dumps call
    for name, arr, as_binary, shared in outputs:
        datatype = output_datatype(arr)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if shared is not None:  # already written to the region
            entry["parameters"] = {"shared_memory_region": shared.region, "shared_memory_byte_size": shared.byte_size}
            if shared.offset:
                entry["parameters"]["shared_memory_offset"] = shared.offset
        elif as_binary or datatype == "FP16":
            # a large tensor goes out from its own memory; a small one is copied into the one response
            blob = wire_bytes(arr, datatype, copy_below=_JOIN_BELOW)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
            blob_bytes += len(blob)
        elif datatype == "BYTES":
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
        elif arr.size > _JSON_VALUES_PER_CALL:
            large_json[len(entries)] = arr.ravel()
        else:
            entry["data"] = arr.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": entries}
    if req_id is not None:
        doc["id"] = req_id
    if not large_json:
        header = _dumps_plain(doc) if not any("data" in e for e in entries) else _dumps(doc)
        if not blobs:
            return header, None
        if key is not None:
            _BINARY_HEADERS.keep(key, (header, tuple(e["datatype"] for e in entries)))
        return _with_blobs(header, blobs, blob_bytes)
    # a large JSON document: its large data lists go out piece by piece, between the pieces of the rest
    doc["outputs"] = []
    head, tail = _dumps(doc).split(b'"outputs":[]', 1)
    parts = [head, b'"outputs":[']
    for i, entry in enumerate(entries):
        if i:
            parts.append(b",")
        if i in large_json:
            parts += [_dumps(entry)[:-1], b',"data":[', *_json_pieces(large_json[i]), b"]}"]
        else:
            parts.append(_dumps(entry))
    parts += [b"]", tail]
    return parts + blobs, (sum(len(p) for p in parts) if blobs else None)
