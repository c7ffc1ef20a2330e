"""``path/to/file.py:function``: a user function that yields batches.

The function takes no arguments and yields (or returns a list of) batches, each either ``{input_name: array}`` or
``({input_name: array}, labels)``; a ``labels`` entry in the dict is taken as the labels unless the model has an
input of that name. Batches are read until ``max_samples`` samples are in. Each batch stays a chunk of its own,
so batches may differ in their non-batch sizes (text lines of different widths).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Mapping

from edgedl.errors import EdgeDLError
from edgedl.runtime.signature import Signature
from edgedl.stages.data.dataset import Dataset, make_chunk
from edgedl.stages.data.spec import DataSpec

LABELS = "labels"


def load_function(target: str, what: str) -> Callable:
    """Import ``path/to/file.py:name`` and return the callable (a user data source or metric)."""
    from edgedl.recipe import import_file

    file, sep, name = str(target).rpartition(":")
    if not sep or not file.endswith(".py") or not name.isidentifier():
        raise EdgeDLError(f"{what} '{target}' is not path/to/file.py:function")
    path = Path(file)
    if not path.is_file():
        raise EdgeDLError(f"{what} file not found: {path}")
    module = import_file(path.resolve())
    fn = getattr(module, name, None)
    if fn is None:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise EdgeDLError(f"{path} defines no '{name}'; its functions: {', '.join(names) or 'none'}")
    if not callable(fn):
        raise EdgeDLError(f"'{name}' in {path} is not a function")
    return fn


def _split_batch(item: Any, names: set[str], where: str) -> tuple[Mapping, Any]:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Mapping):
        return item[0], item[1]
    if isinstance(item, Mapping):
        if LABELS in item and LABELS not in names:
            return {k: v for k, v in item.items() if k != LABELS}, item[LABELS]
        return item, None
    raise EdgeDLError(f"{where} yielded a {type(item).__name__}; yield {{input_name: array}} or "
                      "({input_name: array}, labels)")


def load_python(spec: DataSpec, signature: Signature, max_samples: int | None) -> Dataset:
    fn = load_function(spec.location, "data function")
    where = spec.location
    if any(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
           for p in inspect.signature(fn).parameters.values()):
        raise EdgeDLError(f"{where} takes arguments; a data function takes none and yields batches")
    names = {s.name for s in signature.inputs}
    chunks, total = [], 0
    try:
        for index, item in enumerate(fn()):
            inputs, labels = _split_batch(item, names, where)
            chunk = make_chunk(signature, inputs, labels, f"{where} batch {index}")
            chunks.append(chunk)
            total += chunk.samples
            if max_samples is not None and total >= max_samples:
                break
    except EdgeDLError:
        raise
    except TypeError as exc:
        if "not iterable" in str(exc):
            raise EdgeDLError(f"{where} returned no batches; make it yield {{input_name: array}} batches") from exc
        raise EdgeDLError(f"{where} failed: TypeError: {exc}") from exc
    except Exception as exc:
        raise EdgeDLError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
    if not chunks:
        raise EdgeDLError(f"{where} yielded no batches")
    labelled = {c.labels is not None for c in chunks}
    if len(labelled) != 1:
        raise EdgeDLError(f"{where} yielded labels with some batches only; give labels with every batch or none")
    dataset = Dataset(signature, tuple(chunks), "python", f"{where} ({total} samples in {len(chunks)} batches)")
    return dataset.head(max_samples) if max_samples is not None and total > max_samples else dataset
