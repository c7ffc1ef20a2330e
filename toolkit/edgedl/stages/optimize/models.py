"""The model files a search times, and their accuracy: built by quantize's ``Workbench`` (the same passes,
preprocessing and calibration as ``edgedl quantize``) and judged by its accuracy gate, each once per content and
cached (``cache.py``).

A candidate's file depends only on its ``model`` knobs: fp32 is the input itself; dynamic, static and fp16 are
quantize's conversions, static from the target's quantization preset (its reduce-range and symmetry settings)
with the candidate's format, granularity, calibration and types; ``saved_optimized`` is that file after
onnxruntime's graph optimization, saved.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedl._lazy import require
from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import sha256_file as file_hash
from edgedl.stages.optimize.cache import Cache
from edgedl.stages.optimize.space import Candidate, digest


@dataclass(frozen=True)
class Artifact:
    """A built model file (or why it could not be built)."""

    path: Path | None
    sha256: str
    size_bytes: int
    cost_s: float
    notes: tuple[str, ...] = ()
    ops_quantized: dict = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Accuracy:
    """The accuracy gate's measurements of one model file, and its verdict under this run's gate."""

    evaluation: Any  # edgedl.stages.quantize.gates.Evaluation
    checks: tuple  # gates.Check
    cost_s: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def data_digest(plan, extra: Any = None) -> str:
    """What the accuracy (and static calibration) depend on: every array and label of the data plan."""
    import hashlib

    h = hashlib.sha256(repr(extra).encode())
    for role, dataset in (("calibration", plan.calibration), ("evaluation", plan.evaluation)):
        h.update(role.encode())
        if dataset is None:
            continue
        h.update(dataset.kind.encode())
        for chunk in dataset.chunks:
            for name in sorted(chunk.inputs):
                value = chunk.inputs[name]
                h.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
                h.update(value.tobytes())
            if chunk.labels is not None:
                h.update(chunk.labels.tobytes())
    return h.hexdigest()[:20]


class ModelLab:
    """Builds and judges candidates' model files for one fp32 model, caching both."""

    def __init__(self, model_path: Path, original, profile, gates, data, shape_options, cache: Cache,
                 workdir: Path, static: bool, gpu: bool, debug: bool = False):
        from edgedl.stages.quantize.config import preset
        from edgedl.stages.quantize.pipeline import Workbench

        self.model_path, self.cache, self.workdir = Path(model_path), cache, Path(workdir)
        self.model_sha = file_hash(self.model_path)
        self.model_key = self.model_sha[:20]
        gates = dataclasses.replace(gates, speed_seconds=0.0, accuracy_gate=True,
                                    target_provider=profile.providers[0] if gpu else "cpu")
        # static variants start from the target's preset; optimize's knobs override its settings
        self.qconfig = preset(profile.quantization, self.workdir / "unused.onnx", mode="static", gates=gates,
                              data=data, shape_options=shape_options, progress=False)
        self.bench = Workbench(self.model_path, original, self.qconfig, self.workdir / "quantize",
                               ["static"] if static else ["dynamic"], debug)
        (self.workdir / "quantize").mkdir(parents=True, exist_ok=True)
        self.bench.load()
        self.gates = gates
        self.data_key = data_digest(self.bench.plan, [gates.metric and _metric_source(gates.metric), gates.top_k,
                                                      gates.min_agreement is not None,
                                                      gates.min_top_k_agreement is not None])
        import onnx
        import onnxruntime

        self.versions = {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}
        self.builds = 0  # files built in this run (not found in the cache)
        self.evaluations = 0

    # --- model files -----------------------------------------------------------------------------------------
    def variant(self, c: Candidate) -> dict[str, Any]:
        """What a candidate's file depends on."""
        part = c.part("model")
        key = {**part, "preset": self.qconfig.preset, **self.versions}
        if c.saved_optimized:
            key["graph_optimization"] = c.graph_optimization
        if c.precision == "static":
            key["data"] = self.data_key
        return key

    def artifact(self, c: Candidate) -> Artifact:
        if c.precision == "fp32" and not c.saved_optimized:
            return Artifact(self.model_path, self.model_sha, self.model_path.stat().st_size, 0.0)
        key = digest(self.variant(c))
        record = self.cache.get(self.model_key, "artifacts", key)
        path = self.cache.artifact(self.model_key, "artifacts", key)
        if record is not None and (record.get("error") or path.is_file()):
            return _artifact(record, None if record.get("error") else path)
        start = time.perf_counter()
        try:
            built, notes, ops = self._build(c)
            path = self.cache.store(built, self.model_key, "artifacts", key)
            record = {"sha256": file_hash(path), "size_bytes": path.stat().st_size, "notes": notes,
                      "ops_quantized": ops}
        except EdgeDLError as exc:
            record = {"error": exc.message, "sha256": "", "size_bytes": 0}
        self.builds += 1
        record = self.cache.put({**record, "cost_s": time.perf_counter() - start, "variant": self.variant(c)},
                                self.model_key, "artifacts", key)
        return _artifact(record, None if record.get("error") else path)

    def _build(self, c: Candidate) -> tuple[Path, list[str], dict]:
        scratch = Path(tempfile.mkdtemp(prefix="build-", dir=self.workdir))
        target = scratch / "model.onnx"
        if c.saved_optimized:
            base = self.artifact(dataclasses.replace(c, saved_optimized=False))
            if base.error:
                raise EdgeDLError(base.error)
            _save_optimized(base.path, target, c.graph_optimization)
            return target, [f"onnxruntime's {c.graph_optimization}-level graph optimization, saved"], base.ops_quantized
        mode = c.precision
        static = dataclasses.replace(self.qconfig.static, format=c.quant_format, per_channel=c.per_channel,
                                     calibration_method=c.calibration_method,
                                     calibration_samples=c.calibration_samples, activation_type=c.activation_type,
                                     weight_type=c.weight_type, reduce_range=c.reduce_range)
        if mode == "dynamic":
            static = dataclasses.replace(self.qconfig.static, weight_type=c.weight_type)
        cand = self.bench.convert(mode, static, c.exclude_nodes, target=target)
        if mode != "fp16" and not cand.ops.get("ops_quantized"):
            raise EdgeDLError(f"{mode} quantized nothing in this model")
        return target, list(cand.notes), dict(cand.ops.get("ops_quantized", {}))

    def quantize_settings(self, c: Candidate) -> dict[str, Any]:
        """The ``edgedl quantize`` settings that build ``c``'s file (its --config section)."""
        if c.precision == "fp32":
            return {"mode": "fp32"}
        out: dict[str, Any] = {"mode": c.precision, "preset": self.qconfig.preset,
                               "exclude_nodes": list(c.exclude_nodes)}
        if c.precision in ("static", "dynamic"):
            out["weight_type"] = c.weight_type
        if c.precision == "static":
            out.update(format=c.quant_format, per_channel=c.per_channel, calibration_method=c.calibration_method,
                       calibration_samples=c.calibration_samples, activation_type=c.activation_type,
                       reduce_range=c.reduce_range)
        return out

    # --- accuracy ----------------------------------------------------------------------------------------------
    def accuracy(self, c: Candidate, artifact: Artifact) -> Accuracy:
        from edgedl.stages.quantize.gates import Evaluation, checks
        from edgedl.stages.quantize.report import Candidate as Judged

        fp32 = self.bench.fp32
        key = artifact.sha256[:20]
        record = self.cache.get(self.model_key, "evaluations", self.data_key, key)
        if record is None:
            start = time.perf_counter()
            if artifact.path == self.model_path:
                evaluation = fp32
            else:
                judged = Judged(c.precision, artifact.path)
                self.bench.judge(judged)
                evaluation = judged.evaluation
            self.evaluations += 1
            record = self.cache.put({"evaluation": evaluation.to_json(), "cost_s": time.perf_counter() - start},
                                    self.model_key, "evaluations", self.data_key, key)
        evaluation = Evaluation.from_json(record["evaluation"])
        verdicts = tuple(checks(evaluation, fp32, self.gates, self.bench.class_scores, self.bench.plan.weak))
        return Accuracy(evaluation, verdicts, record["cost_s"])

    def accuracy_loss(self, evaluation) -> float:
        """One number for the Pareto front's accuracy axis (lower is better): the top-1 drop in points with
        labels, else the metric's drop, else top-1 disagreement with fp32 in %, else minus the worst SQNR."""
        fp32 = self.bench.fp32
        if fp32.accuracy is not None and evaluation.accuracy is not None:
            return fp32.accuracy - evaluation.accuracy
        if fp32.metric is not None and evaluation.metric is not None:
            return fp32.metric - evaluation.metric
        if evaluation.agreement is not None:
            return 100.0 - evaluation.agreement
        if evaluation.outputs:
            return -min(o["sqnr_db"] for o in evaluation.outputs.values())
        return 0.0

    @property
    def accuracy_basis(self) -> str:
        fp32 = self.bench.fp32
        if fp32.accuracy is not None:
            return "top-1 accuracy drop (points)"
        if fp32.metric is not None:
            return "metric drop"
        return "top-1 disagreement with fp32 (%)" if self.bench.class_scores else "minus the worst output's SQNR (dB)"

    def timing_inputs(self) -> Path | None:
        """Real samples for the timings (an .npz the bench worker reads, tiled to each batch), None without data."""
        import numpy as np

        data = self.bench.plan.evaluation or self.bench.plan.calibration
        if data is None or data.synthetic:
            return None
        path = self.workdir / "timing-inputs.npz"
        if not path.is_file():
            np.savez(path, **data.arrays())
        return path


def _artifact(record: dict, path: Path | None) -> Artifact:
    return Artifact(path, record["sha256"], record["size_bytes"], record["cost_s"], tuple(record.get("notes", ())),
                    dict(record.get("ops_quantized") or {}), record.get("error"))


def _metric_source(target: str) -> str:
    """A metric's identity: its file's content and the function's name."""
    file, _, name = target.rpartition(":")
    try:
        return file_hash(Path(file)) + ":" + name
    except OSError:
        return target


def _save_optimized(source: Path, target: Path, level: str) -> None:
    from edgedl.runtime import RunnerConfig, load_session

    require("onnxruntime")
    load_session(str(source), RunnerConfig(graph_optimization=level, optimized_model_path=str(target)))
    if not target.is_file():
        raise EdgeDLError(f"onnxruntime saved no optimized model at level {level}")
    load_session(str(target), RunnerConfig(graph_optimization="disable"))
