"""``DataSpec``: one data source as the user names it, and how its kind is told from the name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgedl.errors import EdgeDLError

KINDS = ("images", "arrays", "recipe", "python", "synthetic")
SYNTHETIC_WORDS = ("synthetic", "none")
ARRAY_SUFFIXES = (".npz", ".npy")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FORMS = ("a folder of images (sub-folders name the classes), an image file, FILE.npz/.npy, a recipe (file or zoo "
         "name), path/to/file.py:function, or synthetic")


@dataclass(frozen=True)
class DataSpec:
    """``kind``: one of ``KINDS``; ``location``: the folder, file, recipe, ``file.py:function``, or '' (synthetic)."""

    kind: str
    location: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EdgeDLError(f"unknown data source kind '{self.kind}'; choose one of {', '.join(KINDS)}")

    @classmethod
    def parse(cls, text: str) -> "DataSpec":
        """Tell the kind from the form: ``synthetic``/``none``; ``file.py:function``; a folder; an image file;
        ``.npz``/``.npy``; anything else is a recipe (a ``.py`` file or a zoo name)."""
        text = str(text).strip()
        if not text:
            raise EdgeDLError(f"empty data source; pass {FORMS}")
        if text.lower() in SYNTHETIC_WORDS:
            return cls("synthetic")
        head, sep, name = text.rpartition(":")
        if sep and head.endswith(".py"):
            if not name.isidentifier():
                raise EdgeDLError(f"'{name}' in '{text}' is not a function name; pass path/to/file.py:function")
            return cls("python", text)
        path = Path(text)
        if path.is_dir():
            return cls("images", text)
        suffix = path.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            return cls("arrays", text)
        if suffix in IMAGE_SUFFIXES:
            return cls("images", text)
        if path.exists() and suffix != ".py":
            raise EdgeDLError(f"{text} is not a data source edgedl reads; pass {FORMS}")
        return cls("recipe", text)

    def describe(self) -> str:
        return "synthetic inputs" if self.kind == "synthetic" else f"{self.kind} {self.location}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "location": self.location}
