"""Synthetic inputs: seeded values in each input's declared value range, at the sizes the model's ``Signature``
knows (options, else what export validated at). Unlabelled, and a weaker check than real data: quantization
scales fitted to uniform noise are not the scales real inputs need."""

from __future__ import annotations

from edgedl.runtime.signature import Signature
from edgedl.stages.data.dataset import Dataset, make_chunk

SAMPLES = 64  # when not told


def load_synthetic(signature: Signature, max_samples: int | None, seed: int) -> Dataset:
    want = SAMPLES if max_samples is None else max_samples
    dynamic = any(s.batched and isinstance(s.shape[s.batch_axis], str) for s in signature.inputs)
    # a model fixed at a batch (or not batched at all) gets several draws of that batch
    batch = want if dynamic else signature.fixed_batch or 1
    chunks, total = [], 0
    while total < want:
        chunk = make_chunk(signature, signature.feeds(batch, seed + len(chunks)), None, "synthetic data")
        chunks.append(chunk)
        total += chunk.samples
    details = {"value_ranges": {s.name: list(s.value_range) for s in signature.inputs},
               "shapes": {k: list(v.shape) for k, v in chunks[0].inputs.items()}}
    return Dataset(signature, tuple(chunks), "synthetic", f"{total} synthetic sample(s), seed {seed}", details)
