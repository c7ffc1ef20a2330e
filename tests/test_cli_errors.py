"""Every user error is one line, from the real CLI: outputs that cannot be written (a read-only mount, a file where
a folder must be, a full disk) are refused before the long work - or, for a disk that fills up during it, in one
line at the CLI's entry point; sizes beyond this machine's memory are refused before numpy tries; onnxruntime's own
traceback stays behind --debug; and --threads 0 means onnxruntime's default in bench, quantize and serve.

The read-only folder and the full disk are real: a bind mount remounted read-only and a tiny tmpfs, each inside a
private mount namespace (``unshare -m``) that only the one edgedl process sees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgedl_testing import EDGEDL, ROOT, assert_one_line_error, run_edgedl

sys.path.insert(0, str(Path(__file__).parent / "serve"))
from serve_helpers import ServerProcess  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}


def _namespaces_work() -> str | None:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return "needs root and unshare(1) for a private mount namespace"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=8k tmpfs /mnt"], capture_output=True)
    return None if probe.returncode == 0 else f"mount namespaces are not available here: {probe.stderr.decode()[-200:]}"


needs_mounts = pytest.mark.skipif(_namespaces_work() is not None, reason=str(_namespaces_work()))


def in_namespace(setup: str, folder: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``edgedl ARGS`` with ``setup`` (sh, ``$0`` = folder) done in a mount namespace of its own."""
    cmd = ["unshare", "-m", "sh", "-c", f'{setup} && exec "$@"', str(folder), *EDGEDL, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **CACHE_ENV})


READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"'
TINY_DISK = 'mount -t tmpfs -o size=16k tmpfs "$0"'


