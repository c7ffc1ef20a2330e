"""The JSON documents of the protocol - server and model metadata, model config, statistics, repository index -
built from the registry. HTTP sends them as they are; gRPC converts them with protobuf's JSON mapping (Triton's
HTTP documents are that mapping of its gRPC messages), so both front ends answer from this one module."""

from __future__ import annotations

from edgedl import __version__
from edgedl.runtime.server.pbtxt import first
from edgedl.runtime.server.protocol import datatype_of, v2_shape

# the extensions this server implements, as Triton names them in its server metadata
EXTENSIONS = ["classification", "model_repository", "model_configuration", "system_shared_memory",
              "binary_tensor_data", "statistics", "trace", "logging"]


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
        "output": [{"name": o.name, "data_type": _config_type(o.dtype), "dims": dims(o),
                    **({"label_filename": model.source.label_files[o.name].name}
                       if o.name in model.source.label_files else {})}
                   for o in model.runner.outputs],
        "instance_group": [{"count": p.instances, "kind": "KIND_CPU"}],
        "version_policy": _version_policy(model),
    }
    if model.batching:
        cfg["dynamic_batching"] = {"max_queue_delay_microseconds": p.max_queue_delay_us,
                                   "default_queue_policy": {"max_queue_size": p.max_queue}}
    return cfg


def _version_policy(model) -> dict:
    """The config's version_policy in Triton's JSON form (edgedl serves every version folder without one)."""
    policy = first(model.source.config, "version_policy") or {"all": [{}]}
    if "latest" in policy:
        return {"latest": {"num_versions": first(first(policy, "latest") or {}, "num_versions", 1)}}
    if "specific" in policy:
        return {"specific": {"versions": list((first(policy, "specific") or {}).get("versions", []))}}
    return {"all": {}}


def _counted(count: int, ns: int) -> dict:
    return {"count": count, "ns": ns}


def statistics(registry, name: str | None, version: str | None = None) -> list[dict]:
    """Triton's statistics document: per version, requests (success, fail, queue and compute times of the
    successful ones), inferences (rows), executions, and per batch size the runs and their compute times."""
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
                "inference_count": s.inferences, "execution_count": s.executions,
                "inference_stats": {
                    "success": _counted(s.success, s.success_ns),
                    "fail": _counted(s.fail, s.fail_ns),
                    "queue": _counted(s.success, s.queue_ns),
                    "compute_input": _counted(s.success, s.input_ns),
                    "compute_infer": _counted(s.success, s.infer_ns),
                    "compute_output": _counted(s.success, s.output_ns),
                    "cache_hit": _counted(0, 0),  # edgedl has no response cache
                    "cache_miss": _counted(0, 0),
                },
                "response_stats": {},  # per-response statistics are for decoupled models, which edgedl has not
                "batch_stats": [{"batch_size": rows, "compute_input": _counted(runs, input_ns),
                                 "compute_infer": _counted(runs, infer_ns), "compute_output": _counted(runs, output_ns)}
                                for rows, (runs, input_ns, infer_ns, output_ns) in sorted(s.batches.items())],
                "memory_usage": [],
            })
    return out


def index(registry, repository) -> list[dict]:
    out = []
    for name, entry in registry.models.items():
        for v in entry.versions:
            out.append({"name": name, "version": v, "state": "READY"})
    if repository is not None and repository.is_dir():  # models on disk but not loaded (unloaded, or added since)
        for folder in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name in registry.models:
                continue
            if folder.name in registry.unloaded:  # as Triton lists them: each version it had, 'unloaded'
                out.extend({"name": folder.name, "version": v, "state": "UNAVAILABLE", "reason": "unloaded"}
                           for v in registry.unloaded[folder.name])
            else:
                reason = registry.failed.get(folder.name, "not loaded")
                out.append({"name": folder.name, "state": "UNAVAILABLE", "reason": reason})
    return out
