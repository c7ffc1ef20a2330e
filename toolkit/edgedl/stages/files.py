"""Writing artifacts so that a failure never leaves a half-written file or clobbers the previous one, and finding
out that an output cannot be written before the work that produces it, not after."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from edgedl.errors import EdgeDLError


def writable_output(output: Path, what: str = "output", directory: bool = False) -> Path:
    """Refuse an output path that cannot be written, before any long work: its folder is read-only (a read-only
    file system, permissions), a file stands where a folder must be, or it is a directory where a file goes
    (``directory``: the output is a directory). Tries a real write - permission bits alone say nothing about a
    read-only mount or root - in the nearest folder that exists; creates nothing that stays."""
    output = Path(output)
    if output.is_dir() and not directory:
        raise EdgeDLError(f"{what} {output} is a directory; give a file path")
    if output.exists() and not output.is_dir() and directory:
        raise EdgeDLError(f"{what} {output} is a file; give a directory path")
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise EdgeDLError(f"cannot write {what} {output}: {folder} is a file, not a directory; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgedl-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EdgeDLError(f"cannot write {what} {output}: {exc.strerror or exc} in {folder}; choose a writable path "
                          "(nothing was done)") from None
    return output


def fresh_output_dir(output: Path) -> Path:
    """Refuse an output directory that holds something: a new artifact never overwrites or merges into one."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise EdgeDLError(f"{output} already exists and is not empty; choose another -o or remove it (nothing was written)")
    return output


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
