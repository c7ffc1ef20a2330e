"""What the acceptance suite knows about each shipped model: the size options its stages need, a real batch in
the model's own preprocessing, and a task metric that drives any backend (in-process onnxruntime, a server, a
quantized copy) through a ``Run`` callable and scores what comes back.

Preprocessing follows the packages the models ship in: RapidOCR (PP-OCR: BGR, scale to [-1, 1]; recognizer lines
48 px high, padded right; classifier 48x192) and YOLOv8/ultralytics (nudenet: RGB letterboxed to 320, grey 114
padding, scale to [0, 1]); silero-vad is fed 576-sample windows at 16 kHz with its state carried.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import real_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import Reference  # noqa: E402 - in-process onnxruntime sessions, one per model

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # feeds -> outputs by name

OCR_LINES = ("edgedl serves models", "Hello World 2026", "onnxruntime 1.32.0")


@dataclass(frozen=True)
class Score:
    metric: str
    value: float  # 1.0 is perfect
    detail: str

    def __str__(self) -> str:
        return f"{self.metric} {self.value:.3f} ({self.detail})"


@dataclass(frozen=True)
class AcceptanceModel:
    name: str  # a key of real_models.SHIPPED
    options: tuple[str, ...]  # the size options inspect, bench and serve need for it
    batch: Callable[[], dict[str, np.ndarray]]  # one real request
    score: Callable[[Run], Score]  # the task metric, driving the model through a Run

    @property
    def path(self) -> Path:
        return real_models.shipped(self.name)


@functools.lru_cache(maxsize=1)
def _reference() -> Reference:
    return Reference()


def onnxruntime_run(path: Path) -> Run:
    """Plain onnxruntime in process (1 thread): the reference a served or converted model is compared with.
    Sessions are kept per path: write a changed model to a new path."""
    return functools.partial(_reference(), path)


def triton_run(client, model: str) -> Run:
    """The same call through a tritonclient (HTTP, binary tensors) to a served model."""
    from tritonclient.http import InferInput
    from tritonclient.utils import np_to_triton_dtype

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = []
        for name, value in feeds.items():
            item = InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            item.set_data_from_numpy(value, binary_data=True)
            inputs.append(item)
        result = client.infer(model, inputs)
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}

    return run


# --- PP-OCR ------------------------------------------------------------------------------------------------
def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), np.float32)


def _ppocr_chw(image: np.ndarray) -> np.ndarray:
    """RGB HxWx3 (0..255) -> the BGR CHW in [-1, 1] PP-OCR models take."""
    return ((image[..., ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def ocr_lines(width: int | None = None, height: int = 48, turned: bool = False) -> np.ndarray:
    """The OCR_LINES rendered (``turned``: upside down), each resized to ``height`` (aspect kept, squeezed to fit
    ``width``) and padded right to the widest (or to ``width``): [lines, 3, height, W]."""
    images = [real_models.text_line(t)[::-1, ::-1] if turned else real_models.text_line(t) for t in OCR_LINES]
    ratio = max(max(i.shape[1] / i.shape[0] for i in images), 320 / 48)
    width = width or int(height * ratio)
    out = np.zeros((len(images), 3, height, width), np.float32)
    for k, image in enumerate(images):
        w = min(width, math.ceil(height * image.shape[1] / image.shape[0]))
        out[k, :, :, :w] = _ppocr_chw(_resize(image, w, height))
    return out


@functools.lru_cache(maxsize=2)
def ocr_characters(path: Path) -> list[str]:
    """The recognizer's alphabet: CTC blank, the 'character' list in its metadata, then space (as RapidOCR)."""
    import onnxruntime as ort

    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    return ["<blank>", *meta["character"].splitlines(), " "]


def ctc_decode(probs: np.ndarray, characters: list[str]) -> list[str]:
    """Greedy CTC: best class per time step, repeats merged, blanks dropped. probs [N, T, classes]."""
    texts = []
    for row in probs.argmax(axis=2):
        keep = np.ones(len(row), bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        texts.append("".join(characters[i] for i in row[keep]).strip())
    return texts


def char_accuracy(got: str, want: str) -> float:
    """1 - Levenshtein distance / len(want)."""
    prev = list(range(len(want) + 1))
    for i, a in enumerate(got, 1):
        cur = [i]
        for j, b in enumerate(want, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b)))
        prev = cur
    return max(0.0, 1.0 - prev[-1] / max(len(want), 1))


def _rec_score(run: Run) -> Score:
    probs = next(iter(run({"x": ocr_lines()}).values()))
    texts = ctc_decode(probs, ocr_characters(real_models.shipped("ppocr_rec")))
    value = float(np.mean([char_accuracy(g, w) for g, w in zip(texts, OCR_LINES)]))
    return Score("character accuracy", value, " | ".join(texts))


def _cls_batch() -> dict[str, np.ndarray]:
    return {"x": np.concatenate([ocr_lines(width=192), ocr_lines(width=192, turned=True)])}


def _cls_score(run: Run) -> Score:
    probs = next(iter(run(_cls_batch()).values()))
    want = np.repeat([0, 1], len(OCR_LINES))  # labels '0', '180'
    got = probs.argmax(axis=1)
    return Score("orientation accuracy", float((got == want).mean()), f"predicted {got.tolist()}")