@needs_mounts
def test_read_only_outputs_are_refused_before_the_work(zoo, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    mlp = zoo["mlp"]
    cases = [
        (["export", "mlp", "--checkpoint", mlp.checkpoint, "-o", ro / "m.onnx"], "cannot write output path"),
        (["quantize", mlp.onnx, "-o", ro / "m.int8.onnx"], "cannot write output"),
        (["train", "mlp", "--out", ro / "ckpt"], "cannot write --out"),
        (["bench", mlp.onnx, "--save", ro / "b.json"], "cannot write --save"),
        (["bench", mlp.onnx, "--plot", ro / "b.png"], "cannot write --plot"),
        (["package", mlp.onnx, "-t", "x86-server", "-o", ro / "bundle"], "cannot write bundle directory"),
    ]
    for args, fragment in cases:
        proc = in_namespace(READ_ONLY, ro, *args)
        assert_one_line_error(proc, fragment, "Read-only file system", "nothing was done")
        assert "measured on" not in proc.stderr and "test accuracy" not in proc.stdout  # refused, not run
    assert list(ro.iterdir()) == []


def test_a_file_where_a_folder_must_be_and_a_folder_where_a_file_must_be(zoo, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_one_line_error(run_edgedl("quantize", zoo["mlp"].onnx, "-o", a_file / "m.int8.onnx", check=False),
                    f"{a_file} is a file, not a directory")
    assert_one_line_error(run_edgedl("bench", zoo["mlp"].onnx, "--save", tmp_path, check=False), "is a directory")
    assert_one_line_error(run_edgedl("train", "mlp", "--out", a_file, check=False), "is a file")
    assert_one_line_error(run_edgedl("package", zoo["mlp"].onnx, "-t", "x86-server", "-o", "/proc/edgedl-bundle", check=False,
                               env=CACHE_ENV), "cannot write bundle directory /proc/edgedl-bundle")


@needs_mounts
def test_a_disk_that_fills_up_during_the_work_is_one_line(zoo, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    proc = in_namespace(TINY_DISK, full, "quantize", zoo["mlp"].onnx, "-o", full / "mlp.int8.onnx", "--mode", "dynamic",
                       "--no-accuracy-gate")
    assert_one_line_error(proc, "No space left on device", "free disk space or write elsewhere")
    assert "Traceback" not in proc.stderr


def test_sizes_beyond_this_machines_memory_are_refused_before_allocating(zoo):
    proc = run_edgedl("bench", zoo["cnn"].onnx, "--batch", "100000000", "--iterations", "3", "--warmup", "1", check=False)
    assert_one_line_error(proc, "inputs of shape image=100000000x1x8x8 need", "GiB of memory but", "use a smaller batch")
    # the server's warm-up at --max-batch-size: refused before allocating, said in one line, no MemoryError
    with ServerProcess(zoo["cnn"].onnx, "--max-batch-size", "1000000000") as server:
        assert "inputs of shape image=1000000000x1x8x8 need" in server.stderr and "GiB of memory" in server.stderr
        assert "Traceback" not in server.stderr and "MemoryError" not in server.stderr


def test_onnxruntime_traceback_stays_behind_debug(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                               helper.make_node("Foo", ["h"], ["y"], domain="com.example")], "g", [x], [y], [w])
    model = tmp_path / "custom_op.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              model)
    proc = run_edgedl("quantize", model, "-o", tmp_path / "q.onnx", check=False)
    assert_one_line_error(proc, "com.example:Foo(-1) is not a registered function/op")
    debug = run_edgedl("quantize", model, "-o", tmp_path / "q.onnx", "--debug", check=False)
    assert "Traceback" in debug.stderr and "is not a registered function/op" in debug.stderr


def test_threads_zero_is_onnxruntimes_default_everywhere(zoo, tmp_path):
    report = json.loads(run_edgedl("bench", zoo["mlp"].onnx, "-t", "0", "--iterations", "20", "--warmup", "2",
                                   "--json").stdout)
    assert [r["threads"] for r in report["results"]] == [0] and report["results"][0]["queries"] >= 20
    out = tmp_path / "mlp.int8.onnx"
    run_edgedl("quantize", zoo["mlp"].onnx, "-o", out, "--mode", "dynamic", "--threads", "0", "--no-accuracy-gate")
    assert out.is_file()
    with ServerProcess(zoo["mlp"].onnx, "--threads", "0") as server:
        assert "ready in" in server.stderr
    assert_one_line_error(run_edgedl("bench", zoo["mlp"].onnx, "-t", "-1", check=False), "--threads")


@pytest.mark.parametrize("args, suggestion", [
    (["deploy", "statsu", "--host", "pi@raspberrypi.local"], "Did you mean 'status'?"),
    (["deploy", "rollbak"], "Did you mean 'rollback'?"),
    (["fleet", "deploi"], "Did you mean 'deploy'?"),
    (["debug", "speeed"], "Did you mean 'speed'?"),
    (["bench", "compair"], None),  # bench's first word is a model path: no guess at a subcommand
])
def test_a_mistyped_subcommand_gets_a_did_you_mean_like_the_top_level(args, suggestion):
    from edgedl_testing import run_edgedl_inprocess

    proc = run_edgedl_inprocess(*args)
    if suggestion is None:
        assert proc.returncode != 0 and "Did you mean" not in proc.stderr
        return
    assert_one_line_error(proc, "No such command", suggestion, code=2)


@pytest.mark.parametrize("args, says", [
    (["--threads", "-1"], "threads must be >= 0 (0 lets onnxruntime choose), got -1; pass --threads 0"),
    (["--max-batch-size", "-1"], "max batch size must be >= 0, got -1; pass --max-batch-size 0"),
    (["--instances", "0"], "instances must be >= 1, got 0; pass --instances 1"),
    (["--model-name", "a/b"], "may only hold letters, digits, '_', '-' and '.'; pass --model-name NAME"),
])
def test_the_server_says_what_is_wrong_and_the_cli_names_the_flag(zoo, args, says):
    """The runtime's ServerConfig words its errors in its own terms (EdgeDLError.option); serve adds the flag."""
    from edgedl_testing import run_edgedl_inprocess

    assert_one_line_error(run_edgedl_inprocess("serve", zoo["mlp"].onnx, "--port", "0", *args), says)
