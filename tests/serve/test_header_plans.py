"""A binary request's JSON header, once validated, is remembered by its bytes (protocol.HeaderPlans): the same
header with other tensors decodes to the same request as a full parse, every check on the tensors' bytes still
runs (length, NaN, BYTES elements), and headers that must be parsed every time (inline JSON data, shared memory)
are not kept."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgedl.runtime.server import protocol
from edgedl.runtime.server.protocol import HeaderPlans, HTTPError, parse_infer_request
from edgedl.runtime.tensors import TensorInfo

INPUTS = {"x": TensorInfo("x", np.dtype(np.float32), ("batch", 4), "tensor(float)"),
          "t": TensorInfo("t", np.dtype(object), ("batch",), "tensor(string)")}


def _body(x: np.ndarray, strings: list[bytes], **top) -> tuple[bytes, int]:
    blob = b"".join(struct.pack("<I", len(s)) + s for s in strings)
    head = json.dumps({**top, "inputs": [
        {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
        {"name": "t", "shape": [len(strings)], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    return head + x.tobytes() + blob, len(head)


def _parse(body: bytes, header_length: int, plans: HeaderPlans | None):
    return parse_infer_request(body, header_length, INPUTS, ["y"], plans=plans)


def _same(a, b) -> None:
    assert (a.id, a.binary_default, a.rows, a.output_names) == (b.id, b.binary_default, b.rows, b.output_names)
    assert a.feeds.keys() == b.feeds.keys()
    for name in a.feeds:
        assert a.feeds[name].dtype == b.feeds[name].dtype and a.feeds[name].shape == b.feeds[name].shape
        np.testing.assert_array_equal(a.feeds[name], b.feeds[name])


def test_a_remembered_header_decodes_other_tensors_as_a_full_parse_does(monkeypatch):
    plans = HeaderPlans()
    rng = np.random.default_rng(0)
    first = _body(rng.standard_normal((2, 4)).astype(np.float32), [b"ab", b"cde"], id="r1")
    _same(_parse(*first, plans), _parse(*first, None))
    loads = []
    monkeypatch.setattr(protocol, "_loads", lambda raw: loads.append(raw) or json.loads(bytes(raw)))
    for _ in range(3):  # same header, other tensors (BYTES of the same total size): no JSON parsed
        body = _body(rng.standard_normal((2, 4)).astype(np.float32), [b"xy", b"zzz"], id="r1")
        _same(_parse(*body, plans), _parse(*body, None))
    assert len(loads) == 3  # only the three reference parses (plans=None)


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:-1], "only 10 remain"),  # a short body: the full parse says what is wrong
    (lambda b: b + b"!", "bytes of binary data follow the last binary tensor"),
    (lambda b: b.replace(struct.pack("<f", 1.5), struct.pack("<f", float("nan"))), "NaN or infinite"),
    (lambda b: b[:-5] + b"\xff\xff\xff\xff" + b[-1:], "past the end"),  # a BYTES length prefix lies
])
def test_the_tensors_are_still_checked_on_every_request(damage, words):
    plans = HeaderPlans()
    x = np.full((2, 4), 1.5, dtype=np.float32)
    body, head = _body(x, [b"ab", b"c"])
    _parse(body, head, plans)
    with pytest.raises(HTTPError) as first:
        _parse(damage(body), head, plans)
    with pytest.raises(HTTPError) as reference:
        _parse(damage(body), head, None)
    assert first.value.status == reference.value.status == 400
    assert str(first.value.message) == str(reference.value.message) and words in first.value.message


def test_headers_that_need_parsing_every_time_are_not_kept():
    plans = HeaderPlans()
    data = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                                  {"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode()
    parse_infer_request(data, len(data), INPUTS, ["y"], plans=plans)  # inline JSON data
    shm = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {
        "shared_memory_region": "r", "shared_memory_byte_size": 16}}]}).encode()
    with pytest.raises(HTTPError):  # no shared memory here: refused, and not kept
        parse_infer_request(shm, len(shm), INPUTS, ["y"], plans=plans)
    assert plans.get(data) is None and plans.get(shm) is None
    body, head = _body(np.zeros((1, 4), np.float32), [b"a"])
    _parse(body, head, plans)
    assert plans.get(body[:head]) is not None


def test_the_number_of_headers_kept_is_bounded():
    plans = HeaderPlans()
    for i in range(protocol.PLANS_KEPT * 3):  # a client that sends a new id with every request
        body, head = _body(np.zeros((1, 4), np.float32), [b"a"], id=f"request-{i}")
        _parse(body, head, plans)
        assert len(plans._plans) <= protocol.PLANS_KEPT
