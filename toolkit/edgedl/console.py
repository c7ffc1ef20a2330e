"""Human-facing output: a rich console on stderr for progress and logs, stdout kept for results/JSON."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def out_console():
    from rich.console import Console

    return Console(highlight=False)


@contextlib.contextmanager
def progress(description: str, total: int | None, enabled: bool = True) -> Iterator:
    """A progress bar on stderr; yields ``advance(n=1, **fields)``. Silent when disabled or not a TTY-less run."""
    if not enabled:
        yield lambda *a, **k: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=err_console(), transient=not sys.stderr.isatty(),
    )
    with bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            bar.update(task, advance=n, **({"info": info} if info is not None else {}))

        yield advance
