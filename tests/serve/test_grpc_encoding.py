"""A gRPC answer is serialized from a remembered head (fields 1-5 of ModelInferResponse) plus its tensors as
raw_output_contents entries: the bytes must be protobuf's own serialization of the whole message, for every
datatype, shape and id, remembered or not, and the number of remembered heads stays bounded."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("google.protobuf")
from edgedl.runtime.server.grpc_server import service  # noqa: E402
from edgedl.runtime.server.protocol import SharedSlice  # noqa: E402


class Model:
    name, version = "m", "3"


CASES = {
    "one FP32 row": [("logits", np.arange(10, dtype=np.float32).reshape(1, 10))],
    "two outputs, INT64 and BOOL": [("a", np.array([[1, -2, 2 ** 40]], dtype=np.int64)),
                                    ("b", np.array([True, False]))],
    "BYTES": [("text", np.array([b"ab", "c\u00e9"], dtype=object))],
    "a large FP16 tensor (multi-byte lengths)": [("big", np.ones((3, 300, 70), dtype=np.float16))],
    "a scalar": [("s", np.array(2.5, dtype=np.float64))],
}


@pytest.mark.parametrize("request_id", [None, "req-7"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_answer_is_protobufs_own_serialization(case, request_id):
    outputs = [(name, arr, True, None) for name, arr in CASES[case]]
    expected = service._response_message(Model, request_id, outputs).SerializeToString()
    first = service._encode_grpc(Model, request_id, outputs)  # builds and remembers the head
    again = service._encode_grpc(Model, request_id, outputs)  # from the remembered head
    assert first == again == expected
    parsed = service.InferResponse.FromString(again)
    assert [t.name for t in parsed.outputs] == [n for n, _ in CASES[case]]
    assert parsed.id == (request_id or "") and parsed.model_version == "3"


def test_other_values_with_the_same_shapes_reuse_the_head_and_stay_exact():
    rng = np.random.default_rng(1)
    for _ in range(5):
        outputs = [("logits", rng.standard_normal((2, 10)).astype(np.float32), True, None)]
        got = service.InferResponse.FromString(service._encode_grpc(Model, None, outputs))
        np.testing.assert_array_equal(np.frombuffer(got.raw_output_contents[0], np.float32).reshape(2, 10),
                                      outputs[0][1])


def test_an_output_in_shared_memory_names_its_region():
    outputs = [("logits", np.zeros((1, 4), np.float32), False, SharedSlice("region", 16, 16))]
    parsed = service.InferResponse.FromString(service._encode_grpc(Model, None, outputs))
    params = parsed.outputs[0].parameters
    assert params["shared_memory_region"].string_param == "region" and parsed.raw_output_contents[0] == b""
    assert params["shared_memory_offset"].int64_param == 16


def test_the_remembered_heads_are_bounded():
    for i in range(service._RESPONSE_HEADS.kept * 2):
        service._encode_grpc(Model, f"id-{i}", [("y", np.zeros(1, np.float32), True, None)])
        assert len(service._RESPONSE_HEADS) <= service._RESPONSE_HEADS.kept
