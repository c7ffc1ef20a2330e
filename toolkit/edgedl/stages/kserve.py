"""Scale-out export: a KServe ``InferenceService`` serving a Triton model repository with protocol v2.

Written by ``edgedl package MODEL.onnx --format kserve --storage-uri URI -o DIR``::

    DIR/repository/NAME/...     the Triton model repository (edgedl.stages.triton); upload it to URI
    DIR/inferenceservice.yaml   the manifest (YAML written by hand for this fixed, small structure: every string
                                is a JSON-quoted scalar, which YAML reads as the same string - no pyyaml needed)
    DIR/README.md               how to upload the repository and apply the manifest

The manifest is checked with ``validate_inference_service`` (the fields KServe's admission webhook insists on) before
anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from edgedl.errors import EdgeDLError
from edgedl.stages.files import atomic_output_dir, fresh_output_dir
from edgedl.stages.repository import TritonModelReport, TritonOptions, moved, populate_repository

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
# storage schemes KServe's storage initializer understands
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://", "oci://")
PROTOCOLS = ("v1", "v2", "grpc-v2")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


@dataclass
class KServeOptions:
    name: str  # the InferenceService name (DNS-1035 label)
    storage_uri: str  # where the Triton repository will be uploaded
    namespace: str | None = None
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: int = 0
    min_replicas: int = 1
    max_replicas: int = 1
    runtime: str | None = None  # ServingRuntime name; default: KServe picks its Triton runtime for modelFormat triton
    protocol: str = "v2"

    def __post_init__(self) -> None:
        if not _DNS1035.match(self.name) or len(self.name) > 45:
            raise EdgeDLError(f"InferenceService name {self.name!r} is not a lowercase DNS label (a-z, 0-9, '-', starting "
                              "with a letter, at most 45 characters so KServe's derived names fit); pass --service-name")
        if not self.storage_uri.startswith(STORAGE_SCHEMES):
            raise EdgeDLError(f"--storage-uri {self.storage_uri!r} must start with one of {', '.join(STORAGE_SCHEMES)} "
                              "(where you upload the repository, e.g. s3://my-bucket/models/digits)")
        for key in ("cpu", "memory"):
            if not _QUANTITY.match(str(getattr(self, key))):
                raise EdgeDLError(f"--{key} {getattr(self, key)!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
        if self.gpus < 0 or self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1):
            raise EdgeDLError(f"replicas/GPUs out of range: min {self.min_replicas}, max {self.max_replicas}, gpus "
                              f"{self.gpus}; need 0 <= min <= max, max >= 1, gpus >= 0")
        if self.protocol not in PROTOCOLS:
            raise EdgeDLError(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")


def inference_service(options: KServeOptions) -> dict:
    """The manifest as a plain dict (what YAML and JSON both encode)."""
    resources = {"cpu": str(options.cpu), "memory": str(options.memory)}
    if options.gpus:
        resources["nvidia.com/gpu"] = str(options.gpus)
    model: dict = {"modelFormat": {"name": "triton"}, "protocolVersion": options.protocol,
                   "storageUri": options.storage_uri,
                   "resources": {"requests": dict(resources), "limits": dict(resources)}}
    if options.runtime:
        model["runtime"] = options.runtime
    metadata: dict = {"name": options.name, "labels": {"app.kubernetes.io/managed-by": "edgedl"}}
    if options.namespace:
        metadata["namespace"] = options.namespace
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
            "spec": {"predictor": {"minReplicas": options.min_replicas, "maxReplicas": options.max_replicas,
                                   "model": model}}}


def validate_inference_service(doc: dict) -> None:
    """The fields KServe requires of a v1beta1 InferenceService with a model-format predictor; EdgeDLError if not."""
    problems = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion must be {API_VERSION}")
    if doc.get("kind") != KIND:
        problems.append(f"kind must be {KIND}")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not _DNS1035.match(name):
        problems.append("metadata.name must be a DNS-1035 label")
    predictor = (doc.get("spec") or {}).get("predictor")
    if not isinstance(predictor, dict):
        problems.append("spec.predictor is required")
        predictor = {}
    frameworks = [k for k in ("model", "triton", "onnx", "sklearn", "xgboost", "tensorflow", "pytorch") if k in predictor]
    if len(frameworks) != 1:
        problems.append(f"spec.predictor needs exactly one model spec, found {frameworks or 'none'}")
    model = predictor.get("model") or {}
    if not (model.get("modelFormat") or {}).get("name"):
        problems.append("spec.predictor.model.modelFormat.name is required")
    if not str(model.get("storageUri", "")).startswith(STORAGE_SCHEMES):
        problems.append("spec.predictor.model.storageUri must be a storage URI")
    if model.get("protocolVersion", "v1") not in PROTOCOLS:
        problems.append(f"protocolVersion must be one of {PROTOCOLS}")
    lo, hi = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
    if not isinstance(lo, int) or not isinstance(hi, int) or lo < 0 or (hi and hi < lo):
        problems.append("minReplicas/maxReplicas must be integers with min <= max")
    for kind in ("requests", "limits"):
        for key, value in ((model.get("resources") or {}).get(kind) or {}).items():
            if not isinstance(value, str) or not _QUANTITY.match(value):
                problems.append(f"resources.{kind}.{key} {value!r} is not a quantity string")
    if problems:
        raise EdgeDLError(f"InferenceService manifest is invalid: {'; '.join(problems)}")


def to_yaml(value, indent: int = 0) -> str:
    """Block YAML for nested dicts/lists of str/int/bool; strings are JSON-quoted (valid YAML scalars)."""
    pad = "  " * indent
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                out.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(out)
    if isinstance(value, list):
        return "\n".join(f"{pad}- {_scalar(item)}" for item in value)
    return pad + _scalar(value)


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value))


README = """# Serving {name} on KServe

