"""Fail closed, and authenticity: the real ``edgedl serve`` refuses a bundle that lost a manifest (and had a model
swapped), serves ``edgedl serve BUNDLE`` (directory or .tar.gz) directly, and with ``--verify-key`` only what the
key signed (``edgedl package --sign``, OpenSSH ``ssh-keygen -Y`` signatures) - a re-hashed manifest is refused, at
start and at a reload. ``edgedl deploy --verify-key`` hands the key to the device, which then refuses unsigned
releases itself (loopback OpenSSH)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import ROOT, assert_one_line_error, rehashed_bundle, run_edgedl

sys.path.insert(0, str(Path(__file__).parent / "serve"))
sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import loopback_sshd  # noqa: E402
from serve_helpers import ServerProcess  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}


def keypair(directory: Path, name: str, kind: str = "ed25519") -> tuple[Path, Path]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", str(key)], check=True)
    return key, key.with_name(f"{name}.pub")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    signer, signer_pub = keypair(d, "signer")
    _, other_pub = keypair(d, "other")
    return {"signer": signer, "pub": signer_pub, "other_pub": other_pub}


@pytest.fixture(scope="module")
def bundles(zoo, keys, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trust")
    out = {"signed": base / "signed", "unsigned": base / "unsigned"}
    proc = run_edgedl("package", zoo["mlp"].onnx, "--target", "x86-server", "-o", out["signed"], "--sign", keys["signer"],
                      env=CACHE_ENV)
    assert f"signed: {out['signed'] / 'manifest.json.sig'} (check it with --verify-key {keys['pub']})" in proc.stdout
    run_edgedl("package", zoo["mlp"].onnx, "--target", "x86-server", "-o", out["unsigned"], "--no-tarball", env=CACHE_ENV)
    out["tarball"] = base / "signed.tar.gz"
    # a swapped model with both manifests re-hashed: every hash matches, the signature cannot
    out["rehashed"] = rehashed_bundle(out["signed"], base / "rehashed", "models/mlp/1/model.onnx",
                                      zoo["cnn"].onnx.read_bytes())
    return out


def serve(*args):
    return run_edgedl("serve", *args, "--host", "127.0.0.1", "--port", "1", check=False, timeout=60)


def served_models(server: ServerProcess) -> list[str]:
    import tritonclient.http as httpclient

    return sorted(m["name"] for m in httpclient.InferenceServerClient(server.url).get_model_repository_index())


def test_a_signed_bundle_is_served_directly_from_its_directory_and_its_tarball(bundles, keys, zoo):
    import tritonclient.http as httpclient
    from edgedl.runtime import load
    from edgedl.runtime.manifest import verify_signature

    assert verify_signature(bundles["signed"], keys["pub"])["server"]["port"] == 8000
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    for source in (bundles["signed"], bundles["tarball"]):
        with ServerProcess(source, "--verify-key", keys["pub"]) as server:
            assert served_models(server) == ["mlp"]
            inp = httpclient.InferInput(load(zoo["mlp"].onnx).inputs[0].name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = httpclient.InferenceServerClient(server.url).infer("mlp", [inp]).as_numpy("logits")
            np.testing.assert_allclose(got, load(zoo["mlp"].onnx).run(x)["logits"], rtol=0, atol=1e-6)
    with ServerProcess(bundles["unsigned"]) as server:  # no key asked for: the hashes are still checked
        assert served_models(server) == ["mlp"]


def test_a_bundle_that_lost_a_manifest_is_refused(bundles, zoo, tmp_path):
    # models/manifest.json deleted and the model swapped: the bundle's own manifest still covers models/
    b = shutil.copytree(bundles["unsigned"], tmp_path / "no-repo-manifest")
    (b / "models/manifest.json").unlink()
    shutil.copyfile(zoo["cnn"].onnx, b / "models/mlp/1/model.onnx")
    assert_one_line_error(serve("--model-repository", b / "models"), "models/manifest.json is missing")
    assert_one_line_error(serve(b), "models/manifest.json is missing")
    assert_one_line_error(serve(b / "models/mlp/1/model.onnx"), "models/manifest.json is missing")
    # both manifests gone: `serve BUNDLE` refuses, unless told to serve it unverified
    (b / "manifest.json").unlink()
    assert_one_line_error(serve(b), "has no manifest.json", "--allow-missing-manifest")
    with ServerProcess(b, "--allow-missing-manifest") as server:
        assert served_models(server) == ["mlp"]


@pytest.mark.parametrize("case, fragment", [
    ("rehashed", "does not verify with"),
    ("other_key", "does not verify with"),
    ("unsigned", "is not signed (no manifest.json.sig)"),
    ("plain_repository", "is not inside an edgedl bundle"),
])
def test_verify_key_refuses_what_it_did_not_sign(bundles, keys, tmp_path, case, fragment):
    key = keys["other_pub"] if case == "other_key" else keys["pub"]
    target = {"rehashed": bundles["rehashed"], "other_key": bundles["signed"], "unsigned": bundles["unsigned"]}.get(case)
    if case == "plain_repository":
        target = shutil.copytree(bundles["signed"] / "models", tmp_path / "repo")
        (target / "manifest.json").unlink()
        assert_one_line_error(serve("--model-repository", target, "--verify-key", key), fragment)
        return
    assert_one_line_error(serve(target, "--verify-key", key), fragment)
    assert_one_line_error(serve("--model-repository", target / "models", "--verify-key", key), fragment)
    assert_one_line_error(run_edgedl("serve", target, "--port", "1", check=False, env={"EDGEDL_VERIFY_KEY": str(key)}), fragment)


def test_a_reload_checks_the_signature_again(bundles, keys, zoo, tmp_path):
    b = shutil.copytree(bundles["signed"], tmp_path / "live")
    with ServerProcess(b, "--verify-key", keys["pub"]) as server:
        assert served_models(server) == ["mlp"]
        rehashed = rehashed_bundle(b, tmp_path / "swap", "models/mlp/1/model.onnx", zoo["cnn"].onnx.read_bytes())
        for name in ("manifest.json", "models/manifest.json", "models/mlp/1/model.onnx"):
            shutil.copyfile(rehashed / name, b / name)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload failed" not in server.stderr and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload failed, still serving the previous models" in server.stderr and "does not verify" in server.stderr
        assert served_models(server) == ["mlp"]


def test_package_sign_refuses_a_missing_or_non_ed25519_key_before_any_work(zoo, tmp_path):
    rsa, _ = keypair(tmp_path, "rsa", "rsa")
    for key, fragment in ((tmp_path / "nope", "does not exist"), (rsa, "is a RSA key")):
        proc = run_edgedl("package", zoo["mlp"].onnx, "-t", "x86-server", "-o", tmp_path / "b", "--sign", key,
                          check=False, env=CACHE_ENV)
        assert_one_line_error(proc, fragment)
    assert not (tmp_path / "b").exists()
    _, rsa_pub = rsa, rsa.with_name("rsa.pub")
    from edgedl.errors import EdgeDLError
    from edgedl.runtime.manifest import verify_key_lines

    with pytest.raises(EdgeDLError, match="not an ed25519 public key"):
        verify_key_lines(rsa_pub)


# --- deploy --verify-key: the device verifies before switching, and keeps the key ------------------------------------

@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with loopback_sshd.running(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def test_deploy_verify_key_is_checked_here_and_kept_by_the_device(sshd, bundles, keys, tmp_path):
    import tritonclient.http as httpclient

    remote_dir = tmp_path / "device"
    port = str(loopback_sshd.free_port())
    conn = [*sshd.cli_args(remote_dir), "--serve-host", "127.0.0.1", "--serve-port", port]
    try:
        # re-hashed: refused here, before anything is copied
        proc = run_edgedl("deploy", bundles["rehashed"], *conn, "--verify-key", keys["pub"], check=False)
        assert_one_line_error(proc, "does not verify with")
        assert not (remote_dir / "staging").exists()

        result = json.loads(run_edgedl("deploy", bundles["signed"], *conn, "--verify-key", keys["pub"], "--json").stdout)
        trusted = list((remote_dir / "trust").glob("*.pub"))
        assert len(trusted) == 1 and trusted[0].read_text().split()[:2] == keys["pub"].read_text().split()[:2]
        assert f"EDGEDL_VERIFY_KEY='{trusted[0]}'" in (remote_dir / "service.env").read_text()
        assert "edgedl serve" in (remote_dir / "current/start.sh").read_text()
        assert sorted(m["name"] for m in httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_model_repository_index()) == ["mlp"]

        # the device now refuses an unsigned release on its own (no --verify-key given this time)
        proc = run_edgedl("deploy", bundles["unsigned"], *conn, check=False)
        assert_one_line_error(proc, "the bundle is not signed", "refusing release", "the running release was not touched")
        assert not (remote_dir / "staging").exists()
        assert json.loads(run_edgedl("deploy", "status", *sshd.cli_args(remote_dir), "--json").stdout)["current"] == result["release"]
    finally:
        loopback_sshd.stop_release_services(remote_dir)
