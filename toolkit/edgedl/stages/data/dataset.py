"""``Dataset``: samples for one model, in chunks aligned along each input's batch axis, with optional labels.

A chunk is what one source produced in one piece (all the images of a folder, one .npz file, one batch a user
function yielded); chunks of one dataset may differ in their non-batch sizes (text lines of different widths), so
batches never cross a chunk. numpy and edgedl.runtime only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import Signature


@dataclass(frozen=True)
class Batch:
    """One batch of the data protocol: ``{input_name: ndarray}`` plus the labels of its samples, if any."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None
    samples: int


@dataclass(frozen=True)
class Chunk:
    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None  # one per sample (axis 0), any dtype; None = unlabelled
    samples: int


def _take_labels(labels: np.ndarray | None, index) -> np.ndarray | None:
    return None if labels is None else labels[index]


@dataclass(frozen=True)
class Dataset:
    """Samples from one source. ``kind`` is the source's kind (``synthetic`` data is a weaker check);
    ``source`` says where they came from, ``details`` how they were made (preprocessing, class names)."""

    signature: Signature
    chunks: tuple[Chunk, ...]
    kind: str
    source: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, signature: Signature, arrays: Mapping[str, np.ndarray], labels, kind: str, source: str,
                    details: Mapping[str, Any] | None = None) -> "Dataset":
        return cls(signature, (make_chunk(signature, arrays, labels, source),), kind, source, details or {})

    def __len__(self) -> int:
        return sum(c.samples for c in self.chunks)

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    @property
    def labelled(self) -> bool:
        return bool(self.chunks) and all(c.labels is not None for c in self.chunks)

    @property
    def integer_labels(self) -> bool:
        """Labels that are class ids (what top-1 accuracy needs); other labels (text, boxes) go to a user metric."""
        return self.labelled and all(c.labels.dtype.kind in "iu" for c in self.chunks)

    def batches(self, batch_size: int, exact: bool = False) -> Iterator[Batch]:
        """The data protocol: batches of at most ``batch_size`` samples along each input's batch axis.
        ``exact``: every batch holds exactly ``batch_size`` samples (a model fixed at that batch); a chunk's
        remainder is left out, and a chunk smaller than one batch is repeated to fill it."""
        if batch_size < 1:
            raise EdgeDLError(f"batch size must be >= 1, got {batch_size}")
        for chunk in self.chunks:
            n = chunk.samples
            if exact and n < batch_size:
                index = np.arange(batch_size) % n
                yield Batch(self.signature.take(chunk.inputs, index), _take_labels(chunk.labels, index), batch_size)
                continue
            stop = n - n % batch_size if exact else n
            for start in range(0, stop, batch_size):
                where = slice(start, min(start + batch_size, n))
                yield Batch(self.signature.take(chunk.inputs, where), _take_labels(chunk.labels, where),
                            where.stop - where.start)

    def arrays(self) -> dict[str, np.ndarray]:
        """The first chunk's inputs (e.g. to time a model on real sizes)."""
        return dict(self.chunks[0].inputs)

    def head(self, n: int) -> "Dataset":
        """The first ``n`` samples."""
        chunks, left = [], n
        for chunk in self.chunks:
            if left <= 0:
                break
            k = min(left, chunk.samples)
            chunks.append(Chunk(self.signature.take(chunk.inputs, slice(0, k)), _take_labels(chunk.labels, slice(0, k)),
                                k))
            left -= k
        return Dataset(self.signature, tuple(chunks), self.kind, self.source, self.details)

    def split(self, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Two disjoint halves, drawn by a seeded permutation inside each chunk (so both halves see every
        class of a folder); single-sample chunks go to the halves in turn."""
        rng = np.random.default_rng(seed)
        first, second, turn = [], [], 0
        for chunk in self.chunks:
            if chunk.samples == 1:
                (first if turn % 2 == 0 else second).append(chunk)
                turn += 1
                continue
            order = rng.permutation(chunk.samples)
            half = (chunk.samples + 1) // 2
            for part, index in ((first, np.sort(order[:half])), (second, np.sort(order[half:]))):
                part.append(Chunk(self.signature.take(chunk.inputs, index), _take_labels(chunk.labels, index),
                                  len(index)))
        return tuple(Dataset(self.signature, tuple(part), self.kind,
                             f"{sum(c.samples for c in part)} of {self.source}", self.details)
                     for part in (first, second))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "samples": len(self), "labelled": self.labelled,
                **({"details": dict(self.details)} if self.details else {})}


def make_chunk(signature: Signature, arrays: Mapping[str, np.ndarray], labels, where: str) -> Chunk:
    """Check arrays against the model's inputs (names, rank, dtype: cast when safe) and align the labels."""
    names = [s.name for s in signature.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EdgeDLError(f"{where} has no array for input(s) {', '.join(missing)} (it holds "
                          f"{', '.join(arrays) or 'nothing'}); give one array per model input, named like the input")
    inputs = {}
    for s in signature.inputs:
        arr = np.asarray(arrays[s.name])
        if arr.dtype != s.dtype:
            if not np.can_cast(arr.dtype, s.dtype, casting="same_kind"):
                raise EdgeDLError(f"{where}: array '{s.name}' is {arr.dtype}, the model wants {s.dtype}; "
                                  f"give it as {s.dtype}")
            arr = arr.astype(s.dtype)
        if arr.ndim != len(s.shape):
            axis = f"batch on axis {s.batch_axis}" if s.batched else "not batched"
            raise EdgeDLError(f"{where}: array '{s.name}' has shape {list(arr.shape)}, the model wants rank "
                              f"{len(s.shape)} {list(s.shape)} ({axis})")
        for axis, dim in enumerate(s.shape):
            if isinstance(dim, int) and axis != s.batch_axis and arr.shape[axis] != dim:
                raise EdgeDLError(f"{where}: array '{s.name}' has shape {list(arr.shape)}; the model fixes axis {axis} "
                                  f"at {dim} {list(s.shape)}")
        inputs[s.name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # (which makes 0-d 1-d)
    samples = signature.samples(inputs)
    if samples == 0:
        raise EdgeDLError(f"{where} holds no samples (a batch axis of size 0)")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = labels.reshape(1)
        if len(labels) != samples:
            raise EdgeDLError(f"{where}: {len(labels)} labels for {samples} samples; give one label per sample")
    return Chunk(inputs, labels, samples)
