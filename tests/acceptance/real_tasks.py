"""What the acceptance suite knows about each shipped model: the size options its stages need, real data in the
model's own preprocessing (evaluation data with labels, separate calibration data, one real request) and its task
metric, one of tests/fixtures/task_metrics.py - the functions `edgedl quantize --metric` calls. ``score`` drives
any backend (in-process onnxruntime, a server, a quantized copy) through a ``Run`` callable and applies that same
metric to what comes back.

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

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "serve"), str(TESTS / "fixtures")]
import task_metrics  # noqa: E402 - the metrics `edgedl quantize --metric` calls
from serve_helpers import Reference  # noqa: E402 - in-process onnxruntime sessions, one per model

TASK_METRICS = TESTS / "fixtures" / "task_metrics.py"
Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # feeds -> outputs by name

OCR_LINES = ("edgedl serves models", "Hello World 2026", "onnxruntime 1.32.0", "quantize on the device")
CALIBRATION_LINES = ("Batch axis one", "per channel weights", "text lines 48 px", "Raspberry Pi 5",
                     "silero and nudenet", "scale 0.5 mean 0.5")


@dataclass(frozen=True)
class TaskData:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None


@dataclass(frozen=True)
class Score:
    metric: str
    value: float  # percent, 100 is perfect
    detail: str

    def __str__(self) -> str:
        return f"{self.metric} {self.value:.1f} ({self.detail})"


@dataclass(frozen=True)
class AcceptanceModel:
    name: str  # a key of real_models.SHIPPED
    options: tuple[str, ...]  # the size options every stage needs for it
    metric: str  # a function of task_metrics
    data: Callable[[], TaskData]  # labelled evaluation data, scored by ``metric``
    calibration: Callable[[], dict[str, np.ndarray]]  # other real inputs, for static quantization
    describe: Callable[[dict[str, np.ndarray]], str]  # what the model answered on ``data``, for messages
    quantize: tuple[str, ...]  # the `edgedl quantize` options that give an int8 model passing the metric's gate
    request: Callable[[], dict[str, np.ndarray]] | None = None  # one real request; default: ``data``'s inputs
    streamed: Callable[[Run], dict[str, np.ndarray]] | None = None  # outputs of a stateful run over ``data``
    unquantizable: str | None = None  # why quantize refuses the model, when it does (its error says so)

    @property
    def path(self) -> Path:
        return real_models.shipped(self.name)

    @property
    def metric_target(self) -> str:
        """The --metric argument: task_metrics.py:FUNCTION."""
        return f"{TASK_METRICS}:{self.metric}"

    def batch(self) -> dict[str, np.ndarray]:
        return self.request() if self.request else self.data().inputs

    def score(self, run: Run) -> Score:
        data = self.data()
        outputs = self.streamed(run) if self.streamed else run(data.inputs)
        value = getattr(task_metrics, self.metric)(outputs, None, data.labels)
        return Score(self.metric.replace("_", " "), value, self.describe(outputs))


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


def ocr_lines(lines: tuple[str, ...] = OCR_LINES, width: int | None = None, height: int = 48,
              turned: bool = False) -> np.ndarray:
    """``lines`` rendered (``turned``: upside down), each resized to ``height`` (aspect kept, squeezed to fit
    ``width``) and padded right to the widest (or to ``width``): [lines, 3, height, W]."""
    images = [real_models.text_line(t)[::-1, ::-1] if turned else real_models.text_line(t) for t in lines]
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


def _rec_alphabet() -> list[str]:
    return ocr_characters(real_models.shipped("ppocr_rec"))


def _rec_data() -> TaskData:
    """The lines, labelled with their text as class indices of the recognizer's alphabet (-1 pads)."""
    index = {c: i for i, c in enumerate(_rec_alphabet())}
    labels = np.full((len(OCR_LINES), max(map(len, OCR_LINES))), -1, np.int64)
    for row, text in enumerate(OCR_LINES):
        labels[row, :len(text)] = [index[c] for c in text]
    return TaskData({"x": ocr_lines()}, labels)


def _rec_describe(outputs) -> str:
    alphabet = _rec_alphabet()
    return " | ".join("".join(alphabet[i] for i in line) for line in task_metrics.ctc_decode(outputs["softmax_11.tmp_0"]))


