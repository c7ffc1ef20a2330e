"""models/silero_vad.py, silero-vad rebuilt in PyTorch from the package's architecture: exported by `edgedl export`
from the package's weights and validated against PyTorch, then run next to the package's own silero_vad.onnx on
espeak-ng speech, chunk by chunk with the recurrent state carried.

silero_vad.jit carries the weights of silero_vad.onnx: the export matches it to float precision. The package's
silero_vad_16k.safetensors carries other weights (only the STFT basis is the same): its probabilities differ,
its speech decisions mostly agree."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import real_models
from edgedl_testing import run_edgedl_inprocess
from real_tasks import frame_f1, onnxruntime_run, vad_probabilities

WEIGHTS = real_models.SILERO_WEIGHTS


@pytest.fixture(scope="module")
def shipped_probs() -> np.ndarray:
    windows = real_models.vad_windows(real_models.speech().audio)
    return vad_probabilities(onnxruntime_run(real_models.shipped("silero_vad")), windows)


def _probs(path) -> np.ndarray:
    return vad_probabilities(onnxruntime_run(path), real_models.vad_windows(real_models.speech().audio), sr=False)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_export_is_validated_against_torch_and_records_its_batch_axes(silero_exports, weights):
    path, report = silero_exports[weights]
    validation = report["validation"]
    assert validation["passed"] and validation["max_abs_diff"] < 1e-5, validation
    assert [c["sizes"] for c in validation["checks"]] == [{"batch": 2}, {"batch": 5}]
    meta = report["metadata"]
    assert {i["name"]: i["batch_axis"] for i in meta["inputs"]} == {"input": 0, "state": 1}
    assert {o["name"]: o["batch_axis"] for o in meta["outputs"]} == {"output": 0, "stateN": 1}
    weights_sha256 = hashlib.sha256(real_models.silero_file(weights).read_bytes()).hexdigest()
    assert meta["torch_source"]["checkpoint_sha256"] == weights_sha256


def test_jit_weights_match_the_shipped_onnx_on_speech(silero_exports, shipped_probs):
    ours = _probs(silero_exports["silero_vad.jit"][0])
    assert len(ours) > 300  # ~10 s of audio in 32 ms chunks
    assert np.abs(ours - shipped_probs).max() < 1e-4
    assert ((ours > 0.5) == (shipped_probs > 0.5)).all()


def test_safetensors_weights_are_another_training_that_still_finds_speech(silero_exports, shipped_probs):
    ours = _probs(silero_exports["silero_vad_16k.safetensors"][0])
    truth = real_models.speech().chunk_labels()
    assert np.abs(ours - shipped_probs).max() > 0.1  # not the weights silero_vad.onnx carries
    assert ((ours > 0.5) == (shipped_probs > 0.5)).mean() > 0.95
    assert frame_f1(ours > 0.5, truth) > 0.95


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_checkpoint_it_cannot_read_is_a_one_line_error(tmp_path):
    torch = pytest.importorskip("torch")
    other, broken = tmp_path / "other.jit", tmp_path / "broken.jit"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(other))
    broken.write_bytes(b"not a TorchScript archive")
    for checkpoint, says in ((real_models.shipped("silero_vad"), "silero_vad.jit or silero_vad_16k.safetensors"),
                             (other, "not silero-vad's TorchScript model"),
                             (broken, "recipe 'silero_vad' could not read")):
        out = tmp_path / "out.onnx"
        result = run_edgedl_inprocess("export", "silero_vad", "--checkpoint", checkpoint, "-o", out)
        assert result.returncode != 0 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_folder_named_like_the_recipe_does_not_hide_it(tmp_path, monkeypatch):
    """Unpacking the silero-vad wheel leaves a silero_vad/ folder where users run `edgedl export silero_vad`."""
    from edgedl.recipe import resolve_recipe_path

    (tmp_path / "silero_vad" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe_path("silero_vad") == real_models.ROOT / "models" / "silero_vad.py"