`repository/` is a Triton model repository ({models}); `inferenceservice.yaml` serves it with KServe's
Triton runtime over the Open Inference Protocol v2 (the same protocol `edgedl serve` speaks, so a client written
against an edgedl device works unchanged).

1. Upload the repository to the storage URI the manifest names ({uri}), e.g. for S3:

       aws s3 cp --recursive repository/ {uri}/

   (KServe's storage initializer needs credentials for it: a ServiceAccount with an S3/GCS secret, or a PVC.)
2. Apply the manifest (needs a cluster with KServe installed):

       kubectl apply -f inferenceservice.yaml{ns_flag}
       kubectl get inferenceservice {name}{ns_flag} -w      # wait for READY=True

3. Query it with any v2 client, e.g. `tritonclient.http.InferenceServerClient(url=HOST)` where HOST comes from
   `kubectl get inferenceservice {name} -o jsonpath='{{.status.url}}'`.

Resources per replica: cpu {cpu}, memory {memory}{gpu}; replicas {lo}-{hi}. Re-run `edgedl package --format kserve`
with other options to change them.
"""


@dataclass(frozen=True)
class KServeResult:
    """What ``write_kserve`` wrote."""

    directory: str
    manifest: str
    readme: str
    repository: str
    inference_service: dict  # the manifest's document (YAML as written)
    options: KServeOptions
    models: list[TritonModelReport]
    format: str = "kserve"

    def to_json(self) -> dict:
        return {"format": self.format, "directory": self.directory, "manifest": self.manifest, "readme": self.readme,
                "repository": self.repository, "inference_service": self.inference_service,
                "options": asdict(self.options), "models": [m.to_json() for m in self.models]}


def write_kserve(models: list[Path], out_dir: Path, options: KServeOptions, triton: TritonOptions | None = None,
                 names: list[str] | None = None) -> KServeResult:
    """Write DIR/repository (Triton), DIR/inferenceservice.yaml and DIR/README.md."""
    triton = triton or TritonOptions(instance_kind="gpu" if options.gpus else "cpu")
    if not models:
        raise EdgeDLError("give at least one MODEL.onnx")
    doc = inference_service(options)
    validate_inference_service(doc)
    out = fresh_output_dir(Path(out_dir))
    with atomic_output_dir(out) as staging:
        (staging / "repository").mkdir()
        reports = populate_repository(models, staging / "repository", triton, names)
        (staging / "inferenceservice.yaml").write_text(
            "# KServe InferenceService written by edgedl; apply with: kubectl apply -f inferenceservice.yaml\n"
            + to_yaml(doc) + "\n")
        (staging / "README.md").write_text(README.format(
            name=options.name, models=", ".join(r.name for r in reports), uri=options.storage_uri.rstrip("/"),
            ns_flag=f" -n {options.namespace}" if options.namespace else "", cpu=options.cpu, memory=options.memory,
            gpu=f", {options.gpus} GPU(s)" if options.gpus else "", lo=options.min_replicas, hi=options.max_replicas))
    return KServeResult(directory=str(out), manifest=str(out / "inferenceservice.yaml"), readme=str(out / "README.md"),
                        repository=str(out / "repository"), inference_service=doc, options=options,
                        models=moved(reports, staging, out))
