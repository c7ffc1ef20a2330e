"""Every way the server reads a JSON request agrees with the standard library's parser: for any request text, the
same feeds (values and dtypes) or a refusal with the same status. A small body is read by orjson (when installed;
json where orjson refuses or would read it differently), a large one by the streaming decoder (``tensorjson``),
forced on small texts here by lowering its thresholds, with its numbers read by orjson and by numpy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedl.runtime.server import tensorjson
from edgedl.runtime.server.protocol import HTTPError, parse_infer_request
from edgedl.runtime.tensors import TensorInfo

SPECS = {  # v2 datatype -> (numpy dtype, ONNX type)
    "FP32": (np.float32, "tensor(float)"), "FP64": (np.float64, "tensor(double)"),
    "INT64": (np.int64, "tensor(int64)"), "INT32": (np.int32, "tensor(int32)"), "UINT8": (np.uint8, "tensor(uint8)"),
    "UINT64": (np.uint64, "tensor(uint64)"), "BOOL": (np.bool_, "tensor(bool)"), "BYTES": (object, "tensor(string)"),
}
TOKENS = ["0", "-0", "1", "-7", "42", "3.5", "-0.25", "1e3", "1E-2", "2.5e+4", "NaN", "Infinity", "-Infinity",
          "255", "256", "-1", "2147483648", "9223372036854775807", "9223372036854775808", "18446744073709551616",
          "123456789012345678901234567890", "1e400", "true", "false", "null", '"a"', '"]"',
          # not JSON: numpy's parser would take most of these
          "+1", ".5", "1.", "01", "-01", "00", "1e", "0x10", "inf", "nan", "infinity", "--1", "1-2", "", " ", "1 2"]


NUMBERS_BY = ("orjson", "numpy") if tensorjson.orjson else ("numpy",)


def _decode(text: bytes, datatype: str, dims: tuple, stream: bool, allow_nonfinite: bool, numbers_by: str = ""):
    dtype, onnx_type = SPECS[datatype]
    inputs = {"x": TensorInfo("x", np.dtype(dtype), dims, onnx_type)}
    saved = tensorjson.STREAM_ABOVE_BYTES, tensorjson._SMALL_ARRAY, tensorjson.CHUNK, tensorjson.orjson
    if stream:  # every body, and every numeric array longer than a shape, through the streaming path, in tiny
        tensorjson.STREAM_ABOVE_BYTES, tensorjson._SMALL_ARRAY, tensorjson.CHUNK = 0, 12, 7  # pieces
    if numbers_by == "numpy":
        tensorjson.orjson = None
    try:
        request = parse_infer_request(text, None, inputs, ["y"], allow_nonfinite=allow_nonfinite)
        return "ok", request.feeds["x"]
    except HTTPError as exc:
        return exc.status, exc.message
    finally:
        tensorjson.STREAM_ABOVE_BYTES, tensorjson._SMALL_ARRAY, tensorjson.CHUNK, tensorjson.orjson = saved


def _same(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] != "ok":
        return True
    x, y = a[1], b[1]
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.dtype.kind == "f":
        return np.array_equal(x, y, equal_nan=True)
    return (x == y).all()


def _nest(tokens: list[str], shape: list[int], sep: str) -> str:
    if len(shape) <= 1:
        return "[" + sep.join(tokens) + "]"
    step = len(tokens) // shape[0] if shape[0] else 0
    return "[" + sep.join(_nest(tokens[i * step:(i + 1) * step], shape[1:], sep) for i in range(shape[0])) + "]"


@st.composite
def requests(draw):
    datatype = draw(st.sampled_from(list(SPECS)))
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    count = math.prod(shape)
    n = draw(st.sampled_from([count, count, count, max(count - 1, 0), count + 1]))
    numeric = draw(st.booleans())
    if numeric:
        tokens = draw(st.lists(st.sampled_from(TOKENS[:13] + TOKENS[13:22]), min_size=n, max_size=n))
    else:
        tokens = draw(st.lists(st.sampled_from(TOKENS), min_size=n, max_size=n))
    sep = draw(st.sampled_from([",", ", ", " ,\n"]))
    nested = draw(st.booleans())
    data = _nest(tokens, shape, sep) if nested and n == count else "[" + sep.join(tokens) + "]"
    if nested and len(shape) > 1 and draw(st.booleans()):  # ragged: the first row loses its last element
        end = data.index("]")
        comma = data.rfind(",", data.rindex("[", 0, end), end)
        if comma > 0:
            data = data[:comma] + data[end:]
    space = draw(st.sampled_from(["", " ", "\n  "]))
    text = (f'{{{space}"inputs":{space}[{{"name":"x",{space}"shape":{json.dumps(shape)},"datatype":"{datatype}",'
            f'{space}"data":{space}{data}}}]}}')
    cut = draw(st.one_of(st.none(), st.integers(0, len(text))))  # a truncated body
    if cut is not None:
        text = text[:cut]
    dims = ("batch", *shape[1:]) if draw(st.booleans()) else tuple(shape)
    return text.encode(), datatype, dims, draw(st.booleans())


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=requests())
def test_streaming_decoder_agrees_with_the_stdlib(case):
    text, datatype, dims, allow_nonfinite = case
    reference = _decode(text, datatype, dims, False, allow_nonfinite, "numpy")  # a small body by json alone
    for numbers_by in NUMBERS_BY:
        for stream in (False, True):  # a small body by orjson (json where it refuses), and the streaming path
            got = _decode(text, datatype, dims, stream, allow_nonfinite, numbers_by)
            assert _same(reference, got), (numbers_by, stream, text, reference, got)


@pytest.mark.parametrize("datatype, data", [
    ("FP64", "[0.1, 1E-2, 2.2250738585072014e-308, 5e-324, 1.7976931348623157e308, -0.0, 0.30000000000000004]"),
    ("FP32", "[0.1, 16777217, 3.4028235e38, 1.4e-45, 123456789012345678901234567890, -0]"),
    ("FP64", "[1e400, 1, 2, 3, 4, 5, 6]"),  # Python's json reads inf (then refused unless non-finite is allowed)
    ("FP32", "[NaN, -Infinity, 0.5, 0.25, 1, 2, 3]"),
    ("INT64", "[9223372036854775807, -9223372036854775808, 0, -0, 1, 2, 3]"),
    ("INT64", "[9223372036854775808, 0, 1, 2, 3, 4, 5]"),  # out of range: 400
    ("UINT64", "[18446744073709551615, 0, 1, 2, 3, 4, 5]"),
    ("UINT64", "[18446744073709551616, 0, 1, 2, 3, 4, 5]"),  # out of range (orjson alone would read a float): 400
    ("FP64", "[12345678901234567890123, 1, 2, 3, 4, 5, 6]"),  # a huge integer: json's exact int, then a float
    ("UINT8", "[255, 0, 1, 2, 3, 4, 256]"),  # out of range: 400
    ("INT32", "[1, 2, 3, 4, 5, 6, 01]"),  # not JSON: 400
    ("FP32", "[1.5, 2.5, 3.5, +4.5, 5.5, 6.5, 7.5]"),  # not JSON: 400
])
def test_edge_numbers_read_as_the_stdlib_reads_them(datatype, data):
    count = data.count(",") + 1
    text = f'{{"inputs":[{{"name":"x","shape":[{count}],"datatype":"{datatype}","data":{data}}}]}}'.encode()
    for allow_nonfinite in (False, True):
        reference = _decode(text, datatype, (count,), False, allow_nonfinite, "numpy")
        for numbers_by in NUMBERS_BY:
            for stream in (False, True):
                got = _decode(text, datatype, (count,), stream, allow_nonfinite, numbers_by)
                assert _same(reference, got), (numbers_by, stream, reference, got)


TOO_DEEP = "JSON nesting depth exceeds maximum allowed limit (100)"  # Triton's words


@pytest.mark.parametrize("body, words", [
    (b"[" * 100_000, TOO_DEEP),
    (b'{"a":' * 100_000, TOO_DEEP),
    (b"[" * 30_000, TOO_DEEP),  # small enough for the stdlib parser: its RecursionError is a 400 too
    (b"[" * 500 + b"]" * 500, TOO_DEEP),  # parsed by the stdlib, then found too deep
    (b'{"inputs": [' + b"[" * 110 + b"1" + b"]" * 110 + b"]}", TOO_DEEP),
    (b'{"inputs": [' + b"[" * 110 + b"1" + b"]" * 110 + b"]}" + b" " * 70_000, TOO_DEEP),  # the streaming decoder
])
def test_pathological_nesting_is_a_400(body, words):
    inputs = {"x": TensorInfo("x", np.dtype(np.float32), ("batch",), "tensor(float)")}
    with pytest.raises(HTTPError) as err:
        parse_infer_request(body, None, inputs, ["y"])
    assert err.value.status == 400 and words in err.value.message


@pytest.mark.parametrize("numbers_by", NUMBERS_BY)
def test_large_body_is_parsed_into_numpy_without_python_numbers(numbers_by, monkeypatch):
    if numbers_by == "numpy":
        monkeypatch.setattr(tensorjson, "orjson", None)
    x = np.random.default_rng(0).random((3000, 64)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "x", "shape": [3000, 64], "datatype": "FP32",
                                   "data": x.tolist()}]}).encode()
    assert len(body) > tensorjson.STREAM_ABOVE_BYTES
    doc = tensorjson.loads(body)
    data = doc["inputs"][0]["data"]
    assert isinstance(data, tensorjson.NumberArray) and data.shape == (3000, 64) and not isinstance(data, list)
    inputs = {"x": TensorInfo("x", np.dtype(np.float32), ("batch", 64), "tensor(float)")}
    np.testing.assert_array_equal(parse_infer_request(body, None, inputs, ["y"]).feeds["x"], x)


def test_data_nested_deeper_than_numpy_dimensions_but_within_the_limit_is_read():
    """90 levels of [[...[1.5]...]] (Triton accepts up to 100 levels in all; numpy arrays have at most 64 axes)."""
    inputs = {"x": TensorInfo("x", np.dtype(np.float32), ("batch", 1), "tensor(float)")}
    for pad in (b"", b" " * 70_000):
        body = b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": ' + b"[" * 90 + b"1.5" + \
            b"]" * 90 + b"}]}" + pad
        assert parse_infer_request(body, None, inputs, ["y"]).feeds["x"].tolist() == [[1.5]]


@pytest.mark.skipif(tensorjson.orjson is None, reason="the one-pass read is orjson's")
@pytest.mark.parametrize("middle, one_pass", [
    ("0.5", True),  # a flat array of floats: read in the scan, once
    ("NaN", False),  # not strict JSON: the scan, then each piece read by the dtype's way (numpy for this one)
    ("true", False),  # not a number: the general parser, then refused (numpy would read a 1.0)
    ("7", True),  # integers among floats: still floats
])
def test_a_large_flat_float_array_is_read_in_one_pass_where_orjson_reads_it_as_json_does(middle, one_pass):
    x = np.random.default_rng(1).random(40_000).astype(np.float32).tolist()
    tokens = [repr(v) for v in x]
    tokens[len(tokens) // 2] = middle
    text = b'{"inputs":[{"name":"x","shape":[40000],"datatype":"FP32","data":[' + ", ".join(tokens).encode() + b"]}]}"
    assert len(text) > tensorjson.STREAM_ABOVE_BYTES
    data = tensorjson.loads(text)["inputs"][0]["data"]
    assert isinstance(data, tensorjson.NumberArray) == (middle != "true")
    if isinstance(data, tensorjson.NumberArray):
        assert (data.floats is not None) == one_pass and data.count == 40_000 and data.is_float
    reference = _decode(text, "FP32", (40_000,), False, True, "numpy")
    got = _decode(text, "FP32", (40_000,), False, True)  # the server's way: large, so the streaming decoder
    assert _same(reference, got), (reference[0], got[0])
    if middle == "true":  # a boolean among numbers is a client's mistake, as Triton says too
        assert reference == (400, "input 'x' is FP32 but 'data' holds booleans among its numbers")
    else:
        assert reference[0] == "ok"


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "UINT8"])
def test_booleans_among_numbers_are_refused_and_true_elsewhere_in_the_request_is_not_a_boolean_in_data(datatype):
    inputs = {"x": TensorInfo("x", np.dtype(SPECS[datatype][0]), ("batch", 2, 2), SPECS[datatype][1])}
    for data in ("[[[1, 0], [1, true]]]", "[[[false, 0], [1, 1]]]", "[1, 0, 1, true]"):
        text = f'{{"inputs":[{{"name":"x","shape":[1,2,2],"datatype":"{datatype}","data":{data}}}]}}'.encode()
        for stream in (False, True):
            assert _decode(text, datatype, ("batch", 2, 2), stream, False) == (
                400, f"input 'x' is {datatype} but 'data' holds booleans among its numbers"), (data, stream)
    # a true in the request's parameters leaves numeric data alone
    text = (f'{{"parameters":{{"binary_data_output":true}},"inputs":[{{"name":"x","shape":[1,2,2],'
            f'"datatype":"{datatype}","data":[[[1, 0], [1, 1]]]}}]}}').encode()
    for stream in (False, True):
        status, feed = _decode(text, datatype, ("batch", 2, 2), stream, False)
        assert status == "ok" and feed.tolist() == [[[1, 0], [1, 1]]]


@pytest.mark.parametrize("datatype", ["FP32", "INT32", "BYTES"])
def test_a_null_in_data_is_refused_not_read_as_nan(datatype):
    element = '"a"' if datatype == "BYTES" else "0.5" if datatype == "FP32" else "1"
    text = (f'{{"inputs":[{{"name":"x","shape":[4],"datatype":"{datatype}","data":[{element}, null, {element}, '
            f'{element}]}}]}}').encode()
    for stream in (False, True):
        for allow_nonfinite in (False, True):  # NaN allowed or not, a null is not a number
            assert _decode(text, datatype, (4,), stream, allow_nonfinite) == (
                400, f"input 'x' is {datatype} but 'data' holds null"), (stream, allow_nonfinite)
