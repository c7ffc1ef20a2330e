"""The evaluation cache, as Olive's engine caches each pass run by (pass, config, input): built model files and
JSON records of accuracy and timing, keyed by what they depend on (the candidate's knobs, the model's and the
data's hashes, the device), so that a re-run or a widened search reuses every piece of work.

Each record keeps the seconds the work cost when it was done; the search charges a cached record that cost again,
so a re-run walks the same path through the budget, makes the same decisions, and only its wall time shrinks.

Layout under the root (``$EDGEDL_CACHE/optimize``, else ``~/.cache/edgedl/optimize``)::

    MODEL/artifacts/KEY.onnx, KEY.json     built model files and how they were built
    MODEL/evaluations/DATA/KEY.json        the accuracy gate's measurements
    MODEL/timings/DEVICE/KEY.json          bench worker results
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


SCHEMA = 1


def cache_dir(explicit: Path | None = None) -> Path:
    from edgedl.stages.resources import cache_root

    return Path(explicit) if explicit else cache_root() / "optimize"


@dataclass
class Cache:
    """JSON records and model files under ``root``; counts what was found and what was new (for the report).
    ``enabled=False`` (``--no-cache``) never reads a record back."""

    root: Path
    enabled: bool = True
    hits: int = 0
    misses: int = 0

    def path(self, *parts: str, suffix: str = ".json") -> Path:
        return self.root.joinpath(*parts[:-1], parts[-1] + suffix)

    def get(self, *parts: str) -> dict[str, Any] | None:
        if not self.enabled:
            self.misses += 1
            return None
        path = self.path(*parts)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            self.misses += 1
            return None
        self.hits += 1
        return record

    def put(self, record: dict[str, Any], *parts: str) -> dict[str, Any]:
        """Write a record (also when disabled: the root is then a scratch directory nothing reads back)."""
        record = {**record, "schema": SCHEMA}
        self._write(self.path(*parts), json.dumps(record, default=str).encode())
        return record

    def artifact(self, *parts: str) -> Path:
        """Where a built model file lives (write it with ``store``)."""
        return self.path(*parts, suffix=".onnx")

    def store(self, source: Path, *parts: str) -> Path:
        target = self.artifact(*parts)
        self._write(target, Path(source).read_bytes())
        return target

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Atomic: a reader (or a second run at the same time) never sees half a record."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
