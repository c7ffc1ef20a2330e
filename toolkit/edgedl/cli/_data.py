"""One option group for calibration and evaluation data, shared by every command that feeds a model real data
(quantize now; debug and optimize later), as ``_shapes`` is for sizes:

    --data SOURCE          both roles: a folder of images (sub-folders = classes), an image, FILE.npz/.npy,
                           a recipe, path/to/file.py:function, or synthetic
    --calibration SOURCE   calibration only          --eval SOURCE   evaluation only
    --resize N|HxW  --center-crop N|HxW  --layout NCHW|NHWC|NHW  --channel-order RGB|BGR|GRAY
    --scale F  --mean A,B,C  --std A,B,C       image preprocessing over the model's own (metadata)
    --max-samples N                           samples read from each source

The command gets one ``data_options: DataOptions`` argument.
"""

from __future__ import annotations

import functools
from typing import Callable

import click

_SOURCE_HELP = ("a folder of images (sub-folders name the classes), an image, FILE.npz/.npy (one array per input, "
                "optional 'labels'), a recipe, path/to/file.py:function yielding batches, or synthetic")


def data_options_from(data=None, calibration=None, evaluation=None, resize=None, center_crop=None, layout=None,
                      channel_order=None, scale=None, mean=None, std=None, max_samples=None):
    from edgedl.stages.data import DataOptions, DataSpec, ImagePreprocessing

    def spec(text):
        return None if text is None else DataSpec.parse(text)

    return DataOptions(data=spec(data), calibration=spec(calibration), evaluation=spec(evaluation),
                       preprocessing=ImagePreprocessing(resize=resize, center_crop=center_crop, layout=layout,
                                                        channel_order=channel_order, scale=scale, mean=mean, std=std),
                       max_samples=max_samples)


def data_options(fn: Callable) -> Callable:
    """Add the data options; the command receives one ``data_options: DataOptions`` argument instead."""

    @click.option("--data", "data", metavar="SOURCE",
                  help=f"Calibration and evaluation data: {_SOURCE_HELP} [default: the model's recipe, else "
                       "synthetic inputs, a weaker check].")
    @click.option("--calibration", "calibration", metavar="SOURCE", help="Calibration data only (same forms).")
    @click.option("--eval", "evaluation", metavar="SOURCE", help="Evaluation data only (same forms).")
    @click.option("--resize", metavar="N|HxW", help="Images: shorter side to N, or exactly HxW.")
    @click.option("--center-crop", metavar="N|HxW", help="Images: center crop after resizing.")
    @click.option("--layout", metavar="NCHW|NHWC|NHW", help="Images: input layout [default: from the input's shape].")
    @click.option("--channel-order", metavar="RGB|BGR|GRAY", help="Images: channel order [default: RGB].")
    @click.option("--scale", metavar="F", help="Images: pixel scale, e.g. 1/255 [default: the model's, else 1/255].")
    @click.option("--mean", metavar="A[,B,C]", help="Images: per-channel mean subtracted after scaling.")
    @click.option("--std", metavar="A[,B,C]", help="Images: per-channel std divided by after the mean.")
    @click.option("--max-samples", type=int, metavar="N",
                  help="Samples read from each source [default: all of a file or recipe, 256 images, 1024 samples "
                       "from a function, 64 synthetic].")
    @functools.wraps(fn)
    def wrapper(*args, data, calibration, evaluation, resize, center_crop, layout, channel_order, scale, mean, std,
                max_samples, **kwargs):
        options = data_options_from(data, calibration, evaluation, resize, center_crop, layout, channel_order, scale,
                                    mean, std, max_samples)
        return fn(*args, data_options=options, **kwargs)

    return wrapper
