"""Remote benchmarking over the deploy SSH layer, against a real loopback sshd: models and the edgedl runtime
(no torch) are pushed, the bench worker runs on the "device", results come back with its environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgedl_testing import ROOT

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import loopback_sshd  # noqa: E402

pytestmark = pytest.mark.skipif(loopback_sshd.available() is not None, reason=str(loopback_sshd.available()))
WORKER_CONFIG = {"threads": 1, "batch": 2, "warmup": 3, "iterations": 40, "duration_s": None, "placement": False}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = loopback_sshd.start(tmp_path_factory.mktemp("sshd-bench"))
    yield server
    loopback_sshd.stop(server)


def test_remote_bench_runs_the_worker_on_the_device(sshd, zoo, tmp_path):
    from edgedl.errors import EdgeDLError
    from edgedl.stages.bench.remote import remote_bench

    remote_dir = tmp_path / "device"
    models = [zoo["mlp"].onnx, zoo["cnn"].onnx]
    out = remote_bench(sshd.target(), models, WORKER_CONFIG, remote_dir=str(remote_dir),
                       cache_dir=ROOT / "build" / "cache", progress=False)
    assert out.host == f"{sshd.user}@127.0.0.1:{sshd.port}" and out.profile == "x86-server"
    assert [r["model"] for r in out.results] == [str(m) for m in models]
    for r in out.results:
        assert r["device"] == out.host and r["batch"] == 2 and r["latency_ms"]["count"] == 40
        assert 0 < r["latency_ms"]["p50_ms"] < r["latency_ms"]["max_ms"] + 1e-9
        assert r["remote_model"].startswith(str(remote_dir.resolve()))  # measured from the pushed copy
        assert Path(r["remote_model"]).read_bytes() == Path(r["model"]).read_bytes()
    env = out.environment
    assert env["machine"] == "x86_64" and env["onnxruntime"]
    # the device's runtime venv is the bundle's: edgedl + onnxruntime, no torch
    venv_python = next(remote_dir.glob("env-*/venv/bin/python"))
    check = subprocess.run([venv_python, "-c", "import importlib.util as u, edgedl, onnxruntime;"
                            "print(u.find_spec('torch') is None, edgedl.__file__)"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # the venv's own edgedl
    assert check.stdout.split()[0] == "True" and str(remote_dir.resolve()) in check.stdout

    # a second run reuses the installed runtime (no reinstall: the venv is untouched)
    stamp = (venv_python.parent.parent.parent / ".installed").stat().st_mtime_ns
    again = remote_bench(sshd.target(), models[:1], WORKER_CONFIG, remote_dir=str(remote_dir),
                         cache_dir=ROOT / "build" / "cache", progress=False)
    assert len(again.results) == 1
    assert (venv_python.parent.parent.parent / ".installed").stat().st_mtime_ns == stamp

    with pytest.raises(EdgeDLError, match="gets no torch"):
        remote_bench(sshd.target(), models[:1], {**WORKER_CONFIG, "engine": "torch"}, remote_dir=str(remote_dir),
                     progress=False)
    with pytest.raises(EdgeDLError, match="unknown worker config key"):
        remote_bench(sshd.target(), models[:1], {**WORKER_CONFIG, "bogus": 1}, remote_dir=str(remote_dir),
                     cache_dir=ROOT / "build" / "cache", progress=False)


@pytest.mark.parametrize("use_rsync", [True, False], ids=["rsync", "tar-over-ssh"])
def test_copy_dir_both_transports(sshd, tmp_path, use_rsync):
    """A device without rsync gets a tar stream over ssh: same files, same bytes, same modes."""
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/data.bin").write_bytes(bytes(range(256)) * 1000)
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    dest = tmp_path / "dest" / "copy"
    sshd.target().copy_dir(src, str(dest), use_rsync=use_rsync)
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file())
    for rel in files:
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
    assert (dest / "run.sh").stat().st_mode & 0o111


def test_bench_cli_remote_labels_results_with_the_device(sshd, zoo, tmp_path):
    """`edgedl bench --remote`: the same table/JSON as local runs, measured on the device, labelled with it."""
    import json

    from edgedl_testing import run_edgedl

    remote_dir = tmp_path / "device"
    save = tmp_path / "remote.json"
    args = ["bench", os.path.relpath(zoo["lstm"].onnx),  *sshd.ssh_args(), "--remote-dir", remote_dir,
            "-n", "30", "--batch", "1,4", "--quiet", "--save", save]
    env = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}
    proc = run_edgedl(*args, "--json", env=env)
    report = json.loads(proc.stdout)
    assert [r["batch"] for r in report["results"]] == [1, 4]
    assert all(r["device"] == f"{sshd.user}@127.0.0.1:{sshd.port}" for r in report["results"])
    assert all(r["model_name"] == "lstm" for r in report["results"])
    assert all(r["remote_model"].startswith(str(remote_dir.resolve())) for r in report["results"])
    assert report["environment"]["device"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert json.loads(save.read_text())["results"][0]["latency_ms"]["count"] == 30

    table = run_edgedl(*args[:-2], env=env).stdout
    assert "lstm" in table and f"measured on device {sshd.user}@127.0.0.1:{sshd.port}" in table

    bad = run_edgedl(*args[:-2], "--baseline", "torch", env=env, check=False)
    assert bad.returncode == 1 and "cannot run with --remote" in bad.stderr


def test_bench_ssh_options_need_remote(zoo):
    from edgedl_testing import run_edgedl_inprocess

    proc = run_edgedl_inprocess("bench", zoo["mlp"].onnx, "--identity", "key")
    assert proc.returncode == 1 and "add --remote" in proc.stderr
