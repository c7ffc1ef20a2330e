"""A folder of images (or one image file) read with Pillow and preprocessed into a model's input.

Preprocessing comes from the model's metadata (the ``preprocessing`` key export writes from a recipe) with the
user's options over it; what the model's input shape fixes (channels, height, width) fills the rest:

    resize        N (shorter side to N, aspect kept) or [H, W]
    center_crop   N or [H, W]
    layout        NCHW, NHWC or NHW (grayscale without a channel axis); default: from the input's shape
    channel_order RGB, BGR or GRAY; default: RGB, GRAY for one channel
    scale         multiplies the pixel values (default 1/255); ``source_range`` [LO, HI] says the values it applies
                  to when they are not 0..255 (the zoo's digits: scale 1/16 of values 0..16)
    mean, std     per channel, after scaling: (x - mean) / std

Integer inputs (a model that takes raw uint8 pixels) get the pixel values unscaled. Labels: when the images sit in
sub-folders, the sub-folder names are the classes: their index in the model's ``labels`` metadata when every name
is there, else their place in numeric-aware sorted order (0, 1, 2, ..., 10; or 0 before 180).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import Signature, TensorSignature
from edgedl.stages.data.dataset import Dataset
from edgedl.stages.data.spec import IMAGE_SUFFIXES, DataSpec

LAYOUTS = ("nchw", "nhwc", "nhw")
CHANNEL_ORDERS = ("rgb", "bgr", "gray")
DEFAULT_SCALE = 1 / 255


def _size(value: Any, key: str) -> int | tuple[int, int] | None:
    """N, [H, W], 'N' or 'HxW' -> int or (h, w)."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:x\s*(\d+)\s*)?", value)
        value = None if not m else (int(m.group(1)) if m.group(2) is None else [int(m.group(1)), int(m.group(2))])
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1:
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) and v >= 1
                                                                     for v in value):
        return int(value[0]), int(value[1])
    raise EdgeDLError(f"preprocessing '{key}' must be N or HxW (positive integers), got {value!r}")


def _floats(value: Any, key: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise EdgeDLError(f"preprocessing '{key}' must be numbers (one, or one per channel), got {value!r}") from None


def _choice(value: Any, key: str, options: tuple[str, ...], strict: bool) -> str | None:
    if value is None:
        return None
    key_value = str(value).strip().lower()
    if key_value in options:
        return key_value
    if not strict:
        return None  # a descriptive metadata value ("rows as sequence steps") is not a setting
    raise EdgeDLError(f"preprocessing '{key}' must be one of {', '.join(o.upper() for o in options)}, got {value!r}")


def _scale(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str) and "/" in value:
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            pass
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise EdgeDLError(f"preprocessing 'scale' must be a number (e.g. 0.00392 or 1/255), got {value!r}") from None
    if not scale > 0:
        raise EdgeDLError(f"preprocessing 'scale' must be > 0, got {value!r}")
    return scale


@dataclass(frozen=True)
class ImagePreprocessing:
    """How image pixels become a model input; ``None`` = not said (metadata, then the input's shape decide)."""

    resize: int | tuple[int, int] | None = None
    center_crop: int | tuple[int, int] | None = None
    layout: str | None = None
    channel_order: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "resize", _size(self.resize, "resize"))
        object.__setattr__(self, "center_crop", _size(self.center_crop, "center_crop"))
        object.__setattr__(self, "layout", _choice(self.layout, "layout", LAYOUTS, strict=True))
        object.__setattr__(self, "channel_order", _choice(self.channel_order, "channel_order", CHANNEL_ORDERS, True))
        object.__setattr__(self, "scale", _scale(self.scale))
        object.__setattr__(self, "mean", _floats(self.mean, "mean"))
        object.__setattr__(self, "std", _floats(self.std, "std"))
        if self.std is not None and any(s == 0 for s in self.std):
            raise EdgeDLError("preprocessing 'std' must not be 0")
        rng = _floats(self.source_range, "source_range")
        if rng is not None and (len(rng) != 2 or rng[0] >= rng[1]):
            raise EdgeDLError(f"preprocessing 'source_range' must be [LOW, HIGH] with LOW < HIGH, got {self.source_range!r}")
        object.__setattr__(self, "source_range", rng)

    @classmethod
    def from_metadata(cls, preprocessing: Mapping[str, Any] | None) -> "ImagePreprocessing":
        """The settings in a model's ``preprocessing`` metadata; descriptive entries (``input``, ``range``) and
        layouts that are not image layouts are not settings and are left out."""
        meta = preprocessing if isinstance(preprocessing, Mapping) else {}
        return cls(resize=meta.get("resize"), center_crop=meta.get("center_crop"),
                   layout=_choice(meta.get("layout"), "layout", LAYOUTS, strict=False),
                   channel_order=_choice(meta.get("channel_order"), "channel_order", CHANNEL_ORDERS, strict=False),
                   scale=meta.get("scale"), mean=meta.get("mean"), std=meta.get("std"),
                   source_range=meta.get("source_range"))

    def over(self, base: "ImagePreprocessing") -> "ImagePreprocessing":
        """These settings where given, ``base`` elsewhere (options over metadata)."""
        return replace(base, **{k: v for k, v in asdict(self).items() if v is not None})

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


