"""Malformed requests get a 4xx with {"error": ...} that says what is wrong, and the server keeps serving."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

IMG = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32"}
ZEROS = [0.0] * 64
BLOB = np.zeros(64, np.float32).tobytes()


def _post(url, path, body: bytes, headers=None):
    conn = http.client.HTTPConnection(*url.split(":"), timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def _binary(doc: dict, blob: bytes, header_len: int | None = None):
    head = json.dumps(doc).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head) if header_len is None else header_len)}


def _j(doc) -> bytes:
    return json.dumps(doc).encode()


CASES = {
    # name: (path, body, headers, status, words the error must contain)
    "malformed json": ("/v2/models/cnn/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
    "not an object": ("/v2/models/cnn/infer", b"[1, 2]", {}, 400, "JSON object"),
    "no inputs": ("/v2/models/cnn/infer", _j({"inputs": []}), {}, 400, "non-empty 'inputs'"),
    "wrong datatype": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "datatype": "INT64", "data": [0] * 64}]}), {},
                       400, "expects datatype FP32, got INT64"),
    "unknown datatype": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "datatype": "FLOAT", "data": ZEROS}]}), {},
                         400, "unknown datatype"),
    "wrong rank": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "shape": [1, 64], "data": ZEROS}]}), {}, 400,
                   "expects rank 4"),
    "wrong fixed dim": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "shape": [1, 1, 8, 9], "data": [0.0] * 72}]}),
                        {}, 400, "expects size 8 on axis 3"),
    "negative dim": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "shape": [-1, 1, 8, 8], "data": ZEROS}]}), {},
                     400, "non-negative integers"),
    "data length": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "data": [0.0] * 63}]}), {}, 400,
                    "has 63 elements but its shape needs 64"),
    "strings as numbers": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "data": ["a"] * 64}]}), {}, 400,
                           "holds strings"),
    "ragged data": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "data": [[0.0] * 8] * 7 + [[0.0] * 7]}]}), {},
                    400, "not a regular array"),
    "missing input": ("/v2/models/mlp/infer", _j({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                              "data": [1]}]}), {}, 400, "unknown input 'x'"),
    "no data": ("/v2/models/cnn/infer", _j({"inputs": [IMG]}), {}, 400, "neither 'data' nor"),
    "unknown model": ("/v2/models/nope/infer", _j({"inputs": [{**IMG, "data": ZEROS}]}), {}, 404,
                      "unknown model 'nope'"),
    "unknown version": ("/v2/models/cnn/versions/9/infer", _j({"inputs": [{**IMG, "data": ZEROS}]}), {}, 404,
                        "no version '9'"),
    "unknown output": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "data": ZEROS}], "outputs": [{"name": "p"}]}),
                       {}, 400, "unknown output 'p'"),
    "nan": ("/v2/models/cnn/infer", b'{"inputs":[{"name":"image","shape":[1,1,8,8],"datatype":"FP32","data":[NaN'
            + b",0" * 63 + b"]}]}", {}, 400, "NaN or infinite"),
    "inf binary": ("/v2/models/cnn/infer", *_binary({"inputs": [{**IMG, "parameters": {"binary_data_size": 256}}]},
                                                    np.full(64, np.inf, np.float32).tobytes()), 400, "NaN or infinite"),
    "empty batch": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "shape": [0, 1, 8, 8], "data": []}]}), {}, 400,
                    "empty dimension"),
    "truncated binary": ("/v2/models/cnn/infer",
                         *_binary({"inputs": [{**IMG, "parameters": {"binary_data_size": 256}}]}, BLOB[:200]), 400,
                         "only 200 remain"),
    "over-long binary": ("/v2/models/cnn/infer",
                         *_binary({"inputs": [{**IMG, "parameters": {"binary_data_size": 256}}]}, BLOB + b"xx"), 400,
                         "2 bytes of binary data follow"),
    "binary size vs shape": ("/v2/models/cnn/infer",
                             *_binary({"inputs": [{**IMG, "parameters": {"binary_data_size": 252}}]}, BLOB[:252]),
                             400, "needs 256 bytes"),
    "header length too big": ("/v2/models/cnn/infer",
                              *_binary({"inputs": [{**IMG, "parameters": {"binary_data_size": 256}}]}, BLOB, 10 ** 6),
                              400, "does not fit"),
    "header length not a number": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "data": ZEROS}]}),
                                   {"Inference-Header-Content-Length": "abc"}, 400, "not a number"),
    "header length cuts json": ("/v2/models/cnn/infer",
                                *_binary({"inputs": [{**IMG, "parameters": {"binary_data_size": 256}}]}, BLOB, 20),
                                400, "malformed JSON"),
    "binary without header": ("/v2/models/cnn/infer", _j({"inputs": [{**IMG, "parameters": {"binary_data_size": 256}}]})
                              + b"\xff" * 256, {}, 400, ""),
    "bad bytes element": ("/v2/models/strings/infer",
                          *_binary({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                "parameters": {"binary_data_size": 6}}]}, b"\x09\x00\x00\x00ab"),
                          400, "past the end"),
    "out of range int": ("/v2/models/strings/infer", _j({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                                     "data": [1]}]}), {}, 400, "holds integers"),
    "wrong method": ("/v2/models/cnn/ready", b"", {}, 405, "use GET"),
    "unknown endpoint": ("/v3/whatever", b"", {}, 404, "no endpoint"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request(server, case):
    path, body, headers, status, words = CASES[case]
    got, raw, _ = _post(server.url, path, body, headers)
    assert got == status, raw
    error = json.loads(raw)["error"]
    assert isinstance(error, str) and words in error, error
    ok, raw, _ = _post(server.url, "/v2/models/cnn/infer", _j({"inputs": [{**IMG, "data": ZEROS}]}))
    assert ok == 200, raw


def test_oversized_body(repository, tmp_path):
    from serve_helpers import ServerProcess

    with ServerProcess("--model-repository", repository, "--max-body-bytes", "4096") as proc:
        status, raw, _ = _post(proc.url, "/v2/models/cnn/infer", b"0" * 10_000)
        assert status == 413 and "exceeds the limit of 4096 bytes" in json.loads(raw)["error"]
        status, raw, _ = _post(proc.url, "/v2/models/cnn/infer", _j({"inputs": [{**IMG, "data": ZEROS}]}))
        assert status == 200


# --- property-based: random requests never produce a 5xx, never kill the server ------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=5))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                     max_leaves=20)
_shape = st.one_of(st.lists(st.integers(-2, 9), max_size=5), _json)
_input = st.fixed_dictionaries(
    {"name": st.sampled_from(["image", "pixels", "text", "x"]) | st.text(max_size=4),
     "shape": _shape,
     "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "BOOL", "nope"]) | _scalars},
    optional={"data": st.lists(st.floats(width=32) | st.integers(-5, 5), max_size=70) | _json,
              "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-3, 300) | _scalars})})
_request = st.fixed_dictionaries(
    {"inputs": st.lists(_input, max_size=3) | _json},
    optional={"id": _scalars, "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["logits", "q"])}),
                                                  max_size=2) | _json,
              "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "x"]), _scalars, max_size=2)})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=_request, tail=st.binary(max_size=300), model=st.sampled_from(["cnn", "mlp", "strings", "zzz"]),
       header=st.one_of(st.none(), st.integers(-5, 2000)))
def test_random_requests_never_5xx(server, doc, tail, model, header):
    head = json.dumps(doc).encode()
    headers = {}
    if header is not None:
        headers["Inference-Header-Content-Length"] = str(header if header != 0 else len(head))
    status, raw, _ = _post(server.url, f"/v2/models/{model}/infer", head + tail if header is not None else head,
                           headers)
    assert status < 500, raw
    doc_out = json.loads(raw[:int(_.get("Inference-Header-Content-Length", len(raw)))])
    assert status == 200 or isinstance(doc_out.get("error"), str)


def test_valid_requests_still_correct_after_fuzzing(server, repository, reference):
    x = np.random.default_rng(11).random((2, 1, 8, 8), dtype=np.float32)
    status, raw, headers = _post(server.url, "/v2/models/cnn/infer",
                                 _j({"inputs": [{**IMG, "shape": [2, 1, 8, 8], "data": x.ravel().tolist()}]}))
    assert status == 200
    got = np.array(json.loads(raw)["outputs"][0]["data"], np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, reference(repository / "cnn/1/model.onnx", {"image": x})["logits"], rtol=1e-5,
                               atol=1e-5)