def _cls_lines(lines: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([ocr_lines(lines, width=192), ocr_lines(lines, width=192, turned=True)])


def _cls_data() -> TaskData:
    return TaskData({"x": _cls_lines(OCR_LINES)}, np.repeat([0, 1], len(OCR_LINES)))  # labels '0', '180'


def _cls_describe(outputs) -> str:
    return f"predicted {next(iter(outputs.values())).argmax(axis=1).tolist()}"


def _pages(lines: tuple[str, ...], per_page: int) -> list[real_models.TextPage]:
    # sides multiples of 32, as the detector needs
    return [real_models.text_page(lines[i:i + per_page], width=480, height=320)
            for i in range(0, len(lines), per_page)]


def _det_data() -> TaskData:
    pages = _pages(OCR_LINES, 3)  # 3 lines, then 1: pages that differ
    labels = np.full((len(pages), max(len(p.boxes) for p in pages), 4), np.nan, np.float32)
    for k, page in enumerate(pages):
        labels[k, :len(page.boxes)] = page.boxes
    return TaskData({"x": np.stack([_ppocr_chw(p.image) for p in pages])}, labels)


def _det_describe(outputs) -> str:
    prob = next(iter(outputs.values()))[:, 0]
    return "map above 0.3 on " + ", ".join(f"{(p > task_metrics.NOISE).mean():.1%}" for p in prob) + " of each page"


# --- nudenet (YOLOv8) --------------------------------------------------------------------------------------
NUDENET_SIZE = 320
# the face in matplotlib's grace_hopper.jpg, letterboxed to 320 (looked up by eye): class 1 is FACE_FEMALE
GRACE_HOPPER_FACE = (1, 108, 70, 218, 182)


def letterbox(image: np.ndarray, size: int = NUDENET_SIZE) -> np.ndarray:
    """Fit into size x size keeping the aspect ratio, grey (114) borders, scaled to [0, 1]: CHW float32."""
    h, w = image.shape[:2]
    r = size / max(h, w)
    nw, nh = round(w * r), round(h * r)
    canvas = np.full((size, size, 3), 114, np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = _resize(image, nw, nh)
    return (canvas / 255.0).transpose(2, 0, 1)


def _photo_data() -> TaskData:
    """The three photos and their mirror images; labelled: the one face (a temple and a flower show none of
    nudenet's 18 classes)."""
    photos = real_models.photos()
    images = np.stack([letterbox(p) for p in photos.values()])
    images = np.concatenate([images, images[..., ::-1]])
    labels = np.full((len(images), 1, 5), np.nan, np.float32)
    face = np.array(GRACE_HOPPER_FACE, np.float32)
    k = list(photos).index("grace_hopper")
    labels[k, 0] = face
    labels[k + len(photos), 0] = [face[0], NUDENET_SIZE - face[3], face[2], NUDENET_SIZE - face[1], face[4]]
    return TaskData({"images": np.ascontiguousarray(images)}, labels)


def _photo_calibration() -> dict[str, np.ndarray]:
    """Crops of the photos (left and right halves, the centre), letterboxed."""
    crops = []
    for photo in real_models.photos().values():
        h, w = photo.shape[:2]
        crops += [photo[:, : w // 2], photo[:, w // 2:], photo[h // 4: 3 * h // 4, w // 4: 3 * w // 4]]
    return {"images": np.stack([letterbox(np.ascontiguousarray(c)) for c in crops])}


def _nudenet_describe(outputs) -> str:
    found = task_metrics.yolo_detections(outputs["output0"])
    return "; ".join(", ".join(f"class {int(d[0])} {d[1]:.2f}" for d in image) or "nothing" for image in found)


# --- silero-vad --------------------------------------------------------------------------------------------
def vad_probabilities(run: Run, windows: np.ndarray, sr: bool = True, state_name: str = "state",
                      out_names: tuple[str, str] = ("output", "stateN")) -> np.ndarray:
    """Stream ``windows`` [chunks, 576] through a silero-style model one at a time, carrying its state: the
    speech probability per chunk. ``sr``: the model takes silero's scalar sample-rate input."""
    return _vad_stream(run, windows, sr, state_name, out_names)[0]


def _vad_stream(run: Run, windows: np.ndarray, sr: bool = True, state_name: str = "state",
                out_names: tuple[str, str] = ("output", "stateN")) -> tuple[np.ndarray, np.ndarray]:
    """(speech probability per chunk, the state each chunk was fed [2, chunks, 128])."""
    state = np.zeros((2, 1, 128), np.float32)
    probs = np.empty(len(windows), np.float32)
    states = np.empty((2, len(windows), 128), np.float32)
    for i, window in enumerate(windows):
        states[:, i] = state[:, 0]
        feeds = {"input": window[None], state_name: state}
        if sr:
            feeds["sr"] = np.array(real_models.SAMPLE_RATE, np.int64)
        out = run(feeds)
        probs[i], state = out[out_names[0]][0, 0], out[out_names[1]]
    return probs, states


def frame_f1(speech: np.ndarray, truth: np.ndarray) -> float:
    """task_metrics.vad_frame_f1 on decisions already made, as a fraction."""
    return task_metrics.vad_frame_f1({"output": speech[:, None].astype(np.float32)}, None, truth) / 100.0


@functools.lru_cache(maxsize=1)
def _vad_data() -> TaskData:
    """Every window of the recording with the state the fp32 model reaches there when streamed: independent
    samples a batch can hold (the state batched on axis 1), labelled speech or not."""
    speech = real_models.speech()
    windows = real_models.vad_windows(speech.audio)
    _, states = _vad_stream(onnxruntime_run(real_models.shipped("silero_vad")), windows)
    return TaskData({"input": windows, "state": states, "sr": np.array(real_models.SAMPLE_RATE, np.int64)},
                    speech.chunk_labels())


def _vad_streamed(run: Run) -> dict[str, np.ndarray]:
    """The model's own states, not the stored ones: streamed chunk by chunk."""
    return {"output": vad_probabilities(run, _vad_data().inputs["input"])[:, None]}


def _vad_request() -> dict[str, np.ndarray]:
    """8 windows spread over the recording, each the start of its own stream (zero state)."""
    windows = _vad_data().inputs["input"]
    pick = np.linspace(0, len(windows) - 1, 8).astype(int)
    return {"input": windows[pick], "state": np.zeros((2, 8, 128), np.float32),
            "sr": np.array(real_models.SAMPLE_RATE, np.int64)}


def _vad_calibration() -> dict[str, np.ndarray]:
    data = _vad_data().inputs
    return {"input": data["input"][1::2], "state": data["state"][:, 1::2], "sr": data["sr"]}


def _vad_describe(outputs) -> str:
    decided = outputs["output"][:, 0] > 0.5
    truth = real_models.speech().chunk_labels()
    return f"{int(decided.sum())} of {len(decided)} chunks speech, {int(truth.sum())} in the recording"


MODELS = {
    m.name: m for m in (
        AcceptanceModel("ppocr_det", ("--input-shape", "x=1x3x320x480"), "text_lines_found", _det_data,
                        lambda: {"x": np.stack([_ppocr_chw(p.image) for p in _pages(CALIBRATION_LINES, 3)])},
                        _det_describe, ("--mode", "static")),
        # int8 convolutions (ConvInteger) ruin its reading; its MatMuls quantize well
        AcceptanceModel("ppocr_rec", ("--input-shape", "x=1x3x48x320"), "ocr_character_accuracy", _rec_data,
                        lambda: {"x": ocr_lines(CALIBRATION_LINES)}, _rec_describe,
                        ("--mode", "dynamic", "--exclude-op-types", "Conv")),
        AcceptanceModel("ppocr_cls", ("--input-shape", "x=1x3x48x192"), "top1_accuracy", _cls_data,
                        lambda: {"x": _cls_lines(CALIBRATION_LINES)}, _cls_describe, ("--mode", "static")),
        # silero's outputs leave every dim unnamed: their batch axes are said so that a server may batch it.
        # Its compute sits in If subgraphs (one per sample rate) that onnxruntime's quantizer does not enter; the
        # export of models/silero_vad.py has none and quantizes (test_real_quantize)
        AcceptanceModel("silero_vad", ("--input-shape", "input=1x576", "--input-range", "sr=16000..16000",
                                       "--batch-axis", "output=0", "--batch-axis", "stateN=1"), "vad_frame_f1",
                        _vad_data, _vad_calibration, _vad_describe, ("--mode", "static"), request=_vad_request,
                        streamed=_vad_streamed, unquantizable="its compute sits inside If subgraphs"),
        AcceptanceModel("nudenet", ("--input-shape", "images=1x3x320x320"), "detection_f1", _photo_data,
                        _photo_calibration, _nudenet_describe, ("--mode", "static")),
    )
}
