"""Load an ONNX model into onnxruntime (the loader) and run it (the runner).

Export validation, benchmarks, quantization gates and the server all run models through ``Runner`` so that a
number measured is the code that ships. Imports only numpy, onnxruntime and the standard library.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgedl.errors import EdgeDLError
from edgedl.runtime import metadata as _meta
from edgedl.runtime.providers import resolve_provider, short_name
from edgedl.runtime.tensors import TensorInfo, random_inputs

_OPT_LEVELS = ("disable", "basic", "extended", "all")
EXECUTION_MODES = ("sequential", "parallel")  # parallel: independent branches of the graph on the inter-op pool
_NDARRAY = np.ndarray


def _input_plan(info: TensorInfo) -> tuple:
    """(name, dtype, rank, getter of the fixed dims or None, their expected value) for the fast input check."""
    fixed = [(axis, dim) for axis, dim in enumerate(info.shape) if isinstance(dim, int)]
    if not fixed:
        return info.name, info.dtype, len(info.shape), None, None
    getter = operator.itemgetter(*(axis for axis, _ in fixed))
    want = fixed[0][1] if len(fixed) == 1 else tuple(dim for _, dim in fixed)
    return info.name, info.dtype, len(info.shape), getter, want


@dataclass
class RunnerConfig:
    """How to build a session. Short provider names ('cpu', 'cuda') or onnxruntime's full names."""

    providers: tuple[str, ...] = ("cpu",)
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    intra_op_threads: int = 0  # 0 = onnxruntime's default (one per physical core)
    inter_op_threads: int = 0
    spinning: bool | None = None  # None = onnxruntime's default (spin)
    execution_mode: str = "sequential"
    graph_optimization: str = "all"
    enable_mem_arena: bool = True
    enable_mem_pattern: bool = True
    allow_fallback: bool = False  # if False, a requested provider that is missing is an error
    profile: bool = False
    optimized_model_path: str | None = None  # write the optimized graph here (offline optimization)

    def __post_init__(self) -> None:
        if self.graph_optimization not in _OPT_LEVELS:
            raise EdgeDLError(
                f"graph optimization level must be one of {', '.join(_OPT_LEVELS)}, got '{self.graph_optimization}'"
            )
        if self.execution_mode not in EXECUTION_MODES:
            raise EdgeDLError(f"execution mode must be one of {', '.join(EXECUTION_MODES)}, got '{self.execution_mode}'")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise EdgeDLError("thread counts must be >= 0 (0 lets onnxruntime choose)")
        self.providers = tuple(resolve_provider(p) for p in self.providers) or ("CPUExecutionProvider",)
        self.provider_options = {resolve_provider(k): dict(v) for k, v in self.provider_options.items()}


def _session_options(config: RunnerConfig):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # fatal only: a failed run raises with onnxruntime's message (its log would repeat it)
    if config.intra_op_threads:
        so.intra_op_num_threads = config.intra_op_threads
    if config.inter_op_threads:
        so.inter_op_num_threads = config.inter_op_threads
    if config.spinning is not None:
        flag = "1" if config.spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", flag)
        so.add_session_config_entry("session.inter_op.allow_spinning", flag)
    if config.execution_mode == "parallel":
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config.graph_optimization]
    so.enable_cpu_mem_arena = config.enable_mem_arena
    so.enable_mem_pattern = config.enable_mem_pattern
    so.enable_profiling = config.profile
    if config.optimized_model_path:
        so.optimized_model_filepath = str(config.optimized_model_path)
    return so


