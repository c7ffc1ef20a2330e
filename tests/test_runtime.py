"""The embeddable runtime: import isolation, input validation, results equal to a bare InferenceSession."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgedl.errors import EdgeDLError
from edgedl.runtime import Runner, RunnerConfig, load

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'click', 'onnxscript', 'sklearn'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_runtime_imports_without_torch_onnx_click(zoo):
    code = BLOCKER + f"""
import edgedl.runtime, edgedl.runtime.server
from edgedl.runtime import load
r = load({str(zoo['cnn'].onnx)!r})
print(r.run(r.example_inputs())['logits'].shape)
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'click', 'onnxscript', 'sklearn')))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["(1, 10)", "[]"]
    # the blocker really blocks (a test that cannot fail would prove nothing)
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import onnx"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked: onnx" in proc.stderr


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm", "transformer"])
def test_run_equals_bare_session(zoo, name):
    with Runner(zoo[name].onnx, RunnerConfig(intra_op_threads=1)) as r:
        bare = ort.InferenceSession(str(zoo[name].onnx))
        for sizes in ({"batch": 1, "seq": 3}, {"batch": 5, "seq": 7}):
            feeds = r.example_inputs(sizes, seed=4)
            want = bare.run(None, feeds)[0]
            np.testing.assert_array_equal(r.run(feeds)["logits"], want)
            np.testing.assert_array_equal(r.run_with_binding(feeds)["logits"], want)
            np.testing.assert_array_equal(r.run_unchecked(feeds)[0], want)
            assert r.check_inputs(feeds) is feeds  # the fast path returns the caller's dict untouched
        single = next(iter(feeds.values()))
        np.testing.assert_array_equal(r.run(single)["logits"], want)


@pytest.fixture(scope="module")
def cnn(zoo):
    with load(zoo["cnn"].onnx) as r:
        yield r


@pytest.mark.parametrize("feeds, words", [
    ({}, "missing input(s) image; the model expects image"),
    ({"image": np.zeros((1, 1, 8, 8), np.float32), "extra": np.zeros(1)}, "unknown input(s) extra"),
    ({"image": np.zeros((1, 8, 8), np.float32)}, "input 'image' expects rank 4"),
    ({"image": np.zeros((1, 1, 8, 9), np.float32)}, "input 'image' expects size 8 on axis 3"),
    ({"image": np.zeros((1, 1, 8, 8), np.float64)}, "input 'image' expects dtype float32, got float64"),
    ({"image": np.zeros((1, 1, 8, 8), np.int16)}, "a lossless cast exists: pass cast=True"),
    ({"image": [[0.0]]}, "input 'image' must be a numpy array, got list"),
])
def test_bad_inputs_name_input_expected_and_got(cnn, feeds, words):
    with pytest.raises(EdgeDLError) as err:
        cnn.run(feeds)
    assert words in str(err.value)


def test_explicit_lossless_cast_only(cnn):
    x16 = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float16)
    feeds = {"image": x16}
    out = cnn.run(feeds, cast=True)["logits"]
    np.testing.assert_array_equal(out, cnn.run(x16.astype(np.float32))["logits"])
    assert feeds["image"].dtype == np.float16  # the caller's dict is not modified
    with pytest.raises(EdgeDLError, match="expects dtype float32, got float64"):
        cnn.run({"image": np.zeros((1, 1, 8, 8))}, cast=True)  # float64 -> float32 loses precision: refused


def test_subclass_and_non_contiguous_arrays_still_checked(cnn):
    base = np.random.default_rng(1).random((2, 1, 8, 16)).astype(np.float32)
    view = base[..., ::2]  # non-contiguous, same shape as an image batch
    np.testing.assert_allclose(cnn.run(view)["logits"], cnn.run(np.ascontiguousarray(view))["logits"], rtol=1e-6)
    matrix_like = base[..., :8].view(type("Sub", (np.ndarray,), {}))
    assert cnn.run(matrix_like)["logits"].shape == (2, 10)


def test_onnxruntime_errors_are_wrapped(zoo, tmp_path):
    with load(zoo["cnn"].onnx) as r:
        with pytest.raises(EdgeDLError, match="onnxruntime failed running cnn.onnx"):
            r.run(r.example_inputs(), output_names=["nope"])
    with pytest.raises(EdgeDLError, match="could not load"):
        (tmp_path / "x.onnx").write_bytes(b"junk")
        load(tmp_path / "x.onnx")
    r = load(zoo["mlp"].onnx)
    r.close()
    with pytest.raises(EdgeDLError, match="closed"):
        r.run(np.zeros((1, 64), np.float32))


def test_multi_input_needs_a_dict(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "add",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "a.onnx")
    with load(tmp_path / "a.onnx") as r:
        with pytest.raises(EdgeDLError, match="model has 2 inputs .* pass a dict"):
            r.run(np.zeros(3, np.float32))
        a = np.arange(3, dtype=np.float32)
        np.testing.assert_array_equal(r.run({"a": a, "b": a})["c"], a * 2)
        with pytest.raises(EdgeDLError, match="missing input\\(s\\) b"):
            r.run({"a": a})


def test_session_options_and_metadata(zoo):
    r = load(zoo["cnn"].onnx, intra_op_threads=1, inter_op_threads=1, spinning=False, graph_optimization="basic",
             enable_mem_arena=False)
    assert r.providers == ["CPUExecutionProvider"] and r.fallbacks == []
    assert r.labels == [str(i) for i in range(10)] and "preprocessing" in r.metadata
    assert r.inputs[0].shape == ("batch", 1, 8, 8)
    r.warmup(2, sizes={"batch": 4})
    with pytest.raises(EdgeDLError, match="graph optimization level"):
        RunnerConfig(graph_optimization="max")
