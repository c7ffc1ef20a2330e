"""`edgedl package` on the acceptance models (int8 where quantize made one) with the size options each needs, then
the bundle served as a device starts it - its own start.sh - and used through tritonclient: the options travel
in the bundle (start.sh, manifest), every model warms up at its real sizes, the bundle's reference outputs
(computed at those sizes and value ranges) are what the served model answers, and each task scores what it
scores in process. Options name inputs, so they apply to the models that have those inputs; an option that two
models of a bundle could take (PP-OCR's models all call their input 'x') is refused in one line, with nothing
written, as is a model that cannot run without its sizes."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from acceptance_cli import edgedl, refused
from edgedl_testing import ROOT
from real_tasks import MODELS, onnxruntime_run, triton_run
from serve_helpers import ServerProcess

tritonclient_http = pytest.importorskip("tritonclient.http")

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}  # the wheelhouse, fetched once (tests/test_package.py)
# models that share no input name (PP-OCR's all take 'x', at different sizes), with the options they need
BUNDLES = {"vision": ("nudenet", "ppocr_det"), "speech-text": ("silero_vad", "ppocr_rec"), "orientation": ("ppocr_cls",)}


def _options(names) -> list[str]:
    return [o for name in names for o in MODELS[name].options]


def _model(name: str, int8_models) -> Path:
    result = int8_models[name]
    return MODELS[name].path if result.error else result.path  # silero-vad's fp32 model: quantize refuses it


@pytest.fixture(scope="module")
def bundles(int8_models, tmp_path_factory, monkeypatch_module) -> dict[str, Path]:
    for key, value in CACHE_ENV.items():
        monkeypatch_module.setenv(key, value)
    directory = tmp_path_factory.mktemp("bundles")
    out = {}
    for bundle, names in BUNDLES.items():
        out[bundle] = directory / bundle
        result = edgedl("package", *(_model(n, int8_models) for n in names), *(a for n in names for a in ("--name", n)),
                        "--target", "rpi5", "-o", out[bundle], "--no-tarball", *_options(names), "--json")
        assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_the_options_travel_in_the_bundle(bundles, bundle):
    """Into start.sh's server command and the manifest, as they were given."""
    from edgedl.runtime.signature import ShapeOptions
    from edgedl.stages.package import serve_args

    given = _options(BUNDLES[bundle])
    pairs = lambda args: sorted(zip(args[::2], args[1::2]))  # noqa: E731
    command = shlex.split((bundles[bundle] / "start.sh").read_text().strip().splitlines()[-1])
    after_limits = command[command.index("$LIMITS") + 1:]
    assert pairs([a for a in after_limits if a != "$@"]) == pairs(given)  # "$@": start.sh's optional --grpc-port
    manifest = json.loads((bundles[bundle] / "manifest.json").read_text())
    assert pairs(serve_args(ShapeOptions.from_json(manifest["server"]["shape_options"]))) == pairs(given)


def test_reference_outputs_are_computed_at_the_given_sizes_and_ranges(bundles):
    reference = json.loads((bundles["speech-text"] / "reference.json").read_text())
    feeds = {m["name"]: {t["name"]: t for t in m["inputs"]} for m in reference["models"]}
    assert feeds["silero_vad"]["input"]["shape"] == [1, 576] and feeds["silero_vad"]["state"]["shape"] == [2, 1, 128]
    assert feeds["silero_vad"]["sr"]["shape"] == [] and feeds["silero_vad"]["sr"]["data"] == [16000]
    assert feeds["ppocr_rec"]["x"]["shape"] == [1, 3, 48, 320]
    vision = json.loads((bundles["vision"] / "reference.json").read_text())
    shapes = {m["name"]: m["inputs"][0]["shape"] for m in vision["models"]}
    assert shapes == {"nudenet": [1, 3, 320, 320], "ppocr_det": [1, 3, 320, 480]}


@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_the_bundle_serves_every_model_at_its_task(bundles, bundle, int8_models):
    env = {"EDGEDL_PYTHON": sys.executable, "EDGEDL_HOST": "127.0.0.1", **CACHE_ENV}
    reference = json.loads((bundles[bundle] / "reference.json").read_text())
    with ServerProcess(script=bundles[bundle] / "start.sh", env=env, timeout=60) as server:
        client = tritonclient_http.InferenceServerClient(server.url, network_timeout=60)
        scores, replies = {}, {}
        for name in BUNDLES[bundle]:
            run = triton_run(client, name)
            scores[name] = MODELS[name].score(run)
            own = next(m for m in reference["models"] if m["name"] == name)
            replies[name] = (own, run({t["name"]: _array(t) for t in own["inputs"]}))
    log = server.stderr
    assert "Traceback" not in log and "served without warm-up" not in log and "UNAVAILABLE" not in log, log
    assert "dynamic batching is OFF" not in log, log  # silero's output batch axes came with the bundle
    for name in BUNDLES[bundle]:
        want = MODELS[name].score(onnxruntime_run(_model(name, int8_models)))
        assert scores[name].value == pytest.approx(want.value, abs=1e-6), (name, scores[name], want)
        own, got = replies[name]
        for tensor in own["outputs"]:  # the smoke check a device passes after a rollout
            np.testing.assert_allclose(got[tensor["name"]], _array(tensor), atol=reference["atol"],
                                       rtol=reference["rtol"], err_msg=f"{name} {tensor['name']}")


def _array(tensor: dict) -> np.ndarray:
    dtype = {"FP32": np.float32, "INT64": np.int64, "FP16": np.float16, "INT32": np.int32}[tensor["datatype"]]
    return np.asarray(tensor["data"], dtype).reshape(tensor["shape"])


def test_an_option_two_models_could_take_is_refused(tmp_path, monkeypatch):
    for key, value in CACHE_ENV.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "ocr"
    refused("package", MODELS["ppocr_det"].path, MODELS["ppocr_cls"].path, "--target", "rpi5", "-o", out,
            *MODELS["ppocr_det"].options, output=out,
            says=("the size option for 'x' would apply to models ch_PP-OCRv4_det_infer, ch_ppocr_mobile_v2.0_cls_infer",
                  "bundles of their own"))


def test_a_model_without_its_sizes_is_refused_in_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    """nudenet cannot run at the synthetic size 2x2: the reference outputs cannot be computed, and package says
    which option gives the model its real sizes."""
    for key, value in CACHE_ENV.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "nudenet"
    refused("package", MODELS["nudenet"].path, "--target", "rpi5", "-o", out, output=out,
            says=("model 320n fails on synthetic inputs (images 2x3x2x2)", "--input-shape images="), process=True)
