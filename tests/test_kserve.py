"""KServe export: an InferenceService (protocol v2, Triton runtime) for the Triton repository, checked against the
fields KServe requires, read back by a real YAML parser, plus the README for applying it."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from edgedl_testing import run_edgedl
from edgedl.errors import EdgeDLError
from edgedl.stages.kserve import KServeOptions, inference_service, validate_inference_service, write_kserve

yaml = pytest.importorskip("yaml")  # PyYAML comes with ansible-core (the fleet extra); edgedl itself does not need it


def test_manifest_has_what_kserve_requires(zoo, tmp_path):
    out = tmp_path / "ks"
    report = write_kserve([zoo["mlp"].onnx, zoo["cnn"].onnx], out,
                          KServeOptions(name="digits", storage_uri="s3://models/digits", namespace="edge", cpu="500m",
                                        memory="1Gi", gpus=1, min_replicas=1, max_replicas=3))
    doc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert doc == report.inference_service
    validate_inference_service(doc)
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert doc["metadata"] == {"name": "digits", "namespace": "edge", "labels": {"app.kubernetes.io/managed-by": "edgedl"}}
    predictor = doc["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://models/digits"
    assert model["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}
    # the repository it points at is a valid Triton repository; a GPU service gets GPU instances
    for name in ("mlp", "cnn"):
        config = model_config_pb2.ModelConfig()
        text_format.Parse((out / "repository" / name / "config.pbtxt").read_text(), config)
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
        assert (out / "repository" / name / "1" / "model.onnx").is_file()
    readme = (out / "README.md").read_text()
    assert "kubectl apply -f inferenceservice.yaml -n edge" in readme and "s3://models/digits" in readme


@pytest.mark.parametrize("field, value, message", [
    ("apiVersion", "serving.kubeflow.org/v1alpha2", "apiVersion"),
    ("kind", "Deployment", "kind"),
])
def test_validator_rejects_wrong_top_level(field, value, message):
    doc = inference_service(KServeOptions(name="digits", storage_uri="gs://b/m"))
    doc[field] = value
    with pytest.raises(EdgeDLError, match=message):
        validate_inference_service(doc)


def test_validator_rejects_missing_predictor_fields():
    doc = inference_service(KServeOptions(name="digits", storage_uri="gs://b/m"))
    del doc["spec"]["predictor"]["model"]["storageUri"]
    doc["spec"]["predictor"]["model"]["modelFormat"] = {}
    with pytest.raises(EdgeDLError, match="storageUri.*|modelFormat"):
        validate_inference_service(doc)
    doc = inference_service(KServeOptions(name="digits", storage_uri="gs://b/m"))
    doc["spec"]["predictor"]["triton"] = {"storageUri": "gs://b/m"}
    with pytest.raises(EdgeDLError, match="exactly one model spec"):
        validate_inference_service(doc)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "Digits_Model"}, "DNS label"),
    ({"storage_uri": "/local/path"}, "must start with"),
    ({"memory": "2 GB"}, "quantity"),
    ({"min_replicas": 3, "max_replicas": 2}, "replicas"),
])
def test_bad_options_are_one_line_errors(kwargs, message):
    base = {"name": "digits", "storage_uri": "s3://b/m"}
    with pytest.raises(EdgeDLError, match=message):
        KServeOptions(**{**base, **kwargs})


def test_cli_package_format_kserve(zoo, tmp_path):
    out = tmp_path / "ks"
    proc = run_edgedl("package", zoo["mlp"].onnx, "--format", "kserve", "--storage-uri", "pvc://models/digits",
                      "--service-name", "digits-mlp", "--cpu", "2", "--memory", "512Mi", "-o", out, "--json")
    report = json.loads(proc.stdout)
    doc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert doc == report["inference_service"] and doc["metadata"]["name"] == "digits-mlp"
    assert doc["spec"]["predictor"]["model"]["resources"]["requests"] == {"cpu": "2", "memory": "512Mi"}
    missing = run_edgedl("package", zoo["mlp"].onnx, "--format", "kserve", "-o", tmp_path / "x", check=False)
    assert missing.returncode == 1 and "--storage-uri" in missing.stderr and not (tmp_path / "x").exists()
