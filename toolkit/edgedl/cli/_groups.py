"""Reusable option groups (as Polygraphy's ``tools/args``): one definition of a group of options, used by every
command that needs them. A group adds its options to a click command and hands the command one value built from
them instead of the options one by one (``_shapes`` and ``_data`` are groups of this kind too)."""

from __future__ import annotations

import functools
from typing import Any, Callable


def option_group(name: str, options: list[Callable], build: Callable[..., Any]) -> Callable:
    """A decorator adding ``options`` (click.option decorators) to a command; the command gets ``name=build(...)``
    called with those options' values (by their parameter names) in their place."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            import inspect

            params = inspect.signature(build).parameters
            mine = {k: kwargs.pop(k) for k in list(kwargs) if k in params}
            return fn(*args, **{name: build(**mine)}, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate
