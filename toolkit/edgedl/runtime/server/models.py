"""Loaded models and how they execute: inline on the event loop, on worker threads, or through a dynamic
batcher; and the registry that maps name/version to a loaded model and swaps reloads in atomically."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from time import perf_counter

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.runner import Runner, RunnerConfig
from edgedl.runtime.server import alarms
from edgedl.runtime.server.config import ServerConfig, model_limits
from edgedl.runtime.server.metrics import ServerMetrics
from edgedl.runtime.server.protocol import (HTTPError, HeaderPlans, InferRequest, bytes_elements,
                                           parse_infer_document, parse_infer_request)
from edgedl.runtime.server.pbtxt import first
from edgedl.runtime.server.repository import BatchPolicy, ModelSource, discover, override_source
from edgedl.runtime.signature import Signature, options_per_model
from edgedl.runtime.timing import measure

log = logging.getLogger("edgedl.serve")
# a large batch runs in pieces of this much input: onnxruntime keeps the memory of its largest run's intermediate
# results (a CNN's first layer alone can be 32x its input), so pieces the size of a small request keep that small
RUN_INPUT_BYTES = 16 * 1024


class _Pending:
    __slots__ = ("feeds", "rows", "signature", "future", "enqueued")

    def __init__(self, feeds, rows, signature, future, enqueued):
        self.feeds, self.rows, self.signature, self.future, self.enqueued = feeds, rows, signature, future, enqueued


class _Busy:
    """The context manager of ``ServedModel.busy`` (a class, not a generator: it runs on every request)."""

    __slots__ = ("model", "metrics")

    def __init__(self, model: ServedModel, metrics: ServerMetrics):
        self.model, self.metrics = model, metrics

    def __enter__(self) -> None:
        model = self.model
        model.in_flight += 1
        self.metrics.in_flight.inc((model.name,), 1)

    def __exit__(self, *exc) -> None:
        model = self.model
        model.in_flight -= 1
        self.metrics.in_flight.inc((model.name,), -1)


class Timing:
    """The seconds one request spent: waiting, and in the run that served it (preparing its inputs, in
    onnxruntime, taking its outputs apart), and the rows of that run."""

    __slots__ = ("queue", "input", "infer", "output", "rows")

    def __init__(self, queue: float, input: float, infer: float, output: float, rows: int):
        self.queue, self.input, self.infer, self.output, self.rows = queue, input, infer, output, rows


@dataclass
class Stats:
    """Per-version counters for the statistics extension, as Triton keeps them (nanoseconds): requests
    (success, fail, and the queue / compute times of the successful ones, each with its run's times), the
    inferences they held (rows), and per batch size the runs (executions) and their times."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    inferences: int = 0
    executions: int = 0
    last_ms: int = 0
    batches: dict = field(default_factory=dict)  # rows of a run -> [runs, input ns, infer ns, output ns]

    def executed(self, rows: int, input_s: float, infer_s: float, output_s: float) -> None:
        self.executions += 1
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = [0, 0, 0, 0]
        batch[0] += 1
        batch[1] += int(input_s * 1e9)
        batch[2] += int(infer_s * 1e9)
        batch[3] += int(output_s * 1e9)


class ServedModel:
    """One loaded model version: its Runner, its execution mode and its queue."""

    def __init__(self, source: ModelSource, version: int, config: ServerConfig):
        t0 = perf_counter()
        self.name, self.version, self.path = source.name, str(version), source.versions[version]
        self.policy: BatchPolicy = source.policy
        self.source = source
        self.allow_nonfinite = config.allow_nonfinite
        self.limits = model_limits(config.limits, source.config, str(source.config_path))
        runner_config = RunnerConfig(providers=config.providers, allow_fallback=config.allow_fallback,
                                     intra_op_threads=config.intra_op_threads, inter_op_threads=1, spinning=False)
        self.runner = Runner(self.path, runner_config)
        if self.runner.fallbacks:
            log.warning("model %s: requested provider(s) %s are not used; running on %s", self.name,
                        ", ".join(self.runner.fallbacks), ", ".join(self.runner.providers))
        self.inputs = {i.name: i for i in self.runner.inputs}
        self.output_names = list(self.runner.output_names)
        # batch axes and warm-up sizes: options, the model's metadata, then the repository config's hints; the
        # options given for a repository apply to the models that have those names (load_all warns of the rest)
        options = config.shape_options
        if config.model_repository is not None:
            options = options.only_for(self.runner.inputs, self.runner.outputs)
        self.signature = Signature.of_runner(self.runner, options, hints=source.shape_hints)
        self.batchable = self.signature.batchable
        # axis 0 is one row per inference (Triton's max_batch_size > 0; without a config: the inputs' batch axis)
        config_batch = first(source.config, "max_batch_size")
        self.leading_batch = (config_batch > 0 if isinstance(config_batch, int) else
                              bool(self.signature.inputs) and all(s.batch_axis == 0 for s in self.signature.inputs))
        self.row_outputs = frozenset(o.name for o in self.signature.outputs
                                     if self.leading_batch and o.batch_axis == 0)
        self.labels = self._labels(source)
        wants_batching = self.policy.dynamic_batching and self.policy.max_batch_size > 1
        self.batching = wants_batching and self.batchable
        if wants_batching and not self.batchable:
            log.warning("model %s: dynamic batching is OFF - its inputs cannot be stacked safely (%s)", self.name,
                        "; ".join(self.signature.describe() + [o.describe() for o in self.signature.outputs]))
        # warm-up doubles as the timing that picks the execution mode (no extra runs for big models); a model
        # that rejects synthetic inputs is served without warm-up: its own requests are what count. Text (BYTES)
        # inputs are never made up: such a model warms up from the samples its config declares, or not at all
        self.single_ms, self.batch_ms, self.warmup_error = None, None, None
        try:
            example = self._declared_warmup(source)
            if example is None:
                strings = [i.name for i in self.runner.inputs if i.dtype.kind == "O"]
                if strings:
                    raise EdgeDLError(f"its text input {strings[0]} has no declared sample: give one in "
                                      "config.pbtxt's model_warmup (zero_data or input_data_file)")
                example = self.signature.feeds()
            self.single_ms = measure(lambda: self.runner.run(example), warmup=1,
                                     iterations=max(config.warmup_iterations, 1)).p50_ms
            if self.batching:  # a full batch: warms it up, and its time picks where batches run
                full = (example if self.signature.samples(example) >= self.policy.max_batch_size else
                        self.signature.tile(example, self.policy.max_batch_size))
                began = perf_counter()
                self.runner.run(full)
                self.batch_ms = (perf_counter() - began) * 1e3  # one run for a big model (start-up time)...
                if self.batch_ms < 10 * config.inline_below_ms:  # ...a closer look where it decides something
                    self.batch_ms = measure(lambda: self.runner.run(full), warmup=0,
                                            iterations=max(config.warmup_iterations, 1)).p50_ms
        except EdgeDLError as exc:
            self.warmup_error = str(exc)
            log.warning("model %s: served without warm-up (%s); give sizes or value ranges for its inputs "
                        "(or a model_warmup in config.pbtxt) to warm it up", self.name, exc)
        self.inline = (not self.batching and self.policy.instances == 1 and self.single_ms is not None
                       and self.single_ms < config.inline_below_ms)
        # batches run on the event loop too when a full one takes less than a thread hop is worth: every
        # request of the batch waits for it anyway, and the hop (wake a worker, hand the GIL over and back)
        # costs more than such a run
        self.inline_batches = (self.batching and self.policy.instances == 1 and self.batch_ms is not None
                               and self.batch_ms < config.inline_below_ms)
        self.executor = None if self.inline else ThreadPoolExecutor(
            self.policy.instances, thread_name_prefix=f"edgedl-{self.name}")
        self.delay_s = self.policy.max_queue_delay_us / 1e6
        self.max_rows = self.policy.max_batch_size
        self.pending: deque[_Pending] = deque()
        self.pending_rows = 0
        self.waiting = 0  # requests submitted to the worker threads and not started (unbatched mode)
        self.in_flight = 0
        self.header_plans = HeaderPlans()  # binary requests' JSON headers already validated
        self.retired = False
        self.stats = Stats()
        self._workers: list[asyncio.Task] = []
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self.load_s = perf_counter() - t0

    def _declared_warmup(self, source: ModelSource) -> dict[str, np.ndarray] | None:
        """The first model_warmup sample of the config.pbtxt that gives data for every input (Triton's
        ``zero_data``, ``random_data`` or ``input_data_file`` under the model's warmup/ folder), or None."""
        batched = self.leading_batch
        for sample in source.config.get("model_warmup", []):
            rows = int(first(sample, "batch_size", 1) or 1)
            given = {first(item, "key"): first(item, "value") or {} for item in sample.get("inputs", [])}
            if set(given) != set(self.inputs):
                continue
            feeds = {}
            for name, spec in given.items():
                info = self.inputs[name]
                dims = [int(d) for d in spec.get("dims", [])]
                shape = ([rows] if batched else []) + dims
                count = int(np.prod(shape)) if shape else 1
                if first(spec, "input_data_file"):
                    path = source.warmup_file(first(spec, "input_data_file"))
                    try:
                        raw = path.read_bytes()
                    except OSError as exc:
                        raise EdgeDLError(f"cannot read the warm-up sample {path} ({exc.strerror})") from None
                    one = bytes_elements(memoryview(raw), count // max(rows, 1) if batched else count, name) \
                        if info.dtype.kind == "O" else np.frombuffer(raw, info.dtype)
                    value = np.resize(one, count)  # every row of the batch is the file's sample
                elif info.dtype.kind == "O":  # zero_data and random_data: empty strings (made-up text is none)
                    value = np.full(count, "", dtype=object)
                elif first(spec, "random_data"):
                    value = self.signature.feeds().get(name)
                    value = np.resize(value, count).astype(info.dtype) if value is not None else None
                else:
                    value = np.zeros(count, info.dtype)
                if value is None or value.size != count:
                    raise EdgeDLError(f"model_warmup input '{name}' does not hold {count} values for dims {dims}")
                feeds[name] = value.reshape(shape)
            return feeds
        return None

    def _labels(self, source: ModelSource) -> dict[str, list[str]]:
        """Class labels per output for the classification extension: the config's ``label_filename`` (one label
        a line), else the model metadata's ``labels`` for outputs with that many values per row."""
        labels = {}
        for name, path in source.label_files.items():
            try:
                labels[name] = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise EdgeDLError(f"model '{self.name}': cannot read the labels of output '{name}' from {path} "
                                  f"({getattr(exc, 'strerror', None) or exc}); put a UTF-8 file there, one label "
                                  "a line") from None
        meta = self.runner.labels
        if isinstance(meta, list) and meta and all(isinstance(v, str) for v in meta):
            for o in self.runner.outputs:
                per_row = o.shape[1:] if o.name in self.row_outputs else o.shape
                if o.name not in labels and all(isinstance(d, int) for d in per_row) and \
                        int(np.prod(per_row)) == len(meta):
                    labels[o.name] = list(meta)
        return labels

    @property
    def mode(self) -> str:
        if self.batching:
            return (f"batching up to {self.max_rows} rows, {self.policy.max_queue_delay_us} us delay"
                    + (", inline" if self.inline_batches else ""))
        return "inline" if self.inline else f"{self.policy.instances} thread(s)"

    # --- decoding ----------------------------------------------------------------------------------------
    def decode(self, body, header_length: int | None, shared_memory=None) -> InferRequest:
        """One request's body (JSON, JSON + binary tensors, or raw) as this model's feeds, within its limits."""
        limits = self.limits
        return parse_infer_request(body, header_length, self.inputs, self.output_names,
                                   allow_nonfinite=self.allow_nonfinite, max_elements=limits.max_tensor_elements,
                                   max_rows=limits.max_batch_rows, model_name=self.name,
                                   leading_batch=self.leading_batch, shared_memory=shared_memory,
                                   plans=self.header_plans)

    def decode_document(self, doc: dict, binary, shared_memory=None) -> InferRequest:
        """``decode`` of a request given as its JSON document and binary tensors (what gRPC's requests are)."""
        limits = self.limits
        return parse_infer_document(doc, binary, self.inputs, self.output_names,
                                    allow_nonfinite=self.allow_nonfinite, max_elements=limits.max_tensor_elements,
                                    max_rows=limits.max_batch_rows, shared_memory=shared_memory)

    def busy(self, metrics: ServerMetrics) -> _Busy:
        """``with model.busy(metrics):`` a request being decoded, queued or run on this model (a retired model
        waits for it)."""
        return _Busy(self, metrics)

    # --- running -----------------------------------------------------------------------------------------
    def _run(self, feeds, names):
        t0 = perf_counter()
        out = self.runner.run(feeds, names)
        return out, t0, perf_counter()

    async def infer(self, feeds: dict[str, np.ndarray], rows: int, names: list[str] | None,
                    offload: bool = False) -> tuple[dict[str, np.ndarray], Timing]:
        """-> (outputs by name, the request's Timing). ``offload``: never on the event loop (a large request
        to an inline model runs on a worker thread). Every run is counted in ``stats`` (executions)."""
        if self.inline and not offload:
            t0 = perf_counter()
            out = self.runner.run(feeds, names)
            infer_s = perf_counter() - t0
            self.stats.executed(rows if self.leading_batch else 1, 0.0, infer_s, 0.0)
            return out, Timing(0.0, 0.0, infer_s, 0.0, rows)
        if self.batching:
            return await self._submit(feeds, rows, names)
        if self.waiting >= self.policy.max_queue:
            raise HTTPError(503, f"model '{self.name}' has {self.waiting} requests queued (limit "
                                 f"{self.policy.max_queue}); retry later")
        self.waiting += 1
        submitted = perf_counter()
        try:
            out, t0, t1 = await asyncio.get_running_loop().run_in_executor(self.executor, self._run, feeds, names)
        finally:
            self.waiting -= 1
        self.stats.executed(rows if self.leading_batch else 1, 0.0, t1 - t0, 0.0)
        return out, Timing(t0 - submitted, 0.0, t1 - t0, 0.0, rows)

    async def _submit(self, feeds, rows, names):
        if len(self.pending) >= self.policy.max_queue:
            raise HTTPError(503, f"model '{self.name}' has {len(self.pending)} requests queued (limit "
                                 f"{self.policy.max_queue}); retry later")
        loop = asyncio.get_running_loop()
        if not self._workers:
            self._wake, self._full = asyncio.Event(), asyncio.Event()
            self._workers = [loop.create_task(self._worker()) for _ in range(self.policy.instances)]
        rows = self.signature.batch_rows(feeds)
        if rows is None:
            raise HTTPError(400, "the batched inputs of model '" + self.name + "' disagree on the batch size ("
                            + ", ".join(f"{s.name} axis {s.batch_axis}" for s in self.signature.inputs if s.batched)
                            + "); send the same number of rows in each")
        key = []
        for s in self.signature.inputs:
            value = feeds[s.name]
            if s.batched:
                key.append((s.name, value.shape[:s.batch_axis] + value.shape[s.batch_axis + 1:]))
            else:  # unbatched inputs are shared by the whole batch: only equal values may run together
                key.append((s.name, value.shape, value.dtype.str, value.tobytes() if value.nbytes <= 4096 else id(value)))
        item = _Pending(feeds, rows, tuple(key), loop.create_future(), perf_counter())
        self.pending.append(item)
        self.pending_rows += rows
        if self.pending_rows >= self.max_rows:
            self._full.set()
        self._wake.set()
        out, timing = await item.future
        if names is not None:
            out = {n: out[n] for n in names}
        return out, timing

    def _take(self) -> list[_Pending]:
        first = self.pending.popleft()
        batch, rows = [first], first.rows
        if rows < self.max_rows and self.pending:
            keep = deque()
            while self.pending:
                item = self.pending.popleft()
                if item.signature == first.signature and rows + item.rows <= self.max_rows:
                    batch.append(item)
                    rows += item.rows
                    if rows == self.max_rows:
                        keep.extend(self.pending)
                        self.pending.clear()
                        break
                else:
                    keep.append(item)
            self.pending = keep
        self.pending_rows -= rows
        return batch

    def _run_batch(self, batch: list[_Pending]):
        t0 = perf_counter()
        feeds = batch[0].feeds if len(batch) == 1 else self.signature.concat([b.feeds for b in batch])
        t1 = perf_counter()
        out = self.runner.run(feeds)
        return out, t0, t1, perf_counter()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                if self.retired:
                    return
                self._wake.clear()
                await self._wake.wait()
            deadline = self.pending[0].enqueued + self.delay_s
            while self.pending_rows < self.max_rows and perf_counter() < deadline:
                self._full.clear()  # set by a request that fills the batch, or at the deadline
                alarm = alarms.call_at(deadline, self._full.set)  # asyncio's timers: whole milliseconds at best
                try:
                    await self._full.wait()
                finally:
                    alarm.cancel()
            if not self.pending:
                continue
            batch = self._take()
            try:
                out, t0, t1, t2 = (self._run_batch(batch) if self.inline_batches else
                                   await loop.run_in_executor(self.executor, self._run_batch, batch))
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            total = sum(b.rows for b in batch)
            parts = [out] if len(batch) == 1 else self.signature.split_outputs(out, [b.rows for b in batch])
            output_s = perf_counter() - t2
            self.stats.executed(total, t1 - t0, t2 - t1, output_s)  # one execution per batch, as Triton counts
            for item, part in zip(batch, parts):
                if not item.future.done():
                    item.future.set_result((part, Timing(t0 - item.enqueued, t1 - t0, t2 - t1, output_s, total)))
            if self.inline_batches:
                await asyncio.sleep(0)  # let this batch's requests answer before the next one runs

    async def _run_large(self, feeds: dict, rows: int, names):
        """``infer`` of a large request: off the event loop, and a batch of many rows as several runs of
        about RUN_INPUT_BYTES of input each (for a model whose axis 0 is the batch: the same rows out)."""
        step = max(RUN_INPUT_BYTES * rows // max(sum(v.nbytes for v in feeds.values()), 1), 1)
        if rows <= step or not self.batchable or any(v.ndim == 0 or v.shape[0] != rows for v in feeds.values()):
            return await self.infer(feeds, rows, names, offload=True)
        parts, queue_s, infer_s = [], 0.0, 0.0
        for start in range(0, rows, step):
            n = min(step, rows - start)
            out, t = await self.infer({k: v[start:start + n] for k, v in feeds.items()}, n, names, offload=True)
            if any(a.ndim == 0 or a.shape[0] != n for a in out.values()):  # outputs not per row: run it whole
                return await self.infer(feeds, rows, names, offload=True)
            parts.append(out)
            queue_s, infer_s = queue_s + t.queue, infer_s + t.infer
        t0 = perf_counter()
        out = await asyncio.get_running_loop().run_in_executor(
            self.executor, lambda: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        return out, Timing(queue_s, 0.0, infer_s, perf_counter() - t0, rows)

    async def serve(self, request: InferRequest, metrics: ServerMetrics, started: float,
                    large: bool = False) -> tuple[dict[str, np.ndarray], Timing]:
        """Run one decoded request and count it (statistics extension, Prometheus metrics): the path every
        protocol front end shares. ``started``: perf_counter() when the request arrived; ``large``: a large
        request (off the event loop, in pieces). A request that fails here (a full queue, a failed run) is
        counted as failed; one refused while it was decoded is not, as in Triton."""
        try:
            if large:
                out, t = await self._run_large(request.feeds, request.rows, request.output_names)
            else:
                out, t = await self.infer(request.feeds, request.rows, request.output_names)
        except BaseException:
            self.stats.fail += 1
            self.stats.fail_ns += int((perf_counter() - started) * 1e9)
            raise
        labels = (self.name, self.version)
        metrics.queue.observe(labels, t.queue)
        metrics.compute.observe(labels, t.input + t.infer + t.output)
        metrics.batch.observe(labels, t.rows)
        s = self.stats
        s.success += 1
        s.success_ns += int((perf_counter() - started) * 1e9)
        s.queue_ns += int(t.queue * 1e9)
        s.input_ns += int(t.input * 1e9)
        s.infer_ns += int(t.infer * 1e9)
        s.output_ns += int(t.output * 1e9)
        s.inferences += request.rows if self.leading_batch else 1
        s.last_ms = int(time.time() * 1000)
        return out, t

    async def retire(self) -> None:
        """Stop taking work; finish what is queued or running, then free the threads."""
        self.retired = True
        if self._wake is not None:
            self._wake.set()
        while self.in_flight or self.pending:
            await asyncio.sleep(0.01)
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        if self.executor is not None:
            self.executor.shutdown(wait=False)


class ModelVersions:
    __slots__ = ("source", "versions", "latest")

    def __init__(self, source: ModelSource, versions: dict[str, ServedModel]):
        self.source, self.versions = source, versions
        self.latest = versions[str(source.latest)]


class Registry:
    """name -> loaded versions. Lookups are plain dict reads; a reload builds the new models off the event
    loop and swaps them in with one assignment, while requests holding the old model finish on it."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics):
        self.config, self.metrics = config, metrics
        self.models: dict[str, ModelVersions] = {}
        self.failed: dict[str, str] = {}  # repository models that could not be loaded -> why (UNAVAILABLE)
        self.unloaded: dict[str, list[str]] = {}  # models unloaded through the API -> the versions they had
        self._lock: asyncio.Lock | None = None
        self._workdir: Path | None = None  # the files of models loaded with file overrides
        self.polled: dict[str, tuple] = {}  # poll mode: each model's files as last seen

    def _discover(self, only: str | None = None, failures: dict[str, str] | None = None) -> list[ModelSource]:
        c = self.config
        return discover(c.model, c.model_repository, c.batching, c.model_name, only, failures,
                        verify_key=c.verify_key, allow_outside=c.allow_outside_repository)

    def _load(self, sources: list[ModelSource], failures: dict[str, str] | None = None) -> dict[str, ModelVersions]:
        """Load every version of each source; with ``failures``, a model that fails is recorded there and the
        others still load (without it, the first failure raises)."""
        loaded = {}
        for source in sources:
            try:
                versions = {str(v): ServedModel(source, v, self.config) for v in sorted(source.versions)}
            except EdgeDLError as exc:
                if failures is None:
                    raise
                failures[source.name] = str(exc)
                continue
            loaded[source.name] = ModelVersions(source, versions)
        return loaded

    def _publish(self, name: str, entry: ModelVersions | None) -> ModelVersions | None:
        old = self.models.pop(name, None) if entry is None else self.models.get(name)
        if entry is not None:
            self.models[name] = entry
        if old is not None:
            for v in old.versions:
                if entry is None or v not in entry.versions:
                    self.metrics.ready.remove((name, v))
                    self.metrics.load.remove((name, v))
        if entry is not None:
            for v, m in entry.versions.items():
                self.metrics.ready.set((name, v), 1)
                self.metrics.load.set((name, v), round(m.load_s, 6))
        return old

    def load_all(self) -> None:
        """Startup: discover, load and warm up the models to serve (every model, or in explicit model control
        only those named to load, as Triton does). One model file: its errors are the user's to fix (raise). A
        repository: a model that fails is UNAVAILABLE with its reason and the others serve; if none loads,
        raise with every reason."""
        c = self.config
        failures: dict[str, str] | None = {} if c.model_repository is not None else None
        sources = self._discover(failures=failures) if c.loads_everything or c.load_models else []
        if not c.loads_everything:
            unknown = [n for n in c.load_models if n not in {s.name for s in sources} and n not in (failures or {})]
            if unknown:
                raise EdgeDLError(f"model '{unknown[0]}' to load at startup is not in the repository; name a model "
                                  "folder of it")
            sources = [s for s in sources if s.name in c.load_models]
            if failures is not None:
                failures = {n: r for n, r in failures.items() if n in c.load_models}
        for name, entry in self._load(sources, failures).items():
            self._publish(name, entry)
        self.failed = dict(failures or {})
        self.polled = self._snapshot()
        if not self.models and self.failed:
            if len(self.failed) == 1:
                raise EdgeDLError(next(iter(self.failed.values())))
            raise EdgeDLError("no model of the repository could be loaded: " + "; ".join(
                f"{n}: {r}" for n, r in self.failed.items()))
        for name, reason in self.failed.items():
            log.error("model %s: UNAVAILABLE - %s", name, reason)
        if self.config.model_repository is not None and self.config.shape_options:
            try:
                options_per_model(self.config.shape_options, [(m.runner.inputs, m.runner.outputs)
                                                              for e in self.models.values() for m in e.versions.values()])
            except EdgeDLError as exc:
                log.warning("%s: that option applies to no model", exc)

    # --- poll mode ---------------------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, tuple]:
        """Per model (repository folder, or the one model file): the size and mtime of each of its files."""
        c = self.config
        if c.model_repository is None:
            try:
                st = c.model.stat()
            except OSError:
                return {}
            return {c.model_name or c.model.stem: ((c.model.name, st.st_size, st.st_mtime_ns),)}
        out = {}
        try:
            folders = [e for e in os.scandir(c.model_repository) if e.is_dir() and not e.name.startswith(".")]
        except OSError:
            return {}
        for folder in folders:
            files = []
            for root, dirs, names in os.walk(folder.path):
                dirs[:] = [d for d in dirs if not d.startswith(".")] if root == folder.path else []
                for name in names:
                    try:
                        st = os.stat(os.path.join(root, name))
                    except OSError:
                        continue
                    files.append((os.path.relpath(os.path.join(root, name), folder.path), st.st_size, st.st_mtime_ns))
            out[folder.name] = tuple(sorted(files))
        return out

    async def poll(self, interval_s: float) -> None:
        """Triton's poll mode: every ``interval_s``, load models added to the repository, reload those whose
        files changed, unload those removed. A model that fails to load is UNAVAILABLE with its reason (its
        previous version, if any, keeps serving) until its files change again."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            now = await loop.run_in_executor(None, self._snapshot)
            before, self.polled = self.polled, now
            for name in sorted(set(before) | set(now)):
                if before.get(name) == now.get(name):
                    continue
                try:
                    if name not in now:
                        if name in self.models:
                            await self.unload(name)
                        self.unloaded.pop(name, None)
                        self.failed.pop(name, None)
                        log.info("model %s: removed from the repository, unloaded", name)
                    else:
                        await self.reload(name)
                        log.info("model %s: %s from the repository", name,
                                 "loaded" if name not in before else "reloaded")
                except (EdgeDLError, HTTPError) as exc:
                    self.failed[name] = str(exc)
                    log.error("model %s: UNAVAILABLE - %s", name, exc)

    def get(self, name: str, version: str | None) -> ServedModel:
        entry = self.models.get(name)
        if entry is None:
            known = ", ".join(self.models) or "none"
            raise HTTPError(404, f"Request for unknown model '{name}'; loaded models: {known}")
        if version is None:
            return entry.latest
        model = entry.versions.get(version)
        if model is None:
            raise HTTPError(404, f"Request for unknown model '{name}': no version '{version}'; versions: "
                                 f"{', '.join(entry.versions)}")
        return model

    def _overridden(self, name: str, config: dict, files: dict[str, bytes]) -> list[ModelSource]:
        c = self.config
        if c.verify_key is not None:
            raise EdgeDLError("this server serves only signed bundles; a load cannot bring its own configuration "
                              "or files (sign a bundle with them instead)")
        if c.model_repository is None:
            raise EdgeDLError("a load with a configuration needs a model repository; serve one with the model in it")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="edgedl-loaded-"))
        return [override_source(c.model_repository, name, config, files, c.batching, self._workdir,
                                c.allow_outside_repository)]

    async def reload(self, name: str | None = None, config: dict | None = None,
                     files: dict[str, bytes] | None = None) -> list[str]:
        """Load ``name`` (or every model on disk) again and swap atomically; old versions drain, then close.
        If any load fails nothing is swapped and the error is raised (the old models keep serving).
        ``config`` (parsed, see repository.config_from_json) and ``files`` override the model's own, as a
        Triton repository load's parameters do."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            if config is not None:
                discover_ = partial(self._overridden, name, config, files or {})
            else:
                if files:
                    raise EdgeDLError("a load with file overrides needs the model's 'config' too")
                discover_ = partial(self._discover, only=name)
            fresh = await loop.run_in_executor(None, lambda: self._load(discover_()))
            retired = []
            if name is None:
                for gone in [n for n in self.models if n not in fresh]:
                    retired.append(self._publish(gone, None))
            for n, entry in fresh.items():
                retired.append(self._publish(n, entry))
                self.failed.pop(n, None)
                self.unloaded.pop(n, None)
            for old in retired:
                if old is not None:
                    for model in old.versions.values():
                        loop.create_task(model.retire())
            return list(fresh)

    async def unload(self, name: str) -> None:
        if name not in self.models:
            raise HTTPError(404, f"unknown model '{name}'; loaded models: {', '.join(self.models) or 'none'}")
        old = self._publish(name, None)
        self.unloaded[name] = list(old.versions)
        for model in old.versions.values():
            asyncio.get_running_loop().create_task(model.retire())

    async def close(self) -> None:
        await asyncio.gather(*(m.retire() for e in self.models.values() for m in e.versions.values()),
                             return_exceptions=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
