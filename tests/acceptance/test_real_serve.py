"""`edgedl serve` with the shipped models and tritonclient over loopback: each real request answers what
onnxruntime answers in process, the task scores through the server, and silero-vad streams (its state batched on
axis 1) are batched together by the server while each stream gets exactly its own probabilities and state."""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import pytest

import real_models
from real_tasks import MODELS, onnxruntime_run, triton_run, vad_probabilities
from serve_helpers import ServerProcess

tritonclient_http = pytest.importorskip("tritonclient.http")


def _clean(server: ServerProcess) -> None:
    assert "Traceback" not in server.stderr and "served without warm-up" not in server.stderr, server.stderr


@pytest.mark.parametrize("name", list(MODELS))
def test_served_real_request_equals_in_process_and_does_the_task(name):
    model = MODELS[name]
    feeds = model.batch()
    want = onnxruntime_run(model.path)(feeds)
    with ServerProcess(model.path, "--model-name", name, *model.options) as server:
        run = triton_run(tritonclient_http.InferenceServerClient(server.url), name)
        got = run(feeds)
        score = model.score(run)
    _clean(server)
    assert list(got) == list(want)
    for key in want:
        assert got[key].shape == want[key].shape
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert score.value == model.score(onnxruntime_run(model.path)).value, score


def _streams(count: int) -> list[np.ndarray]:
    """``count`` different recordings (own noise each, shifted by a few ms): windows [chunks, 576]."""
    out = []
    for k in range(count):
        audio = real_models.speech(seed=k).audio[37 * k:]
        out.append(real_models.vad_windows(audio)[:160])  # 5 s each: silence, then speech
    return out


def _serve_streams(server: ServerProcess, model: str, streams: list[np.ndarray], sr: bool) -> list[np.ndarray]:
    """One client thread per stream, each sending its chunks in order with its own state."""
    results: list[np.ndarray | BaseException] = [None] * len(streams)

    def stream(index: int) -> None:
        try:
            run = triton_run(tritonclient_http.InferenceServerClient(server.url, network_timeout=60), model)
            results[index] = vad_probabilities(run, streams[index], sr=sr)
        except BaseException as exc:  # reported by the test thread
            results[index] = exc

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _runs_of_one_row(server: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    prefix = f'edgedl_inference_batch_size_bucket{{model="{model}",version="1",le="1"'
    return next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))


BATCHING = ("--max-batch-size", "4", "--max-queue-delay-us", "20000")


@pytest.mark.parametrize("which", ["shipped", "exported"])
def test_vad_streams_are_batched_along_the_state_axis(which, silero_exports):
    """The shipped model needs its outputs' batch axes as options; the export from models/silero_vad.py carries
    them in its metadata and is served with no options at all."""
    if which == "shipped":
        path, options, sr = MODELS["silero_vad"].path, MODELS["silero_vad"].options, True
    else:
        path, options, sr = silero_exports["silero_vad.jit"][0], (), False
    streams = _streams(4)
    want = [vad_probabilities(onnxruntime_run(path), windows, sr=sr) for windows in streams]
    with ServerProcess(path, "--model-name", "vad", *options, *BATCHING) as server:
        got = _serve_streams(server, "vad", streams, sr)
        alone = _runs_of_one_row(server, "vad")
        if not sr:  # the 16 kHz-only export refuses a sample rate rather than ignore it
            with pytest.raises(tritonclient_http.InferenceServerException, match="unknown input 'sr'"):
                triton_run(tritonclient_http.InferenceServerClient(server.url), "vad")(
                    {"input": streams[0][:1], "state": np.zeros((2, 1, 128), np.float32),
                     "sr": np.array(8000, np.int64)})
    _clean(server)
    assert "dynamic batching is OFF" not in server.stderr
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    requests = sum(len(s) for s in streams)
    assert alone < requests / 2, f"{alone} of {requests} requests ran alone: the server did not batch the streams"
