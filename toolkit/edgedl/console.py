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


# a log file (stderr not a terminal) gets a plain line per step of a long run, at most one per this many seconds
LINE_INTERVAL_S = 10.0


@contextlib.contextmanager
def progress(description: str, total: int | None, enabled: bool = True, lines: bool = False) -> Iterator:
    """A progress bar on stderr; yields ``advance(n=1, info=None)``. Silent when disabled. When stderr is not a
    terminal (a log file, a pipe) the bar would show nothing: with ``lines``, a long run prints plain lines instead
    (``description: done/total info (elapsed)``, at most one per LINE_INTERVAL_S, none in a run shorter than that)."""
    if not enabled:
        yield lambda *a, **k: None
        return
    if lines and not sys.stderr.isatty():
        import time

        start = last = time.monotonic()
        state = {"done": 0, "info": ""}

        def line(n: int = 1, info: str | None = None) -> None:
            nonlocal last
            state["done"] += n
            state["info"] = info if info is not None else state["info"]
            now = time.monotonic()
            if now - last >= LINE_INTERVAL_S:
                last = now
                of = f"/{total}" if total else ""
                print(f"{description}: {state['done']}{of} done{', ' + state['info'] if state['info'] else ''} "
                      f"({now - start:.0f} s)", file=sys.stderr, flush=True)

        yield line
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
