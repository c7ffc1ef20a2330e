"""One option group for sizes, batch axes and value ranges, shared by export, inspect, bench, quantize, serve and
package (one definition, many commands, as Polygraphy's argument groups):

    --shape DIM=SIZE              a named dynamic dim            (--shape seq=128)
    --input-shape INPUT=D0xD1...  a whole input, batch included  (--input-shape x=1x3x48x192; 'scalar' for rank 0)
    --batch-axis INPUT=AXIS|none  which axis is the batch        (--batch-axis state=1 --batch-axis sr=none)
    --input-range INPUT=LO..HI    values of synthetic inputs     (--input-range sr=16000..16000)
"""

from __future__ import annotations

import re
from typing import Callable

import click

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import ShapeOptions

_NAME = r"[^\s=]+"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def parse_dim(text: str) -> tuple[str, int]:
    m = re.fullmatch(rf"\s*({_NAME})\s*=\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1:
        raise EdgeDLError(f"--shape takes DIM=SIZE for a named dynamic dim (e.g. seq=128), got '{text}'; for a whole "
                          "input (unnamed dims too) use --input-shape INPUT=D0xD1x...")
    return m.group(1), int(m.group(2))


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    m = re.fullmatch(rf"\s*({_NAME})\s*=\s*(scalar|\d+(?:x\d+)*)\s*", text)
    if not m:
        raise EdgeDLError(f"--input-shape takes INPUT=D0xD1x... with every dim, batch included (e.g. x=1x3x48x192, "
                          f"or sr=scalar), got '{text}'")
    dims = () if m.group(2) == "scalar" else tuple(int(d) for d in m.group(2).split("x"))
    return m.group(1), dims


def parse_batch_axis(text: str) -> tuple[str, int | None]:
    m = re.fullmatch(rf"\s*({_NAME})\s*=\s*(\d+|none)\s*", text)
    if not m:
        raise EdgeDLError(f"--batch-axis takes NAME=AXIS or NAME=none (e.g. state=1, sr=none), got '{text}'")
    return m.group(1), None if m.group(2) == "none" else int(m.group(2))


def parse_value_range(text: str) -> tuple[str, tuple[float, float]]:
    m = re.fullmatch(rf"\s*({_NAME})\s*=\s*({_NUMBER})\s*\.\.\s*({_NUMBER})\s*", text)
    if not m or float(m.group(2)) > float(m.group(3)):
        raise EdgeDLError(f"--input-range takes INPUT=LOW..HIGH, inclusive, LOW <= HIGH (e.g. ids=0..30521, "
                          f"sr=16000..16000), got '{text}'")
    return m.group(1), (float(m.group(2)), float(m.group(3)))


def _unique(pairs: list[tuple[str, object]], option: str) -> dict:
    out: dict = {}
    for name, value in pairs:
        if name in out and out[name] != value:
            raise EdgeDLError(f"{option} gives '{name}' twice ({out[name]} and {value}); give it once")
        out[name] = value
    return out


def shape_options_from(shapes=(), input_shapes=(), batch_axes=(), input_ranges=()) -> ShapeOptions:
    return ShapeOptions(dims=_unique([parse_dim(s) for s in shapes], "--shape"),
                        input_shapes=_unique([parse_input_shape(s) for s in input_shapes], "--input-shape"),
                        batch_axes=_unique([parse_batch_axis(s) for s in batch_axes], "--batch-axis"),
                        value_ranges=_unique([parse_value_range(s) for s in input_ranges], "--input-range"))


def shape_options(fn: Callable) -> Callable:
    """Add the four options; the command receives one ``shape_options: ShapeOptions`` argument instead."""
    import functools

    @click.option("--shape", "shapes", multiple=True, metavar="DIM=SIZE",
                  help="Size of a named dynamic dim (default: the sizes `edgedl export` validated).")
    @click.option("--input-shape", "input_shapes", multiple=True, metavar="INPUT=D0xD1...",
                  help="Whole shape of an input, batch included; covers dims the model leaves unnamed.")
    @click.option("--batch-axis", "batch_axes", multiple=True, metavar="NAME=AXIS|none",
                  help="Which axis of an input/output is the batch, or none (default: from the model).")
    @click.option("--input-range", "input_ranges", multiple=True, metavar="INPUT=LO..HI",
                  help="Value range of synthetic data for an input, inclusive.")
    @functools.wraps(fn)
    def wrapper(*args, shapes, input_shapes, batch_axes, input_ranges, **kwargs):
        return fn(*args, shape_options=shape_options_from(shapes, input_shapes, batch_axes, input_ranges), **kwargs)

    return wrapper