def _det_page() -> real_models.TextPage:
    return real_models.text_page(OCR_LINES, width=480, height=320)  # sides multiples of 32, as the detector needs


def _det_score(run: Run, margin: int = 12) -> Score:
    page = _det_page()
    prob = next(iter(run({"x": _ppocr_chw(page.image)[None]}).values()))[0, 0]
    found, outside = 0, np.ones(prob.shape, bool)
    for left, top, right, bottom in page.boxes:
        found += prob[top:bottom, left:right].max() > 0.9
        outside[max(top - margin, 0):bottom + margin, max(left - margin, 0):right + margin] = False
    false_alarm = float((prob[outside] > 0.3).mean())
    value = found / len(page.boxes) * (1.0 - false_alarm)
    return Score("text lines found", value, f"{found}/{len(page.boxes)} lines, {false_alarm:.2%} of the background "
                                            "above 0.3")


# --- nudenet (YOLOv8) --------------------------------------------------------------------------------------
def letterbox(image: np.ndarray, size: int = 320) -> np.ndarray:
    """Fit into size x size keeping the aspect ratio, grey (114) borders, scaled to [0, 1]: CHW float32."""
    h, w = image.shape[:2]
    r = size / max(h, w)
    nw, nh = round(w * r), round(h * r)
    canvas = np.full((size, size, 3), 114, np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = _resize(image, nw, nh)
    return (canvas / 255.0).transpose(2, 0, 1)


def _photo_batch() -> dict[str, np.ndarray]:
    return {"images": np.stack([letterbox(p) for p in real_models.photos().values()])}


def _nudenet_score(run: Run, conf: float = 0.5) -> Score:
    """The photos (a temple, a flower) show none of nudenet's 18 classes: the share of photos without a box
    above ``conf`` (boxes must be finite)."""
    out = run(_photo_batch())["output0"]  # [N, 4 box + 18 classes, anchors]
    if not np.isfinite(out).all():
        return Score("clean photos without detections", 0.0, "non-finite outputs")
    top = out[:, 4:].max(axis=(1, 2))
    return Score("clean photos without detections", float((top <= conf).mean()),
                 "top class score per photo " + ", ".join(f"{v:.3f}" for v in top))


# --- silero-vad --------------------------------------------------------------------------------------------
def vad_probabilities(run: Run, windows: np.ndarray, sr: bool = True, state_name: str = "state",
                      out_names: tuple[str, str] = ("output", "stateN")) -> np.ndarray:
    """Stream ``windows`` [chunks, 576] through a silero-style model one at a time, carrying its state: the
    speech probability per chunk. ``sr``: the model takes silero's scalar sample-rate input."""
    state = np.zeros((2, 1, 128), np.float32)
    probs = np.empty(len(windows), np.float32)
    for i, window in enumerate(windows):
        feeds = {"input": window[None], state_name: state}
        if sr:
            feeds["sr"] = np.array(real_models.SAMPLE_RATE, np.int64)
        out = run(feeds)
        probs[i], state = out[out_names[0]][0, 0], out[out_names[1]]
    return probs


def frame_f1(speech: np.ndarray, truth: np.ndarray) -> float:
    tp = float((speech & truth).sum())
    return 2 * tp / max(float(speech.sum() + truth.sum()), 1.0)


def _vad_batch() -> dict[str, np.ndarray]:
    """8 windows spread over the recording, each the start of its own stream (zero state)."""
    windows = real_models.vad_windows(real_models.speech().audio)
    pick = np.linspace(0, len(windows) - 1, 8).astype(int)
    return {"input": windows[pick], "state": np.zeros((2, 8, 128), np.float32),
            "sr": np.array(real_models.SAMPLE_RATE, np.int64)}


def _vad_score(run: Run) -> Score:
    speech = real_models.speech()
    probs = vad_probabilities(run, real_models.vad_windows(speech.audio))
    decided = probs > 0.5
    truth = speech.chunk_labels()
    return Score("speech frame F1", frame_f1(decided, truth),
                 f"{int(decided.sum())} of {len(decided)} chunks speech, {int(truth.sum())} in the recording")


MODELS = {
    m.name: m for m in (
        AcceptanceModel("ppocr_det", ("--input-shape", "x=1x3x320x480"), lambda: {"x": _ppocr_chw(_det_page().image)[None]},
                        _det_score),
        AcceptanceModel("ppocr_rec", ("--input-shape", "x=1x3x48x320"), lambda: {"x": ocr_lines()}, _rec_score),
        AcceptanceModel("ppocr_cls", ("--input-shape", "x=1x3x48x192"), _cls_batch, _cls_score),
        # silero's outputs leave every dim unnamed: their batch axes are said so that a server may batch it
        AcceptanceModel("silero_vad", ("--input-shape", "input=1x576", "--input-range", "sr=16000..16000",
                                       "--batch-axis", "output=0", "--batch-axis", "stateN=1"), _vad_batch, _vad_score),
        AcceptanceModel("nudenet", ("--input-shape", "images=1x3x320x320"), _photo_batch, _nudenet_score),
    )
}