def _infer_layout(spec: TensorSignature) -> str:
    rank = len(spec.shape)
    if rank == 3:
        return "nhw"
    if rank != 4:
        raise EdgeDLError(f"input '{spec.name}' {list(spec.shape)} is not an image input (rank 4 NCHW/NHWC, or rank 3 "
                          "grayscale NHW); give this model .npz data or a file.py:function instead of images")
    first, last = spec.shape[1], spec.shape[3]
    if last in (1, 3, 4) and first not in (1, 3, 4):
        return "nhwc"
    return "nchw"


def _axes(layout: str) -> tuple[int | None, int, int]:
    """(channel, height, width) axes of the input for a layout."""
    return {"nchw": (1, 2, 3), "nhwc": (3, 1, 2), "nhw": (None, 1, 2)}[layout]


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


@dataclass(frozen=True)
class _Plan:
    layout: str
    channels: int
    order: str
    target: tuple[int, int] | None  # final (h, w); None: the images' own size
    settings: ImagePreprocessing


def _plan(spec: TensorSignature, signature: Signature, settings: ImagePreprocessing) -> _Plan:
    layout = settings.layout or _infer_layout(spec)
    if len(spec.shape) != (3 if layout == "nhw" else 4):
        raise EdgeDLError(f"layout {layout.upper()} does not fit input '{spec.name}' of rank {len(spec.shape)} "
                          f"{list(spec.shape)}")
    c_axis, h_axis, w_axis = _axes(layout)
    channels = 1 if c_axis is None else spec.shape[c_axis]
    if not isinstance(channels, int):
        channels = 1 if settings.channel_order == "gray" else 3
    if channels not in (1, 3):
        raise EdgeDLError(f"input '{spec.name}' {list(spec.shape)} has {channels} channels; images give 1 (gray) or 3")
    order = settings.channel_order or ("gray" if channels == 1 else "rgb")
    if (order == "gray") != (channels == 1):
        raise EdgeDLError(f"channel order {order.upper()} does not fit input '{spec.name}' with {channels} channel(s)")
    fixed = tuple(spec.shape[a] if isinstance(spec.shape[a], int) else None for a in (h_axis, w_axis))
    if settings.center_crop is not None:
        target = _pair(settings.center_crop)
    elif isinstance(settings.resize, tuple):
        target = settings.resize
    elif all(fixed):
        target = fixed
    else:
        known = signature.known_shapes.get(spec.name)
        target = (int(known[h_axis]), int(known[w_axis])) if known is not None and not settings.resize else None
    if target is not None and any(f is not None and f != t for f, t in zip(fixed, target)):
        raise EdgeDLError(f"preprocessing ends at {target[0]}x{target[1]} but input '{spec.name}' {list(spec.shape)} "
                          f"is fixed at {fixed[0] or '?'}x{fixed[1] or '?'}; change the resize/center crop")
    for what, values in (("mean", settings.mean), ("std", settings.std)):
        if values is not None and len(values) not in (1, channels):
            raise EdgeDLError(f"preprocessing '{what}' has {len(values)} values; input '{spec.name}' has {channels} "
                              "channel(s): give one value or one per channel")
    return _Plan(layout, channels, order, target, settings)


def _files(folder: Path) -> tuple[list[Path], list[str] | None]:
    """Image files and, when they sit in sub-folders, each file's sub-folder name."""
    if folder.is_file():
        return [folder], None
    top = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    nested = [(f, d.name) for d in subdirs for f in sorted(d.rglob("*"))
              if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if top and nested:
        raise EdgeDLError(f"{folder} holds images both at its top level and in sub-folders; put every image in a "
                          "class sub-folder (labelled) or all at the top level (unlabelled)")
    if nested:
        return [f for f, _ in nested], [c for _, c in nested]
    if not top:
        raise EdgeDLError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}), at its top level or in sub-folders")
    return top, None


