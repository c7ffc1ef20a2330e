"""The model signature: batch axes (declared, stored, inferred, overridden), sizes from options, metadata and
repository hints, synthetic feeds, and batching along each input's own batch axis. Pure numpy, plus the CLI's
option parsers for the same facts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedl.cli._shapes import parse_batch_axis, parse_input_shape, parse_value_range, shape_options_from
from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import ShapeOptions, Signature
from edgedl.runtime.tensors import TensorInfo

F32, I64 = np.dtype(np.float32), np.dtype(np.int64)


def info(name, shape, dtype=F32, anonymous=()):
    return TensorInfo(name, dtype, tuple(shape), "", frozenset(anonymous))


VAD_IN = [info("input", ("dim0_0", "dim0_1"), anonymous={0, 1}), info("state", (2, "dim1_1", 128), anonymous={1}),
          info("sr", (), I64)]
VAD_OUT = [info("output", ("dim0_0", 1), anonymous={0}), info("stateN", ("a", "b", "c"), anonymous={0, 1, 2})]


def test_batch_axes_are_inferred_from_names_position_and_fixed_sizes():
    named = Signature.of([info("input", ("batch", "sequence")), info("state", (2, "batch", 128)), info("sr", (), I64)],
                         [info("output", ("batch", 1)), info("stateN", ("d0", "batch", "d2"))])
    assert [s.batch_axis for s in named.inputs] == [0, 1, None]
    assert [o.batch_axis for o in named.outputs] == [0, 1] and named.batchable
    anon = Signature.of(VAD_IN, VAD_OUT)
    assert [s.batch_axis for s in anon.inputs] == [0, 1, None]
    assert [o.batch_axis for o in anon.outputs] == [None, None] and not anon.batchable  # never guessed
    fixed = Signature.of([info("input", (1, 576)), info("state", (2, 1, 128))], [info("out", (1, 1))])
    assert [s.batch_axis for s in fixed.inputs] == [0, 1] and fixed.fixed_batch == 1
    ocr = Signature.of([info("x", ("dim0_0", 3, "dim0_2", "dim0_3"), anonymous={0, 2, 3})],
                       [info("y", ("dim0_0", 2), anonymous={0})])
    assert ocr.inputs[0].batch_axis == 0 and ocr.outputs[0].batch_axis == 0 and ocr.batchable


def test_metadata_and_options_override_inference():
    meta = {"inputs": [{"name": "state", "batch_axis": None}], "outputs": [{"name": "output", "batch_axis": 0}]}
    sig = Signature.of(VAD_IN, VAD_OUT, meta)
    assert sig.input("state").batch_axis is None and sig.outputs[0].batch_axis == 0
    sig = Signature.of(VAD_IN, VAD_OUT, meta, ShapeOptions(batch_axes={"state": 1, "stateN": 1, "output": 0}))
    assert sig.input("state").batch_axis == 1 and sig.batchable
    with pytest.raises(EdgeDLError, match="out of range"):
        Signature.of(VAD_IN, VAD_OUT, options=ShapeOptions(batch_axes={"state": 3}))
    with pytest.raises(EdgeDLError, match="not an input or output"):
        Signature.of(VAD_IN, VAD_OUT, options=ShapeOptions(batch_axes={"stat": 1}))


def test_sizes_from_options_metadata_and_hints_in_that_order():
    sig = Signature.of(VAD_IN, VAD_OUT)
    with pytest.raises(EdgeDLError, match=r"input 'input' axis 1 \(an unnamed dim.*input=BxN"):
        sig.shapes(1)
    sig = Signature.of(VAD_IN, VAD_OUT, options=ShapeOptions(input_shapes={"input": (1, 512)}))
    assert sig.shapes(4) == {"input": (4, 512), "state": (2, 4, 128), "sr": ()}
    meta = {"validation": {"example_shapes": {"input": [2, 256], "state": [2, 2, 128], "sr": []}}}
    assert Signature.of(VAD_IN, VAD_OUT, meta).shapes() == {"input": (2, 256), "state": (2, 2, 128), "sr": ()}
    hinted = Signature.of(VAD_IN, VAD_OUT, meta, hints={"input": (1, 1024)})
    assert hinted.shapes(1)["input"] == (1, 256)  # export's sizes beat a repository hint
    assert Signature.of(VAD_IN, VAD_OUT, hints={"input": (1, 1024)}).shapes(3)["input"] == (3, 1024)
    with pytest.raises(EdgeDLError, match="rank 2"):
        Signature.of(VAD_IN, VAD_OUT, options=ShapeOptions(input_shapes={"input": (512,)}))
    with pytest.raises(EdgeDLError, match="fixes at 128"):
        Signature.of(VAD_IN, VAD_OUT, options=ShapeOptions(input_shapes={"state": (2, 1, 64)}))
    named = [info("ids", ("batch", "seq"), I64), info("mask", ("batch", "seq"), I64)]
    sig = Signature.of(named, [], options=ShapeOptions(input_shapes={"ids": (1, 16)}))
    assert sig.shapes(2) == {"ids": (2, 16), "mask": (2, 16)}  # a named dim learnt from one shape sizes the other


def test_synthetic_feeds_follow_value_ranges_and_are_seeded():
    sig = Signature.of(VAD_IN, VAD_OUT, options=ShapeOptions(input_shapes={"input": (1, 64)},
                                                             value_ranges={"sr": (16000, 16000)}))
    feeds = sig.feeds(3, seed=1)
    assert feeds["sr"].shape == () and feeds["sr"].dtype == I64 and int(feeds["sr"]) == 16000
    assert feeds["state"].shape == (2, 3, 128) and feeds["input"].dtype == F32
    assert all(np.array_equal(feeds[k], sig.feeds(3, seed=1)[k]) for k in feeds)


def test_concat_and_split_along_each_axis():
    sig = Signature.of([info("input", ("batch", 8)), info("state", (2, "batch", 4)), info("sr", (), I64)],
                       [info("output", ("batch", 1)), info("stateN", (2, "batch", 4))])
    a = {"input": np.ones((1, 8), F32), "state": np.zeros((2, 1, 4), F32), "sr": np.array(8000)}
    b = {"input": np.full((2, 8), 2, F32), "state": np.ones((2, 2, 4), F32), "sr": np.array(8000)}
    both = sig.concat([a, b])
    assert both["input"].shape == (3, 8) and both["state"].shape == (2, 3, 4) and both["sr"].shape == ()
    assert sig.batch_rows(both) == 3 and sig.batch_rows({**a, "state": b["state"]}) is None
    parts = sig.split_outputs({"output": np.arange(3.0).reshape(3, 1), "stateN": both["state"]}, [1, 2])
    assert parts[0]["output"].tolist() == [[0.0]] and parts[1]["stateN"].shape == (2, 2, 4)
    assert np.array_equal(parts[1]["stateN"], b["state"])
    assert [len(x["input"]) for x in sig.batches(both, 2)] == [2, 1]


def test_cli_parsers_give_one_line_errors():
    assert parse_input_shape("x=1x3x48x192") == ("x", (1, 3, 48, 192)) and parse_input_shape("sr=scalar") == ("sr", ())
    assert parse_batch_axis("state=1") == ("state", 1) and parse_batch_axis("sr=none") == ("sr", None)
    assert parse_value_range("ids=0..30521") == ("ids", (0.0, 30521.0))
    assert parse_value_range("x=-1.5..2e3") == ("x", (-1.5, 2000.0))
    for parser, bad in ((parse_input_shape, "x=1,3"), (parse_batch_axis, "state=-1"), (parse_value_range, "x=3..1")):
        with pytest.raises(EdgeDLError) as err:
            parser(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(EdgeDLError, match="twice"):
        shape_options_from(shapes=("seq=4", "seq=5"))
    options = shape_options_from(("seq=4",), ("x=1x2",), ("sr=none",), ("sr=8000..8000",))
    assert ShapeOptions.from_json(options.to_json()) == options


def test_inspect_shows_batch_axes_and_the_shapes_a_model_runs_at(tmp_path):
    from edgedl_testing import run_edgedl_inprocess, stateful_model

    model = stateful_model(tmp_path / "vad.onnx", named=False)
    result = run_edgedl_inprocess("inspect", model, "--json")
    sig = json.loads(result.stdout)["signature"]
    assert [(i["name"], i["batch_axis"], i["runs_at"]) for i in sig["inputs"]] == [
        ("audio", 0, None), ("state", 1, None), ("sr", None, None)]
    assert sig["batchable"] is False and sig["missing"]["option"][0] == "input_shape"
    result = run_edgedl_inprocess("inspect", model, "--input-shape", "audio=1x512", "--batch-axis", "prob=0",
                                  "--batch-axis", "new_state=1", "--json")
    sig = json.loads(result.stdout)["signature"]
    assert [i["runs_at"] for i in sig["inputs"]] == [[1, 512], [2, 1, 4], []]
    assert sig["batchable"] is True and sig["sizes_from"] == ["options"] and sig["missing"] is None
    table = run_edgedl_inprocess("inspect", model)
    assert table.returncode == 0 and "--input-shape audio=BxN" in table.stdout
    bad = run_edgedl_inprocess("inspect", model, "--batch-axis", "stat=1")
    assert bad.returncode == 1 and "not an input or output" in bad.stderr
