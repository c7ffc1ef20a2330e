"""Loaded models and how they execute: inline on the event loop, on worker threads, or through a dynamic
batcher; and the registry that maps name/version to a loaded model and swaps reloads in atomically."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime.runner import Runner, RunnerConfig
from edgedl.runtime.server.config import ServerConfig, model_limits
from edgedl.runtime.server.metrics import ServerMetrics
from edgedl.runtime.server.protocol import HTTPError, InferRequest
from edgedl.runtime.server.repository import BatchPolicy, ModelSource, discover
from edgedl.runtime.signature import Signature, options_per_model
from edgedl.runtime.timing import measure

log = logging.getLogger("edgedl.serve")


class _Pending:
    __slots__ = ("feeds", "rows", "signature", "future", "enqueued")

    def __init__(self, feeds, rows, signature, future, enqueued):
        self.feeds, self.rows, self.signature, self.future, self.enqueued = feeds, rows, signature, future, enqueued


@dataclass
class Stats:
    """Per-version counters for the statistics extension (nanoseconds, like Triton)."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    executions: int = 0
    last_ms: int = 0


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
        wants_batching = self.policy.dynamic_batching and self.policy.max_batch_size > 1
        self.batching = wants_batching and self.batchable
        if wants_batching and not self.batchable:
            log.warning("model %s: dynamic batching is OFF - its inputs cannot be stacked safely (%s)", self.name,
                        "; ".join(self.signature.describe() + [o.describe() for o in self.signature.outputs]))
        # warm-up doubles as the timing that picks the execution mode (no extra runs for big models); a model
        # that rejects synthetic inputs is served without warm-up: its own requests are what count
        self.single_ms, self.warmup_error = None, None
        try:
            example = self.signature.feeds()
            self.single_ms = measure(lambda: self.runner.run(example), warmup=1,
                                     iterations=max(config.warmup_iterations, 1)).p50_ms
            if self.batching:
                self.runner.run(self.signature.feeds(self.policy.max_batch_size))
        except EdgeDLError as exc:
            self.warmup_error = str(exc)
            log.warning("model %s: served without warm-up (%s); give sizes or value ranges for its inputs "
                        "(or a model_warmup in config.pbtxt) to warm it up", self.name, exc)
        self.inline = (not self.batching and self.policy.instances == 1 and self.single_ms is not None
                       and self.single_ms < config.inline_below_ms)
        self.executor = None if self.inline else ThreadPoolExecutor(
            self.policy.instances, thread_name_prefix=f"edgedl-{self.name}")
        self.delay_s = self.policy.max_queue_delay_us / 1e6
        self.max_rows = self.policy.max_batch_size
        self.pending: deque[_Pending] = deque()
        self.pending_rows = 0
        self.waiting = 0  # requests submitted to the worker threads and not started (unbatched mode)
        self.in_flight = 0
        self.retired = False
        self.stats = Stats()
        self._workers: list[asyncio.Task] = []
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self.load_s = perf_counter() - t0

    @property
    def mode(self) -> str:
        if self.batching:
            return f"batching up to {self.max_rows} rows, {self.policy.max_queue_delay_us} us delay"
        return "inline" if self.inline else f"{self.policy.instances} thread(s)"

    # --- running -----------------------------------------------------------------------------------------
    def _run(self, feeds, names):
        t0 = perf_counter()
        out = self.runner.run(feeds, names)
        return out, t0, perf_counter()

    async def infer(self, feeds: dict[str, np.ndarray], rows: int, names: list[str] | None, offload: bool = False):
        """-> (outputs by name, queue seconds, compute seconds, rows in the run). ``offload``: never on the
        event loop (a large request to an inline model runs on a worker thread)."""
        if self.inline and not offload:
            t0 = perf_counter()
            out = self.runner.run(feeds, names)
            return out, 0.0, perf_counter() - t0, rows
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
        return out, t0 - submitted, t1 - t0, rows

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
        out, queue_s, compute_s, batch_rows = await item.future
        if names is not None:
            out = {n: out[n] for n in names}
        return out, queue_s, compute_s, batch_rows

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
        out = self.runner.run(feeds)
        return out, t0, perf_counter()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                if self.retired:
                    return
                self._wake.clear()
                await self._wake.wait()
            deadline = self.pending[0].enqueued + self.delay_s
            while self.pending_rows < self.max_rows:
                remaining = deadline - perf_counter()
                if remaining <= 0:
                    break
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            if not self.pending:
                continue
            batch = self._take()
            try:
                out, t0, t1 = await loop.run_in_executor(self.executor, self._run_batch, batch)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            total = sum(b.rows for b in batch)
            parts = [out] if len(batch) == 1 else self.signature.split_outputs(out, [b.rows for b in batch])
            for item, part in zip(batch, parts):
                if not item.future.done():
                    item.future.set_result((part, t0 - item.enqueued, t1 - t0, total))

    async def serve(self, request: InferRequest, metrics: ServerMetrics, started: float) -> dict[str, np.ndarray]:
        """Run one decoded request and count it (statistics extension, Prometheus metrics): the path every
        protocol front end shares. ``started``: perf_counter() when the request arrived."""
        names = [n for n, _ in request.outputs] if request.outputs else None
        self.in_flight += 1
        metrics.in_flight.inc((self.name,), 1)
        try:
            out, queue_s, compute_s, rows = await self.infer(request.feeds, request.rows, names)
        finally:
            self.in_flight -= 1
            metrics.in_flight.inc((self.name,), -1)
        labels = (self.name, self.version)
        metrics.queue.observe(labels, queue_s)
        metrics.compute.observe(labels, compute_s)
        metrics.batch.observe(labels, rows)
        s = self.stats
        s.success += 1
        s.success_ns += int((perf_counter() - started) * 1e9)
        s.queue_ns += int(queue_s * 1e9)
        s.compute_ns += int(compute_s * 1e9)
        s.executions += 1
        s.last_ms = int(time.time() * 1000)
        return out

    def count_failure(self, started: float) -> None:
        """A request for this model that failed after ``started`` (malformed, refused or failed to run)."""
        self.stats.fail += 1
        self.stats.fail_ns += int((perf_counter() - started) * 1e9)

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
        self._lock: asyncio.Lock | None = None

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
        """Startup: discover, load and warm up every model. One model file: its errors are the user's to fix
        (raise). A repository: a model that fails is UNAVAILABLE with its reason and the others serve; if none
        loads, raise with every reason."""
        failures: dict[str, str] | None = {} if self.config.model_repository is not None else None
        for name, entry in self._load(self._discover(failures=failures), failures).items():
            self._publish(name, entry)
        self.failed = dict(failures or {})
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

    async def reload(self, name: str | None = None) -> list[str]:
        """Load ``name`` (or every model on disk) again and swap atomically; old versions drain, then close.
        If any load fails nothing is swapped and the error is raised (the old models keep serving)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            fresh = await loop.run_in_executor(None, lambda: self._load(self._discover(only=name)))
            retired = []
            if name is None:
                for gone in [n for n in self.models if n not in fresh]:
                    retired.append(self._publish(gone, None))
            for n, entry in fresh.items():
                retired.append(self._publish(n, entry))
                self.failed.pop(n, None)
            for old in retired:
                if old is not None:
                    for model in old.versions.values():
                        loop.create_task(model.retire())
            return list(fresh)

    async def unload(self, name: str) -> None:
        if name not in self.models:
            raise HTTPError(404, f"unknown model '{name}'; loaded models: {', '.join(self.models) or 'none'}")
        old = self._publish(name, None)
        for model in old.versions.values():
            asyncio.get_running_loop().create_task(model.retire())

    async def close(self) -> None:
        await asyncio.gather(*(m.retire() for e in self.models.values() for m in e.versions.values()),
                             return_exceptions=True)
