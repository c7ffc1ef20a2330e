"""Writing artifacts so that a failure never leaves a half-written file or clobbers the previous one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(output: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``output``; if the block succeeds, move it into place (with ordinary file
    permissions, not mkstemp's 0600); if it raises, remove it and leave ``output`` as it was."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=output.suffix + ".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output_dir(output: Path) -> Iterator[Path]:
    """Yield a staging directory next to ``output`` (which must be absent or empty); if the block succeeds, make
    it world-readable (mkdtemp makes 0700; a device's service user must read it) and rename it to ``output``;
    if it raises, remove it and leave ``output`` as it was."""
    import shutil

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield staging
        for d in (staging, *(p for p in staging.rglob("*") if p.is_dir())):
            d.chmod(0o755)
        if output.exists():
            output.rmdir()
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
