"""Data for any model, labelled or not: the one data protocol for calibration, evaluation and, later, debugging.

A source is named by a ``DataSpec`` and read into a ``Dataset``: chunks of ``{input_name: ndarray}`` arrays,
aligned along each input's batch axis (``edgedl.runtime.signature.Signature``; unbatched inputs such as a scalar
sample rate pass through whole), plus optional labels. ``Dataset.batches(n)`` is the protocol every consumer reads.

Sources, one module each, dispatched through ``SOURCES`` (``load.py``):
``images`` (a folder of jpg/png, preprocessing from the model's metadata or options, labels from sub-folder names),
``arrays`` (.npz/.npy), ``recipe`` (the zoo's data), ``python`` (``file.py:function`` yielding batches) and
``synthetic`` (seeded inputs from the declared value ranges; reported as a weaker check).
``plan.py`` decides which source serves calibration and which evaluation (``DataOptions`` -> ``DataPlan``).
Importing this package is cheap: Pillow loads only when a folder of images is read.
"""

from edgedl.stages.data.dataset import Batch, Chunk, Dataset
from edgedl.stages.data.images import ImagePreprocessing
from edgedl.stages.data.load import SOURCES, load_data
from edgedl.stages.data.plan import DataOptions, DataPlan, plan_data
from edgedl.stages.data.spec import DataSpec

__all__ = ["SOURCES", "Batch", "Chunk", "DataOptions", "DataPlan", "DataSpec", "Dataset", "ImagePreprocessing",
           "load_data", "plan_data"]
