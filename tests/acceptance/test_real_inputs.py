"""The real inputs and the model cache the acceptance suite stands on: speech with its truth and silero's windows,
a wheel that is not the pinned one, and a missing tool."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import real_models


def test_speech_has_both_classes_and_windows_carry_their_context():
    speech = real_models.speech()
    labels = speech.chunk_labels()
    assert 0.3 < labels.mean() < 0.9 and labels[:25].sum() == 0 and labels[-25:].sum() == 0
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)))  # noqa: E731
    assert rms(speech.audio[speech.is_speech]) > 10 * rms(speech.audio[~speech.is_speech])
    windows = real_models.vad_windows(speech.audio)
    assert windows.shape == (len(labels), 576) and not windows[0, :64].any()
    np.testing.assert_array_equal(windows[1:, :64], windows[:-1, -64:])  # each window starts with the last one's end
    np.testing.assert_array_equal(windows[:, 64:].reshape(-1)[: len(speech.audio)], speech.audio)


def test_a_wheel_that_is_not_the_pinned_one_is_an_error_and_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(real_models, "CACHE", tmp_path / "cache")
    wrong = dataclasses.replace(real_models.WHEELS["silero"], sha256="0" * 64)
    monkeypatch.setitem(real_models.WHEELS, "wrong", wrong)
    with pytest.raises(AssertionError, match="not the pinned wheel"):
        real_models.wheel_dir("wrong")
    assert not wrong.directory.exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_without_espeak_ng_speech_is_unavailable_with_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(real_models.Unavailable, match="apt-get install espeak-ng"):
        real_models.espeak("hello")
