"""``edgedl package``: a real bundle of zoo models for an aarch64 profile, its manifest and wheelhouse, and the
refusal of a tampered bundle by the manifest check and by the real ``edgedl serve``."""

from __future__ import annotations

import json
import os
import subprocess
import shutil
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import ROOT, free_ports, run_edgedl
from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import sha256_file, verify_manifest

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}


@pytest.fixture(scope="module")
def rpi5_bundle(zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("package") / "digits-rpi5"
    run_edgedl("package", zoo["cnn"].onnx, zoo["mlp"].onnx, "--target", "rpi5", "-o", out, env=CACHE_ENV)
    return out


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def test_bundle_layout_manifest_and_hashes(rpi5_bundle, zoo):
    manifest = verify_manifest(rpi5_bundle)
    assert manifest["profile"]["name"] == "rpi5" and manifest["python"] == "3.11"
    names = [m["name"] for m in manifest["models"]]
    assert names == ["cnn", "mlp"]
    cnn = manifest["models"][0]
    assert (rpi5_bundle / "models/cnn/1/model.onnx").read_bytes() == zoo["cnn"].onnx.read_bytes()
    assert cnn["sha256"] == cnn["source"]["sha256"] == sha256_file(zoo["cnn"].onnx)
    assert cnn["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert cnn["labels"] == [str(i) for i in range(10)]
    # every file but the manifest itself is hashed, and the hashes are right
    on_disk = {p.relative_to(rpi5_bundle).as_posix() for p in rpi5_bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert sha256_file(rpi5_bundle / name) == digest
    # the server is pointed at models/: its own manifest covers the repository
    verify_manifest(rpi5_bundle / "models")
    assert (rpi5_bundle / "models/cnn/config.pbtxt").read_text().startswith('name: "cnn"')


def test_wheelhouse_is_for_the_target_and_pinned(rpi5_bundle):
    wheels = sorted(p.name for p in (rpi5_bundle / "wheels").glob("*.whl"))
    binary = [w for w in wheels if not w.endswith("-none-any.whl")]
    assert binary and all("aarch64" in w for w in binary), binary
    assert any(w.startswith("onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64") for w in wheels)
    for needed in ("numpy-", "click-", "rich-", "uvicorn-", "httptools-", "orjson-", "edgedl-0.1.0-py3-none-any.whl"):
        assert any(w.startswith(needed) for w in wheels), needed
    assert not any(w.startswith(("torch-", "onnx-", "scikit")) for w in wheels)  # the device never gets torch
    pins = [line for line in (rpi5_bundle / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert "onnxruntime==1.32.0" in pins and all("==" in p for p in pins)
    assert len(pins) == len(wheels)
    with zipfile.ZipFile(next((rpi5_bundle / "wheels").glob("edgedl-*.whl"))) as whl:
        members = whl.namelist()
    assert "edgedl/runtime/manifest.py" in members and "edgedl/runtime/server/repository.py" in members


def test_scripts_unit_dockerfile_and_tarball(rpi5_bundle):
    start = (rpi5_bundle / "start.sh").read_text()
    assert "-m edgedl serve \"$HERE\" --host" in start  # the bundle: its manifest is required and checked
    assert (rpi5_bundle / "start.sh").stat().st_mode & 0o111
    assert "ExecStart=/opt/edgedl/current/start.sh" in (rpi5_bundle / "edgedl.service").read_text()
    docker = (rpi5_bundle / "Dockerfile").read_text()
    assert docker.splitlines()[2] == "FROM arm64v8/python:3.11-slim-bookworm"
    assert "--no-index --find-links /opt/edgedl/wheels" in docker
    assert "LIMITS=small" in start and '--limits "$LIMITS"' in start  # a Pi gets the small request limits
    assert json.loads((rpi5_bundle / "manifest.json").read_text())["server"]["limits"] == "small"
    assert "EDGEDL_REQUIRE_KEY=1" in docker  # a container listens on 0.0.0.0: no key, no start
    env = {k: v for k, v in os.environ.items() if k != "EDGEDL_API_KEY"}
    refused = subprocess.run(["sh", str(rpi5_bundle / "start.sh")], env={**env, "EDGEDL_REQUIRE_KEY": "1",
                             "EDGEDL_HOST": "0.0.0.0"}, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "EDGEDL_API_KEY" in refused.stderr and len(refused.stderr.splitlines()) == 1
    tarball = rpi5_bundle.parent / f"{rpi5_bundle.name}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert f"{rpi5_bundle.name}/manifest.json" in names and f"{rpi5_bundle.name}/models/cnn/1/model.onnx" in names


def test_jetson_bundle_uses_l4t_base_and_python_310(zoo, tmp_path):
    out = tmp_path / "jetson"
    proc = run_edgedl("package", zoo["mlp"].onnx, "--target", "jetson-orin-nano", "-o", out, "--json", "--no-tarball",
                      env=CACHE_ENV)
    result = json.loads(proc.stdout)
    assert result["python"] == "3.10" and result["runtime"]["onnxruntime"] == "1.23.2"
    assert "FROM nvcr.io/nvidia/l4t-jetpack" in (out / "Dockerfile").read_text()
    assert any("cp310" in w and "aarch64" in w for w in result["runtime"]["wheels"])
    assert not (tmp_path / "jetson.tar.gz").exists()


def test_tampered_model_is_refused_naming_the_file(rpi5_bundle, tmp_path):
    bundle = _copy(rpi5_bundle, tmp_path / "b")
    model = bundle / "models/mlp/1/model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(EdgeDLError, match="models/mlp/1/model.onnx does not match its sha256"):
        verify_manifest(bundle)
    with pytest.raises(EdgeDLError, match="mlp/1/model.onnx does not match its sha256"):
        verify_manifest(bundle / "models")


def test_missing_and_injected_files_are_refused(rpi5_bundle, tmp_path):
    bundle = _copy(rpi5_bundle, tmp_path / "b")
    (bundle / "requirements.txt").unlink()
    with pytest.raises(EdgeDLError, match="requirements.txt is missing"):
        verify_manifest(bundle)
    bundle2 = _copy(rpi5_bundle, tmp_path / "b2")
    extra = bundle2 / "models/evil/1/model.onnx"
    extra.parent.mkdir(parents=True)
    shutil.copy(bundle2 / "models/mlp/1/model.onnx", extra)
    with pytest.raises(EdgeDLError, match="models/evil/1/model.onnx is not listed"):
        verify_manifest(bundle2)
    with pytest.raises(EdgeDLError, match="evil/1/model.onnx is not listed"):
        verify_manifest(bundle2 / "models")


def test_real_serve_refuses_a_tampered_bundle(rpi5_bundle, tmp_path):
    bundle = _copy(rpi5_bundle, tmp_path / "b")
    model = bundle / "models/cnn/1/model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    proc = run_edgedl("serve", "--model-repository", bundle / "models", "--host", "127.0.0.1", "--port", "1",
                      check=False, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cnn/1/model.onnx does not match its sha256" in lines[0]


def test_bad_inputs_fail_in_one_line_and_write_nothing(zoo, tmp_path):
    cases = [
        (["--target", "rpi-5"], "did you mean 'rpi5'"),
        (["--target", "rpi5", "--python", "3.9"], "Python 3.9 is not supported by profile 'rpi5'"),
    ]
    for extra, message in cases:
        proc = run_edgedl("package", zoo["mlp"].onnx, *extra, "-o", tmp_path / "out", check=False, env=CACHE_ENV)
        assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"definitely not protobuf")
    proc = run_edgedl("package", not_onnx, "--target", "rpi5", "-o", tmp_path / "out", check=False, env=CACHE_ENV)
    assert proc.returncode == 1 and "could not load" in proc.stderr and "model.onnx" in proc.stderr
    assert not (tmp_path / "out").exists()
    # an existing, non-empty output is never overwritten
    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "precious.txt").write_text("keep me")
    proc = run_edgedl("package", zoo["mlp"].onnx, "--target", "rpi5", "-o", keep, check=False, env=CACHE_ENV)
    assert proc.returncode == 1 and "already exists and is not empty" in proc.stderr
    assert [p.name for p in keep.iterdir()] == ["precious.txt"]
    proc = run_edgedl("package", zoo["mlp"].onnx, zoo["mlp"].onnx, "--target", "rpi5", "-o", tmp_path / "o2",
                      check=False, env=CACHE_ENV)
    assert proc.returncode == 1 and "both be named 'mlp'" in proc.stderr
    proc = run_edgedl("package", zoo["mlp"].onnx, "--target", "rpi5", "-o", tmp_path / "o3", "--port", "8000",
                      "--grpc-port", "8000", check=False, env=CACHE_ENV)
    assert proc.returncode == 1 and "--grpc-port 8000 is the HTTP --port too" in proc.stderr
    assert not (tmp_path / "o3").exists()


def test_grpc_port_is_carried_into_the_bundle(zoo, tmp_path):
    """--grpc-port: hpack and protobuf for the target in the wheelhouse (no grpcio: the server speaks HTTP/2 itself), the port in start.sh, the Dockerfile and
    the manifest; the bundle's start.sh (run with this machine's Python) serves gRPC there, and
    EDGEDL_GRPC_PORT= (empty) turns it off."""
    import grpc
    import tritonclient.grpc as grpcclient

    out = tmp_path / "digits-grpc"
    run_edgedl("package", zoo["cnn"].onnx, "--target", "rpi5", "-o", out, "--grpc-port", "8001", "--no-tarball",
               env=CACHE_ENV)
    manifest = verify_manifest(out)
    assert (manifest["server"]["port"], manifest["server"]["grpc_port"]) == (8000, 8001)
    wheels = [p.name for p in (out / "wheels").glob("*.whl")]
    assert any(w.startswith("hpack-") for w in wheels) and not any(w.startswith("grpcio-") for w in wheels), wheels
    assert any(w.startswith("protobuf-") for w in wheels), wheels
    assert "DEFAULT_GRPC_PORT=8001" in (out / "start.sh").read_text()
    assert "EXPOSE 8000 8001" in (out / "Dockerfile").read_text()
    http, rpc = free_ports(2)
    env = {**os.environ, "EDGEDL_PYTHON": sys.executable, "EDGEDL_HOST": "127.0.0.1", "EDGEDL_PORT": str(http),
           "EDGEDL_GRPC_PORT": str(rpc)}
    server = subprocess.Popen(["sh", str(out / "start.sh")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{rpc}")
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.is_model_ready("cnn"):
                    break
            except Exception:  # not listening yet
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.2)
        x = np.zeros((1, 1, 8, 8), np.float32)
        image = grpcclient.InferInput("image", list(x.shape), "FP32")
        image.set_data_from_numpy(x)
        assert client.infer("cnn", [image]).as_numpy("logits").shape == (1, 10)
    finally:
        server.terminate()
        server.wait(30)
    # an empty EDGEDL_GRPC_PORT serves HTTP only
    server = subprocess.Popen(["sh", str(out / "start.sh")], env={**env, "EDGEDL_GRPC_PORT": ""},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{rpc}") as channel, pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=1)
    finally:
        server.terminate()
        server.wait(30)


def test_ort_format_is_written_checked_and_hashed(zoo, tmp_path):
    from edgedl.runtime import load

    out = tmp_path / "ort-bundle"
    result = json.loads(run_edgedl("package", zoo["cnn"].onnx, "--target", "rpi4", "-o", out, "--ort", "--no-tarball",
                                   "--json", env=CACHE_ENV).stdout)
    ort = result["models"][0]["ort"]
    assert ort["path"] == "ort/cnn/model.ort" and ort["max_abs_diff_vs_onnx"] <= 1e-5
    assert verify_manifest(out)["files"]["ort/cnn/model.ort"] == ort["sha256"]
    assert "Conv" in (out / "ort/cnn/required_operators.config").read_text()
    runner = load(out / "ort/cnn/model.ort")
    feeds = runner.example_inputs({"batch": 3})
    np_out = runner.run(feeds)["logits"]
    assert np_out.shape == (3, 10)


def test_python_310_bundle_gets_the_profiles_310_pin(zoo, tmp_path):
    result = json.loads(run_edgedl("package", zoo["mlp"].onnx, "--target", "x86-server", "--python", "3.10", "-o",
                                   tmp_path / "b", "--no-tarball", "--json", env=CACHE_ENV).stdout)
    assert result["runtime"]["onnxruntime"] == "1.23.2"
    assert any(w.startswith("onnxruntime-1.23.2-cp310-cp310-") for w in result["runtime"]["wheels"])


def test_reference_outputs_are_stored_at_package_time(rpi5_bundle, zoo):
    """The bundle carries the smoke-inference reference a fleet rollout checks devices against (hashed)."""
    import numpy as np

    from edgedl.runtime import load
    from edgedl.stages import reference
    from edgedl.stages.bundle import Bundle

    manifest = verify_manifest(rpi5_bundle)
    assert manifest["reference"] == "reference.json" and "reference.json" in manifest["files"]
    with Bundle.open(rpi5_bundle) as bundle:
        ref = reference.for_bundle(bundle)
    assert ref.source.startswith("bundle: computed at package time") and [m.name for m in ref.models] == ["cnn", "mlp"]
    cnn = ref.models[0]
    x = np.array(cnn.inputs[0]["data"], np.float32).reshape(cnn.inputs[0]["shape"])
    assert x.shape == (2, 1, 8, 8)
    expected = load(zoo["cnn"].onnx).run(x)["logits"]
    got = np.array(cnn.outputs[0]["data"], np.float32).reshape(cnn.outputs[0]["shape"])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_reference_outputs_computed_for_a_bundle_without_them_are_at_its_packaged_sizes(zoo, tmp_path):
    """A bundle from elsewhere may carry no reference.json: the rollout computes one with the size options (here
    a value range) the manifest says the bundle was packaged with, as its server runs, not the model's defaults."""
    import json

    from edgedl.runtime.manifest import hash_tree
    from edgedl.stages import reference
    from edgedl.stages.bundle import Bundle

    def in_range(ref) -> bool:
        data = ref.models[0].inputs[0]["data"]
        return len(data) == 2 * 64 and all(5.0 <= x <= 6.0 for x in data)

    out = tmp_path / "cnn-ranged"
    run_edgedl("package", zoo["cnn"].onnx, "--target", "x86-server", "--input-range", "image=5..6", "-o", out,
               "--no-tarball", env=CACHE_ENV)
    with Bundle.open(out) as bundle:
        assert in_range(reference.for_bundle(bundle))  # the stored one
    (out / "reference.json").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["reference"] = None
    manifest["files"] = hash_tree(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with Bundle.open(out) as bundle:
        ref = reference.for_bundle(bundle)
    assert ref.source.startswith("computed at rollout time")
    assert in_range(ref) and ref.models[0].outputs[0]["shape"] == [2, 10]


def test_the_size_options_reach_start_sh_as_serve_parses_them():
    """package writes the options into start.sh's `edgedl serve` command; the CLI's parser reads back the same."""
    from edgedl.cli._shapes import shape_options_from
    from edgedl.runtime.signature import ShapeOptions
    from edgedl.stages.package import serve_args

    given = ShapeOptions(dims={"seq": 128}, input_shapes={"x": (1, 3, 48, 192), "sr": ()},
                         batch_axes={"state": 1, "sr": None}, value_ranges={"sr": (16000.0, 16000.0), "x": (-0.5, 1.0)})
    args = serve_args(given)
    grouped = {flag: [v for f, v in zip(args[::2], args[1::2]) if f == flag]
               for flag in ("--shape", "--input-shape", "--batch-axis", "--input-range")}
    assert shape_options_from(grouped["--shape"], grouped["--input-shape"], grouped["--batch-axis"],
                              grouped["--input-range"]) == given
    assert "sr=scalar" in args and "sr=16000..16000" in args and "state=1" in args and "sr=none" in args
