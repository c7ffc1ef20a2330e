"""Shared by the bench_* scripts: find (or build) the trained, exported zoo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO = ("mlp", "cnn", "lstm", "transformer")


def has_zoo(directory: Path) -> bool:
    return all((directory / f"{m}.onnx").is_file() for m in ZOO)


def find_or_build_zoo(directory: Path | None = None) -> Path:
    """A directory with the four exported zoo models: the given one, the newest test cache, or build/bench-zoo."""
    if directory is not None:
        if not has_zoo(directory):
            build_zoo(directory)
        return directory
    cached = sorted((d for d in (ROOT / "build" / "test-zoo").glob("*") if d.is_dir() and has_zoo(d)),
                    key=lambda d: max((d / f"{m}.onnx").stat().st_mtime for m in ZOO))
    if cached:
        return cached[-1]
    target = ROOT / "build" / "bench-zoo"
    build_zoo(target)
    return target


def build_zoo(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in ZOO:
        if (target / f"{name}.onnx").is_file():
            continue
        for args in (["train", name, "--out", str(target / name)],
                     ["export", name, "--checkpoint", str(target / name), "-o", str(target / f"{name}.onnx")]):
            subprocess.run([sys.executable, "-m", "edgedl", *args], check=True)
