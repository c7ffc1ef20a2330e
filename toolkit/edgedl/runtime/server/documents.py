"""The JSON documents of the protocol - server and model metadata, model config, statistics, repository index -
built from the registry. HTTP sends them as they are; gRPC converts them with protobuf's JSON mapping (Triton's
HTTP documents are that mapping of its gRPC messages), so both front ends answer from this one module."""

from __future__ import annotations

from edgedl import __version__
from edgedl.runtime.server.protocol import datatype_of, v2_shape

# the extensions this server implements, as Triton names them in its server metadata
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "schedule_policy"]


def server_metadata() -> dict:
    return {"name": "edgedl", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(registry, model) -> dict:
    entry = registry.models[model.name]
    return {
        "name": model.name,
        "versions": list(entry.versions),
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": i.name, "datatype": datatype_of(i.dtype), "shape": v2_shape(i)}
                   for i in model.runner.inputs],
        "outputs": [{"name": o.name, "datatype": datatype_of(o.dtype), "shape": v2_shape(o)}
                    for o in model.runner.outputs],
        "parameters": {"edgedl": {k: model.runner.metadata[k] for k in ("labels", "preprocessing")
                                  if k in model.runner.metadata}, "execution": model.mode},
    }


def _config_type(dtype) -> str:
    datatype = datatype_of(dtype)
    return "TYPE_" + ("STRING" if datatype == "BYTES" else datatype)


def model_config(model) -> dict:
    p = model.policy
    batched = p.max_batch_size > 0 and model.batchable

    def dims(info):
        shape = v2_shape(info)
        return shape[1:] if batched else shape

    cfg = {
        "name": model.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": p.max_batch_size if batched else 0,
        "input": [{"name": i.name, "data_type": _config_type(i.dtype), "dims": dims(i)} for i in model.runner.inputs],
        "output": [{"name": o.name, "data_type": _config_type(o.dtype), "dims": dims(o)}
                   for o in model.runner.outputs],
        "instance_group": [{"count": p.instances, "kind": "KIND_CPU"}],
    }
    if model.batching:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": p.max_queue_delay_us,
                                   "default_queue_policy": {"max_queue_size": p.max_queue}}
    return cfg


def statistics(registry, name: str | None, version: str | None = None) -> list[dict]:
    out = []
    for model_name, entry in registry.models.items():
        if name is not None and model_name != name:
            continue
        for v, model in entry.versions.items():
            if version is not None and v != version:
                continue
            s = model.stats
            out.append({
                "name": model_name, "version": v, "last_inference": s.last_ms,
                "inference_count": s.success, "execution_count": s.executions,
                "inference_stats": {
                    "success": {"count": s.success, "ns": s.success_ns},
                    "fail": {"count": s.fail, "ns": s.fail_ns},
                    "queue": {"count": s.success, "ns": s.queue_ns},
                    "compute_infer": {"count": s.success, "ns": s.compute_ns},
                },
            })
    return out


def index(registry, repository) -> list[dict]:
    out = []
    for name, entry in registry.models.items():
        for v in entry.versions:
            out.append({"name": name, "version": v, "state": "READY"})
    if repository is not None and repository.is_dir():  # models on disk but not loaded (unloaded, or added since)
        for folder in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in registry.models:
                reason = registry.failed.get(folder.name, "not loaded")
                out.append({"name": folder.name, "state": "UNAVAILABLE", "reason": reason})
    return out