def _natural(name: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def class_ids(names: list[str], model_labels: Any) -> dict[str, int]:
    """Sub-folder name -> class id: its index in the model's labels when all are there, else sorted order."""
    distinct = sorted(set(names), key=_natural)
    if isinstance(model_labels, (list, tuple)) and all(n in model_labels for n in distinct):
        return {n: list(model_labels).index(n) for n in distinct}
    return {n: i for i, n in enumerate(distinct)}


def _pick(count: int, limit: int, seed: int) -> np.ndarray:
    """Which of ``count`` files to read: all, or ``limit`` of them spread by a seeded draw (kept in order)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def _read(path: Path, plan: _Plan, image_module) -> np.ndarray:
    """One image -> float32 (or raw) array (h, w, c) after resize and crop, channels in the plan's order."""
    try:
        with image_module.open(path) as img:
            img = img.convert("L" if plan.order == "gray" else "RGB")
    except Exception as exc:
        raise EdgeDLError(f"cannot read image {path} ({type(exc).__name__}: {exc}); pass jpg/png files") from exc
    bilinear = image_module.Resampling.BILINEAR
    s = plan.settings
    if isinstance(s.resize, int):
        w, h = img.size
        short = min(w, h)
        img = img.resize((max(1, round(w * s.resize / short)), max(1, round(h * s.resize / short))), bilinear)
    elif isinstance(s.resize, tuple):
        img = img.resize((s.resize[1], s.resize[0]), bilinear)
    if s.center_crop is not None:
        ch, cw = _pair(s.center_crop)
        w, h = img.size
        if w < cw or h < ch:  # too small to crop: grow the shorter side first
            grow = max(cw / w, ch / h)
            img = img.resize((max(cw, round(w * grow)), max(ch, round(h * grow))), bilinear)
            w, h = img.size
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    elif plan.target is not None and img.size != (plan.target[1], plan.target[0]):
        img = img.resize((plan.target[1], plan.target[0]), bilinear)
    arr = np.asarray(img)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return arr[:, :, ::-1] if plan.order == "bgr" else arr


def _values(pixels: np.ndarray, spec: TensorSignature, s: ImagePreprocessing) -> np.ndarray:
    """(n, h, w, c) pixels 0..255 -> the input's values: source range, scale, mean/std (float inputs only)."""
    if spec.dtype.kind != "f":
        if any(v is not None for v in (s.scale, s.mean, s.std, s.source_range)):
            raise EdgeDLError(f"input '{spec.name}' is {spec.dtype.name}: it takes raw pixel values, so scale, mean "
                              "and std do not apply; leave them out")
        return pixels.astype(spec.dtype)
    x = pixels.astype(np.float32)
    if s.source_range is not None:
        lo, hi = s.source_range
        x = lo + x * ((hi - lo) / 255.0)
    x = x * np.float32(DEFAULT_SCALE if s.scale is None else s.scale)
    if s.mean is not None:
        x = x - np.asarray(s.mean, np.float32)
    if s.std is not None:
        x = x / np.asarray(s.std, np.float32)
    return x.astype(spec.dtype)


def load_images(spec: DataSpec, signature: Signature, metadata: Mapping[str, Any], options: ImagePreprocessing,
                max_samples: int | None, seed: int) -> Dataset:
    image_module = require("PIL.Image")
    folder = Path(spec.location)
    if not folder.exists():
        raise EdgeDLError(f"image folder not found: {folder}")
    if len(signature.inputs) != 1:
        raise EdgeDLError(f"images feed a model with one input; this one has {len(signature.inputs)} "
                          f"({', '.join(s.name for s in signature.inputs)}): give .npz data or a file.py:function")
    tensor = signature.inputs[0]
    if tensor.batch_axis not in (0, None):
        raise EdgeDLError(f"input '{tensor.name}' is batched on axis {tensor.batch_axis}; images stack on axis 0")
    settings = options.over(ImagePreprocessing.from_metadata(metadata.get("preprocessing")))
    plan = _plan(tensor, signature, settings)
    files, folders = _files(folder)
    chosen = _pick(len(files), len(files) if max_samples is None else max_samples, seed)
    pixels = [_read(files[i], plan, image_module) for i in chosen]
    sizes = {p.shape[:2] for p in pixels}
    if len(sizes) != 1:
        raise EdgeDLError(f"the images in {folder} have {len(sizes)} different sizes and nothing says which size the "
                          "model takes; give a resize to HxW (or a center crop), or the input's shape")
    x = _values(np.stack(pixels), tensor, settings)
    if plan.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    elif plan.layout == "nhw":
        x = x[..., 0]
    labels, details = None, {"preprocessing": {**settings.to_json(), "layout": plan.layout.upper(),
                                               "channel_order": plan.order.upper(),
                                               "size": list(x.shape[2:] if plan.layout == "nchw" else x.shape[1:3])}}
    if folders is not None:
        ids = class_ids(folders, metadata.get("labels"))
        labels = np.array([ids[folders[i]] for i in chosen], dtype=np.int64)
        details["classes"] = ids
    if tensor.batch_axis is None:  # a model that takes one image without a batch axis
        if len(x) != 1:
            raise EdgeDLError(f"input '{tensor.name}' has no batch axis, so it takes one image; {folder} has "
                              f"{len(x)}: pass one image file")
        x = x[0]
    described = f"{len(chosen)} image(s) from {folder}" + (f" in {len(details['classes'])} class folders"
                                                          if folders is not None else "")
    if len(chosen) < len(files):
        described += f" (of {len(files)})"
    return Dataset.from_arrays(signature, {tensor.name: x}, labels, "images", described, details)
