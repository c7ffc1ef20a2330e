"""edgedl.stages.data: every source (images through Pillow, .npz/.npy, a recipe, a user function, synthetic) read
for real models' signatures (batch on axis 1, scalars, fixed batches), and the calibration/evaluation plan."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import ShapeOptions, Signature
from edgedl.runtime.tensors import TensorInfo
from edgedl.stages.data import DataOptions, DataSpec, ImagePreprocessing, load_data, plan_data


def _sig(*inputs: tuple[str, str, tuple], options: ShapeOptions | None = None, outputs=(("y", "float32", ("N", 2)),),
         metadata: dict | None = None) -> Signature:
    infos = [TensorInfo(n, np.dtype(d), tuple(s), f"tensor({d})") for n, d, s in inputs]
    outs = [TensorInfo(n, np.dtype(d), tuple(s), f"tensor({d})") for n, d, s in outputs]
    return Signature.of(infos, outs, metadata or {}, options)


IMAGE = _sig(("x", "float32", ("N", 3, 32, 32)))
VAD = _sig(("input", "float32", ("B", "S")), ("state", "float32", (2, "B", 128)), ("sr", "int64", ()),
           outputs=(("output", "float32", ("B", 1)),))


def _png(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


# --- naming a source ---------------------------------------------------------------------------------------
def test_kind_is_told_from_the_form(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert DataSpec.parse(str(tmp_path / "photos")).kind == "images"
    assert DataSpec.parse("a/b.npz").kind == "arrays" and DataSpec.parse("a.NPY").kind == "arrays"
    assert DataSpec.parse("cat.png").kind == "images"
    assert DataSpec.parse("data/feed.py:batches") == DataSpec("python", "data/feed.py:batches")
    assert DataSpec.parse("cnn").kind == "recipe" and DataSpec.parse("models/cnn.py").kind == "recipe"
    assert DataSpec.parse("synthetic") == DataSpec.parse("None") == DataSpec("synthetic")
    with pytest.raises(EdgeDLError, match="not a data source edgedl reads"):
        DataSpec.parse(str(tmp_path / "notes.txt"))
    with pytest.raises(EdgeDLError, match="not a function name"):
        DataSpec.parse("feed.py:1x")
    with pytest.raises(EdgeDLError, match="is no folder, file or recipe"):
        load_data(DataSpec.parse(str(tmp_path / "photso")), IMAGE)


# --- a folder of images ------------------------------------------------------------------------------------
def test_image_values_follow_layout_order_scale_mean_std(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 32, 3))
    _png(tmp_path / "imgs" / "a.png", pixels)
    spec = DataSpec.parse(str(tmp_path / "imgs"))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ds = load_data(spec, IMAGE, preprocessing=ImagePreprocessing(channel_order="BGR", mean=mean, std=std))
    x = ds.arrays()["x"]
    expect = ((pixels[:, :, ::-1] / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)[None]
    assert x.dtype == np.float32 and x.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(x, expect, atol=1e-5)
    assert not ds.labelled and ds.details["preprocessing"]["layout"] == "NCHW"
    # NHWC is read off the input's shape; the default scale is 1/255 and the order RGB
    nhwc = _sig(("img", "float32", ("N", 32, 32, 3)))
    np.testing.assert_allclose(load_data(spec, nhwc).arrays()["img"][0], pixels / 255.0, atol=1e-6)
    # a raw uint8 input takes the pixels as they are, and refuses a scale
    raw = _sig(("img", "uint8", ("N", 32, 32, 3)))
    assert np.array_equal(load_data(spec, raw).arrays()["img"][0], pixels)
    with pytest.raises(EdgeDLError, match="raw pixel values"):
        load_data(spec, raw, preprocessing=ImagePreprocessing(scale="1/255"))


def test_resize_and_center_crop_keep_the_centre(tmp_path):
    img = np.zeros((60, 80, 3))  # a red square in the middle of a black 80x60 image
    img[20:40, 30:50] = (255, 0, 0)
    _png(tmp_path / "c" / "one.png", img)
    ds = load_data(DataSpec.parse(str(tmp_path / "c")), _sig(("x", "float32", ("N", 3, "h", "w"))),
                   preprocessing=ImagePreprocessing(resize=30, center_crop="6x8"))
    x = ds.arrays()["x"][0]  # shorter side 60 -> 30 (40x30, the square 10x10), then the central 6x8 of it
    assert x.shape == (3, 6, 8)
    np.testing.assert_allclose(x[0], 1.0, atol=0.02)
    np.testing.assert_allclose(x[1:], 0.0, atol=0.02)
    # without settings, a model's fixed size decides: the whole image is resized to it
    whole = load_data(DataSpec.parse(str(tmp_path / "c")), IMAGE).arrays()["x"][0]
    assert whole.shape == (3, 32, 32) and whole[1:].max() < 0.05 and whole[0, 0, 0] < 0.05 < whole[0, 16, 16]
    with pytest.raises(EdgeDLError, match="fixed at 32x32"):
        load_data(DataSpec.parse(str(tmp_path / "c")), IMAGE, preprocessing=ImagePreprocessing(resize="48x192"))


def test_labels_from_sub_folders(tmp_path):
    for name in ("180", "0"):
        for i in range(2):
            _png(tmp_path / "lines" / name / f"{i}.png", np.full((32, 32, 3), int(name) % 255))
    ds = load_data(DataSpec.parse(str(tmp_path / "lines")), IMAGE)
    assert ds.integer_labels and ds.details["classes"] == {"0": 0, "180": 1}  # numeric-aware order
    assert sorted(ds.chunks[0].labels.tolist()) == [0, 0, 1, 1]
    for x, label in zip(ds.arrays()["x"], ds.chunks[0].labels):  # each image keeps its own label
        assert (x.max() > 0.5) == (label == 1)
    # the model's own label names win when every folder is one of them
    named = load_data(DataSpec.parse(str(tmp_path / "lines")), IMAGE, metadata={"labels": ["up", "180", "0"]})
    assert named.details["classes"] == {"0": 2, "180": 1}
    (tmp_path / "lines" / "loose.png").write_bytes((tmp_path / "lines" / "0" / "0.png").read_bytes())
    with pytest.raises(EdgeDLError, match="both at its top level and in sub-folders"):
        load_data(DataSpec.parse(str(tmp_path / "lines")), IMAGE)


def test_grayscale_layouts_and_the_digits_source_range(tmp_path):
    digit = np.arange(64).reshape(8, 8) * 4
    _png(tmp_path / "d" / "7.png", digit)
    spec = DataSpec.parse(str(tmp_path / "d"))
    digits_meta = {"preprocessing": {"input": "8x8 grayscale digit", "scale": 1 / 16, "source_range": [0, 16],
                                     "range": [0, 1], "layout": "rows as sequence steps"}}
    for shape, view in ((("N", 1, 8, 8), lambda x: x[0, 0]), (("N", 8, 8), lambda x: x[0])):
        x = load_data(spec, _sig(("pixels", "float32", shape)), metadata=digits_meta).arrays()["pixels"]
        np.testing.assert_allclose(view(x), digit / 255.0, atol=1e-6)  # 0..255 -> 0..16 -> x 1/16
    with pytest.raises(EdgeDLError, match="not an image input"):
        load_data(spec, _sig(("pixels", "float32", ("N", 64))))
    _png(tmp_path / "d" / "big.png", np.zeros((9, 9)))
    with pytest.raises(EdgeDLError, match="different sizes"):
        load_data(spec, _sig(("pixels", "float32", ("N", 1, "h", "w"))))


def test_many_images_are_sampled_across_classes(tmp_path):
    for c in range(4):
        for i in range(10):
            _png(tmp_path / "many" / f"class{c}" / f"{i}.png", np.full((8, 8, 3), c * 60))
    ds = load_data(DataSpec.parse(str(tmp_path / "many")), _sig(("x", "float32", ("N", 3, 8, 8))), max_samples=12)
    assert len(ds) == 12 and set(ds.chunks[0].labels.tolist()) == {0, 1, 2, 3} and "of 40" in ds.source


# --- .npz / .npy ------------------------------------------------------------------------------------------
def _vad_npz(path, n=10, labels=True):
    marker = np.arange(n, dtype=np.float32)
    arrays = {"input": np.repeat(marker[:, None], 4, axis=1),
              "state": np.repeat(np.repeat(marker[None, :, None], 2, axis=0), 128, axis=2),
              "sr": np.array(16000, np.int64)}
    if labels:
        arrays["labels"] = (marker > 4).astype(np.int64)
    np.savez(path, **arrays)
    return path


def test_npz_with_a_scalar_and_a_batch_on_axis_1(tmp_path):
    ds = load_data(DataSpec.parse(str(_vad_npz(tmp_path / "vad.npz"))), VAD)
    assert len(ds) == 10 and ds.integer_labels
    batches = list(ds.batches(4))
    assert [b.samples for b in batches] == [4, 4, 2]
    for b in batches:  # state is cut along axis 1, in step with input; the scalar sample rate passes whole
        assert b.inputs["state"].shape == (2, b.samples, 128) and b.inputs["sr"].shape == ()
        assert np.array_equal(b.inputs["state"][0, :, 0], b.inputs["input"][:, 0])
        assert np.array_equal(b.labels, (b.inputs["input"][:, 0] > 4).astype(np.int64))
    cal, ev = ds.split(seed=3)
    assert len(cal) + len(ev) == 10
    seen = np.concatenate([d.arrays()["input"][:, 0] for d in (cal, ev)])
    assert sorted(seen.tolist()) == list(range(10))
    for half in (cal, ev):
        assert np.array_equal(half.arrays()["state"][1, :, 5], half.arrays()["input"][:, 0])
    unlabelled = load_data(DataSpec.parse(str(_vad_npz(tmp_path / "u.npz", labels=False))), VAD)
    assert not unlabelled.labelled and unlabelled.head(3).chunks[0].inputs["state"].shape == (2, 3, 128)


def test_npy_and_bad_arrays(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 3, 32, 32), np.float32))
    assert len(load_data(DataSpec.parse(str(tmp_path / "x.npy")), IMAGE)) == 5
    with pytest.raises(EdgeDLError, match="model has 3 inputs"):
        load_data(DataSpec.parse(str(tmp_path / "x.npy")), VAD)
    np.savez(tmp_path / "bad.npz", input=np.zeros((3, 4), np.float32), state=np.zeros((2, 4, 128), np.float32),
             sr=np.array(16000))
    with pytest.raises(EdgeDLError, match="different numbers of samples"):
        load_data(DataSpec.parse(str(tmp_path / "bad.npz")), VAD)
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(EdgeDLError, match="fixes axis 2 at 32"):
        load_data(DataSpec.parse(str(tmp_path / "f.npz")), IMAGE)
    np.savez(tmp_path / "i.npz", x=np.zeros((2, 3, 32, 32), np.complex64))
    with pytest.raises(EdgeDLError, match="give it as float32"):
        load_data(DataSpec.parse(str(tmp_path / "i.npz")), IMAGE)


# --- a user function -------------------------------------------------------------------------------------
FEED = '''
import numpy as np

def lines():
    """Text-line batches of different widths, labelled."""
    for width in (64, 96, 128):
        yield {"x": np.full((2, 3, 48, width), width / 255, np.float32)}, np.array([0, 1])

def endless():
    while True:
        yield {"x": np.zeros((4, 3, 48, 64), np.float32), "labels": np.zeros(4, np.int64)}

def broken():
    yield {"x": np.zeros((1, 3, 48, 64), np.float32)}
    raise RuntimeError("camera unplugged")

def not_batches():
    yield [1, 2, 3]

def needs_args(path):
    yield {}
'''


def test_python_function_yields_batches(tmp_path):
    feed = tmp_path / "feed.py"
    feed.write_text(FEED)
    lines = _sig(("x", "float32", ("N", 3, 48, "W")))
    ds = load_data(DataSpec.parse(f"{feed}:lines"), lines)
    assert len(ds) == 6 and ds.integer_labels and len(ds.chunks) == 3
    assert [b.inputs["x"].shape[3] for b in ds.batches(64)] == [64, 96, 128]  # a batch never crosses widths
    endless = load_data(DataSpec.parse(f"{feed}:endless"), lines, max_samples=10)
    assert len(endless) == 10 and endless.labelled  # read until enough, the 'labels' entry taken as labels
    for name, message in (("broken", "camera unplugged"), ("not_batches", "yielded a list"),
                          ("needs_args", "takes arguments"), ("missing", "defines no 'missing'")):
        with pytest.raises(EdgeDLError, match=message):
            load_data(DataSpec.parse(f"{feed}:{name}"), lines)


# --- synthetic ---------------------------------------------------------------------------------------------
def test_synthetic_inputs_follow_value_ranges_and_fixed_batches():
    options = ShapeOptions(dims={"S": 576}, value_ranges={"sr": (16000, 16000), "input": (-1, 1)})
    vad = _sig(("input", "float32", ("B", "S")), ("state", "float32", (2, "B", 128)), ("sr", "int64", ()),
               options=options, outputs=(("output", "float32", ("B", 1)),))
    ds = load_data(DataSpec("synthetic"), vad)
    x = ds.arrays()
    assert ds.synthetic and len(ds) == 64 and x["input"].shape == (64, 576) and x["state"].shape == (2, 64, 128)
    assert x["sr"] == 16000 and -1 <= x["input"].min() < 0 < x["input"].max() <= 1
    fixed = load_data(DataSpec("synthetic"), _sig(("x", "float32", (1, 3, 8, 8))), max_samples=5)
    assert len(fixed.chunks) == 5 and not np.array_equal(fixed.chunks[0].inputs["x"], fixed.chunks[1].inputs["x"])
    with pytest.raises(EdgeDLError) as info:
        load_data(DataSpec("synthetic"), _sig(("x", "float32", ("N", 3, "H", "W"))))
    assert info.value.option == ("dim", "H=N")


# --- which data serves which role --------------------------------------------------------------------------
def test_plan_splits_one_source_or_reuses_a_small_one(tmp_path):
    big = DataSpec.parse(str(_vad_npz(tmp_path / "big.npz", n=20)))
    plan = plan_data(DataOptions(data=big), VAD)
    assert len(plan.calibration) == 10 and len(plan.evaluation) == 10 and "calibrated on 10" in plan.notes[0]
    small = DataSpec.parse(str(_vad_npz(tmp_path / "small.npz", n=5)))
    plan = plan_data(DataOptions(evaluation=small), VAD)  # the evaluation source also calibrates
    assert plan.calibration is plan.evaluation and "optimistic" in plan.notes[0]
    only_eval = plan_data(DataOptions(evaluation=small), VAD, calibration=False)
    assert only_eval.calibration is None and len(only_eval.evaluation) == 5 and not only_eval.notes
    both = plan_data(DataOptions(calibration=small, evaluation=big), VAD)
    assert (len(both.calibration), len(both.evaluation)) == (5, 20) and not both.weak


def test_plan_uses_the_recipe_a_zoo_model_names_and_nothing_for_a_class_export():
    digits = _sig(("pixels", "float32", ("batch", 64)), outputs=(("logits", "float32", ("batch", 10)),))
    zoo = {"recipe": "mlp", "recipe_source": "/moved/checkout/models/mlp.py", "task": "classification"}
    plan = plan_data(DataOptions(), digits, zoo)
    assert plan.calibration.source == "recipe mlp calibration split" and plan.evaluation.source == "recipe mlp test split"
    assert len(plan.evaluation) == 360 and plan.evaluation.integer_labels
    # an export of path/to/file.py:Class records no data (task None): synthetic inputs, said to be weaker
    plan = plan_data(DataOptions(), digits, {"recipe": "ResNet18", "recipe_source": "net.py", "task": None})
    assert plan.weak and plan.evaluation.synthetic and any("weaker check" in n for n in plan.notes)
    assert plan_data(DataOptions(), digits, {}, synthetic_fallback=False).evaluation is None
    with pytest.raises(EdgeDLError) as info:
        plan_data(DataOptions(), digits, {"recipe": "ResNet18", "recipe_source": "/gone/r.py", "task": "classification"})
    assert info.value.option == ("data", "SOURCE")