def load_session(model: str | os.PathLike | bytes, config: RunnerConfig):
    """The loader: build an InferenceSession; report a missing provider instead of falling back silently.

    Returns (session, fallbacks) where fallbacks lists requested providers the session does not use.
    """
    import onnxruntime as ort

    if not isinstance(model, bytes):
        path = Path(model)
        if not path.is_file():
            raise EdgeDLError(f"model file not found: {path}; pass the path to an .onnx file")
        model = str(path)
    available = ort.get_available_providers()
    requested = list(config.providers)
    missing = [p for p in requested if p not in available]
    if missing and not config.allow_fallback:
        raise EdgeDLError(
            f"execution provider {', '.join(short_name(p) for p in missing)} is not available in this onnxruntime "
            f"({ort.__version__}; available: {', '.join(short_name(p) for p in available)}); install a build that "
            "has it, or run on what is available", hint="allow the fallback (RunnerConfig.allow_fallback)",
            option=("allow_fallback", None))
    usable = [p for p in requested if p in available] or ["CPUExecutionProvider"]
    providers = [(p, config.provider_options.get(p, {})) for p in usable]
    try:
        session = ort.InferenceSession(model, sess_options=_session_options(config), providers=providers)
    except Exception as exc:  # onnxruntime raises its own types; wrap them with context
        what = "model bytes" if isinstance(model, bytes) else model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeDLError(f"onnxruntime could not load {what}: {first}") from exc
    active = session.get_providers()
    fallbacks = [p for p in requested if p not in active]
    if fallbacks and not config.allow_fallback:
        raise EdgeDLError(
            f"onnxruntime did not enable {', '.join(short_name(p) for p in fallbacks)} for this model "
            f"(session uses {', '.join(short_name(p) for p in active)})",
            hint="allow the fallback to accept that (RunnerConfig.allow_fallback)", option=("allow_fallback", None))
    return session, fallbacks


def _closed(*_args):
    raise EdgeDLError("this runner is closed; load the model again")


