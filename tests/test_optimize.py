"""`edgedl optimize` end to end on the real zoo: the real CLI (in process), quantize's Workbench and gate, the
bench worker in its own processes, the cache on disk, and a loopback SSH device. Budgets and spaces are small;
speed is never asserted (benchmarks/optimize_zoo.py measures it), only what was measured and reused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgedl_testing import ROOT, run_edgedl_inprocess
from edgedl.runtime import Runner
from edgedl.runtime.manifest import verify_manifest

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import loopback_sshd  # noqa: E402

# a few configurations: fp32, dynamic and one static file; one or two intra-op threads
SMALL = ["precision=fp32,dynamic,static", "quant_format=qdq", "per_channel=true", "calibration_method=minmax",
         "calibration_samples=all", "activation_type=uint8", "weight_type=int8", "reduce_range=false",
         "saved_optimized=false",
         "graph_optimization=all", "execution_mode=sequential", "memory_arena=true"]
FIELDS = {"configuration", "accuracy_drop", "speedup", "latency_ms", "size_bytes"}


def optimize(model: Path, cache: Path, out: Path | None, *args: str, threads: str = "1") -> dict:
    space = [a for s in [*SMALL, f"intra_op_threads={threads}"] for a in ("--space", s)]
    result = run_edgedl_inprocess("optimize", model, "--target", "x86-server", "--batch", "32", "--budget", "25s",
                                  "--rounds", "3", "--cache", cache, *space, *(["-o", out] if out else []),
                                  "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def first(zoo, tmp_path_factory):
    base = tmp_path_factory.mktemp("optimize")
    report = optimize(zoo["mlp"].onnx, base / "cache", base / "out", threads="1")
    return base, report


def _same(a: dict, b: dict) -> bool:
    return a["sha256"] == b["sha256"] and a["configuration"] == b["configuration"]


def test_chosen_meets_the_budget_lies_on_the_front_and_is_not_slower_than_fp32(first, zoo):
    base, report = first
    chosen = report["chosen"]
    assert FIELDS <= set(chosen) and chosen["reason"]
    assert chosen["accuracy_drop"] is not None and chosen["accuracy_drop"] <= 1.0
    assert chosen["vs_fp32"] in ("faster", "tie", "fp32")  # never measurably slower
    assert any(_same(chosen, m) for m in report["pareto"])
    for m in report["pareto"] + report["finalists"]:
        assert FIELDS <= set(m) and len(m["rounds"]) == 3 and m["speedup"] > 0
    fp32 = [m for m in report["finalists"] if m["vs_fp32"] == "fp32"]
    assert len(fp32) == 1 and fp32[0]["speedup"] == 1.0 and fp32[0]["configuration"]["batch"] == 32
    # every candidate tried lies in the space asked for, and was built, judged and timed (or said why not)
    assert report["space_size"] == 3 and report["space"]["intra_op_threads"] == [1]
    statuses = {c["label"]: c["status"] for c in report["candidates"]}
    assert set(statuses.values()) <= {"timed", "pruned", "inaccurate", "build failed", "duplicate", "timing failed"}
    assert {c["configuration"]["precision"] for c in report["candidates"]} == {"fp32", "dynamic", "static"}
    assert report["work"]["built"] == 2 and report["work"]["timed"] > 0 and report["fp32_accuracy"] > 90
    # the outputs a person acts on
    out = base / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "pareto.png", "report.json"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["chosen"]["label"] == chosen["label"]
    config = json.loads((out / "config.json").read_text())
    assert config["schema"] == "edgedl.optimize.config/1" and config["configuration"] == chosen["configuration"]
    with Runner(out / "model.onnx") as runner:  # the input's metadata, plus how this file was made
        assert runner.metadata["recipe"] == "mlp"
        assert runner.metadata["optimization"]["configuration"] == chosen["configuration"]


def test_quantize_and_bench_accept_the_chosen_configuration(first, zoo, tmp_path):
    base, report = first
    config = base / "out" / "config.json"
    chosen = report["chosen"]["configuration"]
    rebuilt = tmp_path / "rebuilt.onnx"
    result = run_edgedl_inprocess("quantize", zoo["mlp"].onnx, "-o", rebuilt, "--config", config,
                                  "--speed-seconds", "0.05", "--no-progress", "--json")
    if chosen["precision"] == "fp32":
        assert result.returncode == 1 and "nothing to quantize" in result.stderr
    else:  # the same conversion: the same graph and weights as the file optimize timed
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["mode"] == chosen["precision"] and data["config"]["preset"] == "x86-avx2"
        want, got = onnx.load(str(base / "out" / "model.onnx")), onnx.load(str(rebuilt))
        assert [n.op_type for n in got.graph.node] == [n.op_type for n in want.graph.node]
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in want.graph.initializer}
        assert all(np.array_equal(onnx.numpy_helper.to_array(i), inits[i.name]) for i in got.graph.initializer)
    result = run_edgedl_inprocess("bench", base / "out" / "model.onnx", "--config", config, "-n", "20", "--quiet",
                                  "--no-placement", "--json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["results"][0]
    assert row["batch"] == chosen["batch"] == 32 and row["threads"] == chosen["intra_op_threads"]
    assert row["scenario"] == "single-stream"
    # an option given on the command line wins over the file
    result = run_edgedl_inprocess("bench", base / "out" / "model.onnx", "--config", config, "-b", "4", "-n", "20",
                                  "--quiet", "--no-placement", "--json")
    assert json.loads(result.stdout)["results"][0]["batch"] == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    result = run_edgedl_inprocess("bench", base / "out" / "model.onnx", "--config", bad)
    assert result.returncode == 1 and "not an edgedl optimize configuration" in result.stderr


def test_a_second_run_reuses_everything_and_packages_the_same_choice(first, zoo, tmp_path, monkeypatch):
    base, report = first
    monkeypatch.setenv("EDGEDL_CACHE", str(ROOT / "build" / "cache"))  # the wheelhouse the package tests use
    again = optimize(zoo["mlp"].onnx, base / "cache", tmp_path / "out", "--package", threads="1")
    assert again["work"]["built"] == again["work"]["evaluated"] == again["work"]["timed"] == 0
    assert again["work"]["cache_hits"] > 0 and again["work"]["cache_misses"] == 0
    assert _same(again["chosen"], report["chosen"]) and again["chosen"]["reason"] == report["chosen"]["reason"]
    assert [c["label"] for c in again["candidates"]] == [c["label"] for c in report["candidates"]]
    assert again["spent_s"] == pytest.approx(report["spent_s"])  # cached work charged at what it cost
    manifest = verify_manifest(tmp_path / "out" / "bundle")
    assert manifest["profile"]["name"] == "x86-server" and manifest["models"][0]["name"] == "mlp"
    record = manifest["optimization"]
    assert record["chosen"]["label"] == report["chosen"]["label"] and record["chosen"]["reason"]
    assert record["chosen"]["latency_ms"] == report["chosen"]["latency_ms"] and record["pareto"]
    assert record["config"]["schema"] == "edgedl.optimize.config/1"


def test_a_widened_search_reuses_the_files_and_timings_it_already_has(first, zoo):
    base, report = first
    wider = optimize(zoo["mlp"].onnx, base / "cache", None, threads="1,2")
    assert wider["space_size"] > report["space_size"]
    assert wider["work"]["built"] == 0 and wider["work"]["evaluated"] == 0  # the same three files, judged once
    rung_timings = sum(len(c["rungs"]) for c in wider["candidates"])
    assert 0 < wider["work"]["timed"] < rung_timings + 3 * len(wider["finalists"])
    assert any(c["configuration"]["intra_op_threads"] == 2 for c in wider["candidates"])


@pytest.mark.parametrize("case", ["fp16_on_cpu", "output_not_empty", "unknown_target", "identity_without_device",
                                  "unknown_node", "unknown_node_in_file", "missing_node_file", "unknown_knob"])
def test_bad_input_fails_in_one_line_and_writes_nothing(zoo, tmp_path, case):
    model = zoo["mlp"].onnx
    args = {"fp16_on_cpu": ["--space", "precision=fp16,fp32"], "output_not_empty": ["-o", tmp_path],
            "unknown_target": [], "identity_without_device": ["-i", tmp_path / "key"],
            "unknown_node": ["--exclude-nodes", "/nope"], "unknown_knob": ["--space", "intra_op_thread=2"],
            # the file `quantize --bisect` writes is one set of the search space
            "unknown_node_in_file": ["--exclude-nodes", f"@{tmp_path / 'nodes.txt'}"],
            "missing_node_file": ["--exclude-nodes", f"@{tmp_path / 'missing.txt'}"]}[case]
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "nodes.txt").write_text("# kept in float\n/nope\n")
    target = "rpi55" if case == "unknown_target" else "x86-server"
    result = run_edgedl_inprocess("optimize", model, "--target", target, "--budget", "5s", "--cache",
                                  tmp_path / "cache", *args)
    assert result.returncode == 1
    message = result.stderr.strip()
    assert message.startswith("error: ") and len(message.splitlines()) == 1 and "Traceback" not in message
    expected = {"fp16_on_cpu": "fp16 is for GPU targets", "output_not_empty": "already exists and is not empty",
                "unknown_target": "did you mean 'rpi5'", "identity_without_device": "add --device",
                "unknown_node": "no node '/nope'", "unknown_knob": "did you mean 'intra_op_threads'",
                "unknown_node_in_file": "no node '/nope'", "missing_node_file": "cannot read it"}[case]
    assert expected in message
    assert (tmp_path / "keep.txt").read_text() == "mine" and not (tmp_path / "cache").exists()


@pytest.mark.skipif(loopback_sshd.available() is not None, reason=str(loopback_sshd.available()))
def test_optimize_times_on_a_device_over_ssh(zoo, tmp_path):
    """The loopback device is an x86_64 machine reached over real OpenSSH: the runtime and the candidates' files
    are pushed as bench --remote pushes them, and every timing runs in a worker process there."""
    server = loopback_sshd.start(tmp_path / "sshd")
    try:
        remote_dir = tmp_path / "device"
        space = [a for s in ["precision=fp32,dynamic", "weight_type=int8", "saved_optimized=false",
                             "graph_optimization=all", "execution_mode=sequential", "memory_arena=true",
                             "intra_op_threads=1"] for a in ("--space", s)]
        result = run_edgedl_inprocess(
            "optimize", zoo["mlp"].onnx, "--target", "x86-server", *server.ssh_args("--device"), "--remote-dir",
            remote_dir, "--budget", "30s", "--rounds", "2", "--cache", tmp_path / "cache", *space, "--json")
    finally:
        loopback_sshd.stop(server)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"] == f"{server.user}@127.0.0.1:{server.port} (profile x86-server)"
    assert report["chosen"]["vs_fp32"] in ("faster", "tie", "fp32") and len(report["chosen"]["rounds"]) == 2
    pushed = {p.read_bytes() for p in (remote_dir / "models").glob("*.onnx")}
    assert zoo["mlp"].onnx.read_bytes() in pushed and len(pushed) == 2  # fp32 and the dynamic int8 file
    assert any(p.name.endswith("timing-inputs.npz") for p in (remote_dir / "models").iterdir())