class Runner:
    """A loaded model: metadata, input checks, run. Use as a context manager or call ``close()``.

    >>> with Runner("cnn.onnx") as r:
    ...     logits = r.run(images)["logits"]
    """

    def __init__(self, model: str | os.PathLike | bytes, config: RunnerConfig | None = None, **overrides: Any):
        if config is None:
            config = RunnerConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a RunnerConfig or keyword overrides, not both")
        self.config = config
        self.source = "<bytes>" if isinstance(model, bytes) else str(model)
        self.session, self.fallbacks = load_session(model, config)
        # The C-level session skips InferenceSession.run's Python-side checks; ours replace them, so the
        # runner stays within a few percent of a bare session.run.
        self._run = getattr(self.session, "_sess", self.session).run
        self.inputs = [TensorInfo.from_ort(a, i) for i, a in enumerate(self.session.get_inputs())]
        self.outputs = [TensorInfo.from_ort(a, i) for i, a in enumerate(self.session.get_outputs())]
        self.output_names = [o.name for o in self.outputs]
        self._checks = {
            i.name: (i.dtype, len(i.shape), tuple((a, d) for a, d in enumerate(i.shape) if isinstance(d, int)))
            for i in self.inputs
        }
        self._plan = tuple(_input_plan(i) for i in self.inputs)
        self._n_inputs = len(self.inputs)
        self._single_input = self.inputs[0].name if len(self.inputs) == 1 else None
        meta = self.session.get_modelmeta()
        self.custom_metadata: dict[str, str] = dict(meta.custom_metadata_map)
        self.metadata: dict[str, Any] = _meta.decode(self.custom_metadata)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the session; running a closed runner raises an EdgeDLError."""
        self.session = None
        self._run = _closed

    @property
    def closed(self) -> bool:
        return self.session is None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- metadata ----------------------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def labels(self) -> list[str] | None:
        return self.metadata.get("labels")

    def input_info(self, name: str) -> TensorInfo:
        for info in self.inputs:
            if info.name == name:
                return info
        raise EdgeDLError(f"model has no input '{name}'; its inputs are {', '.join(i.name for i in self.inputs)}")

    def example_inputs(self, sizes: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        return random_inputs(self.inputs, sizes, seed)

    def warmup(self, iterations: int = 3, sizes: Mapping[str, int] | None = None) -> None:
        feeds = self.example_inputs(sizes)
        for _ in range(iterations):
            self.run(feeds)

    # --- running -----------------------------------------------------------------------------------------
    def check_inputs(self, feeds: Mapping[str, Any], cast: bool = False) -> Mapping[str, np.ndarray]:
        """Validate feeds against the model's inputs; returns the feeds (cast only if ``cast`` and lossless).

        The fast path is one pass over a precomputed plan (exact dtype object, rank, fixed dims through one
        itemgetter) and returns ``feeds`` itself; anything unusual falls through to the full check, which either
        accepts it (a dtype equal but not identical, an ndarray subclass, an explicit safe cast) or raises an
        EdgeDLError naming the input, what was expected and what was got.
        """
        if not cast and feeds.__class__ is dict and len(feeds) == self._n_inputs:
            for name, dtype, rank, fixed_get, fixed_want in self._plan:
                value = feeds.get(name)
                if value.__class__ is not _NDARRAY or value.dtype is not dtype:
                    break
                shape = value.shape
                if len(shape) != rank or (fixed_get is not None and fixed_get(shape) != fixed_want):
                    break
            else:
                return feeds
        return self._check_inputs_slow(feeds, cast)

    def _check_inputs_slow(self, feeds: Mapping[str, Any], cast: bool) -> Mapping[str, np.ndarray]:
        checks = self._checks
        if not isinstance(feeds, Mapping):
            raise EdgeDLError(f"inputs must be a dict of name -> numpy array, got {type(feeds).__name__}")
        if feeds.keys() != checks.keys():
            missing = [n for n in checks if n not in feeds]
            extra = [n for n in feeds if n not in checks]
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if extra:
                parts.append(f"unknown input(s) {', '.join(map(str, extra))}")
            raise EdgeDLError(f"{'; '.join(parts)}; the model expects {', '.join(checks)}")
        out: dict[str, Any] | Mapping[str, Any] = feeds
        for name, value in feeds.items():
            dtype, rank, fixed = checks[name]
            if not isinstance(value, np.ndarray):
                raise EdgeDLError(f"input '{name}' must be a numpy array, got {type(value).__name__}")
            if value.dtype != dtype:
                if dtype.kind == "O" and value.dtype.kind in "USO":
                    pass  # onnxruntime takes str/bytes arrays for string inputs as they are
                elif cast and np.can_cast(value.dtype, dtype, casting="safe"):
                    if out is feeds:
                        out = dict(feeds)
                    value = out[name] = value.astype(dtype)
                else:
                    hint = " (a lossless cast exists: pass cast=True)" if np.can_cast(value.dtype, dtype, "safe") else ""
                    raise EdgeDLError(f"input '{name}' expects dtype {dtype.name}, got {value.dtype.name}{hint}")
            shape = value.shape
            if len(shape) != rank:
                raise EdgeDLError(
                    f"input '{name}' expects rank {rank} {list(self.input_info(name).shape)}, got shape {list(shape)}"
                )
            for axis, dim in fixed:
                if shape[axis] != dim:
                    raise EdgeDLError(
                        f"input '{name}' expects size {dim} on axis {axis} "
                        f"(shape {list(self.input_info(name).shape)}), got shape {list(shape)}"
                    )
        return out

    def run(
        self,
        feeds: Mapping[str, np.ndarray] | np.ndarray,
        output_names: list[str] | None = None,
        cast: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run the model on a dict of arrays (or one array for a single-input model); returns name -> array."""
        if feeds.__class__ is not dict:
            if isinstance(feeds, np.ndarray):
                if self._single_input is None:
                    raise EdgeDLError(
                        f"model has {len(self.inputs)} inputs ({', '.join(i.name for i in self.inputs)}); pass a dict"
                    )
                feeds = {self._single_input: feeds}
            else:
                feeds = self._check_inputs_slow(feeds, cast)
                cast = None  # checked
        if cast is None:
            pass
        elif cast or len(feeds) != self._n_inputs:
            feeds = self._check_inputs_slow(feeds, cast)
        else:
            # the fast path of check_inputs, inlined: this is the per-call cost over a bare session.run
            for name, dtype, rank, fixed_get, fixed_want in self._plan:
                value = feeds.get(name)
                if value.__class__ is not _NDARRAY or value.dtype is not dtype:
                    feeds = self._check_inputs_slow(feeds, cast)
                    break
                shape = value.shape
                if len(shape) != rank or (fixed_get is not None and fixed_get(shape) != fixed_want):
                    feeds = self._check_inputs_slow(feeds, cast)
                    break
        names = output_names or self.output_names
        try:
            values = self._run(names, feeds, None)
        except EdgeDLError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgeDLError(f"onnxruntime failed running {Path(self.source).name}: {first}") from exc
        return dict(zip(names, values))

    def run_unchecked(self, feeds: Mapping[str, np.ndarray], output_names: list[str] | None = None) -> list:
        """The bare call, for benchmarks that prepared correct feeds: no validation, no dict building."""
        return self._run(output_names or self.output_names, feeds, None)

    def run_with_binding(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run through onnxruntime's IO binding (inputs bound once per call, outputs allocated by the provider)."""
        feeds = self.check_inputs(feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise EdgeDLError(f"onnxruntime failed running {Path(self.source).name}: {exc}") from exc
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))

    def end_profiling(self) -> str | None:
        """Stop profiling (if enabled) and return the path of onnxruntime's JSON trace."""
        if not self.config.profile:
            return None
        return self.session.end_profiling()
