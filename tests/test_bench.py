"""`edgedl bench` end to end: the real CLI, real worker processes, real onnxruntime and torch on the trained zoo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgedl_testing import run_edgedl
from edgedl.stages.bench.report import LATENCY_KEYS, RESULT_KEYS, BenchReport
from edgedl.stages.doctor import tiny_model_bytes

FAST = ("-n", "30", "--warmup", "2")


def _json(proc) -> dict:
    return json.loads(proc.stdout)


def _one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def baseline_run(zoo, tmp_path_factory):
    """One run exercising threads, batches, two models, the torch baseline, --save and --plot."""
    out = tmp_path_factory.mktemp("bench")
    proc = run_edgedl("bench", zoo["mlp"].onnx, zoo["lstm"].onnx, "--threads", "1,2", "--batch", "3",
                      "--baseline", "torch", *FAST, "--save", out / "run.json", "--plot", out / "run.png", "--json")
    return _json(proc), out


def test_json_schema_and_every_figure(baseline_run, zoo):
    report, out = baseline_run
    assert report["schema"] == "edgedl.bench/1"
    env = report["environment"]
    assert env["onnxruntime"]["version"] and env["cpu"]["usable_cores"] >= 1 and env["python"]
    assert set(env["cpu"]["flags"]) <= {f for f in env["cpu"]["flags"]}  # a list of names
    results = report["results"]
    assert len(results) == 2 * 2 * 2  # models x threads x (ort, torch)
    for r in results:
        assert set(RESULT_KEYS) <= set(r), set(RESULT_KEYS) - set(r)
        assert set(LATENCY_KEYS) <= set(r["latency_ms"])
        lat = r["latency_ms"]
        assert lat["count"] == 30
        assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["p999_ms"] <= lat["max_ms"]
        assert len(r["latency_quantiles_ms"]) == 101 and r["latency_quantiles_ms"][50] == pytest.approx(lat["p50_ms"], abs=2e-6)
        assert r["throughput"]["samples_per_s"] == pytest.approx(3 * r["throughput"]["queries_per_s"])
        assert r["session_create_ms"] > 0 and r["first_inference_ms"] > 0
        assert r["peak_rss_mib"] >= r["startup_rss_mib"] > 10
        assert r["batch"] == 3 and r["sizes"]["batch"] == 3 and r["headline"]["metric"] == "p90"
        assert r["model_size_bytes"] == zoo[r["model_name"]].onnx.stat().st_size
    ort = [r for r in results if r["engine"] == "onnxruntime"]
    torch = [r for r in results if r["engine"] == "torch"]
    for r in ort:
        assert r["providers_used"] == ["cpu"] and r["providers_session"] == ["cpu"] and r["fallback"] == []
        assert r["placement"]["nodes"] > 0 and r["placement"]["by_provider"] == {"cpu": r["placement"]["nodes"]}
        assert r["engine_version"].startswith("onnxruntime ")
    lstm = next(r for r in ort if r["model_name"] == "lstm")
    assert lstm["sizes"] == {"batch": 3, "seq": 8}  # seq from the sizes export validated
    # a process per configuration: torch's processes carry torch, onnxruntime's do not
    assert min(r["peak_rss_mib"] for r in torch) > max(r["peak_rss_mib"] for r in ort) + 50
    for r in torch:
        assert r["engine_version"].startswith("torch ") and r["torch_model"]["threads"] == r["threads"]
        assert r["torch_model"]["recipe"].endswith(f"models/{r['model_name']}.py")
    # side-by-side ratios exist for every onnxruntime row
    loaded = BenchReport.load(out / "run.json")
    assert loaded.results == results
    assert sorted(loaded.speedups()) == [i for i, r in enumerate(results) if r["engine"] == "onnxruntime"]
    assert "vs torch" in loaded.markdown() and "×" in loaded.markdown()


def test_plot_is_a_png(baseline_run):
    _, out = baseline_run
    data = (out / "run.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_human_table_and_markdown(zoo):
    # stdout a pipe in an 80-column environment (a log file, `| tee`): the whole table, no column cut or dropped
    proc = run_edgedl("bench", zoo["cnn"].onnx, zoo["transformer"].onnx, "--shape", "seq=5", *FAST, "--no-placement",
                      env={"COLUMNS": "80"})
    header = next(ln for ln in proc.stdout.splitlines() if "p50 ms" in ln)
    assert [c.strip() for c in header.split("┃")][:9] == ["model", "engine", "thr", "batch", "p50 ms", "p90 ms",
                                                           "p99 ms", "samples/s", "peak MiB"]
    assert len(header) > 80 and "…" not in proc.stdout and "not shown" not in proc.stdout
    assert "p50 ms" in proc.stdout and "cnn" in proc.stdout and "transformer" in proc.stdout
    assert "measured on" in proc.stdout and "onnxruntime" in proc.stdout
    proc = run_edgedl("bench", zoo["transformer"].onnx, "--shape", "seq=5", *FAST, "--markdown")
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("| model | engine | thr | batch | p50 ms") for ln in lines)
    assert any(ln.startswith("| transformer | ort cpu | 1 | 1 |") for ln in lines)


def test_scenarios_and_io_binding(zoo):
    m = zoo["mlp"].onnx
    r = _json(run_edgedl("bench", m, "--scenario", "offline", "-b", "8", *FAST, "--json"))["results"][0]
    assert r["scenario"] == "offline" and r["headline"]["metric"] == "samples/s"
    assert r["samples_per_query"] == 8 and r["headline"]["value"] == pytest.approx(r["throughput"]["samples_per_s"])
    r = _json(run_edgedl("bench", m, "-s", "server", "--target-qps", "400", "--latency-bound", "200", "-n", "60",
                         "--json"))["results"][0]
    d = r["scenario_details"]
    assert r["scenario"] == "server" and r["queries"] == 60 and d["target_qps"] == 400
    assert d["latency_bound_met"] is True and d["latency_bound_ms"] == 200 and d["offered_qps"] > 0
    assert r["latency_ms"]["p50_ms"] >= d["service_p50_ms"] * 0.99  # queueing can only add
    r = _json(run_edgedl("bench", m, "-s", "multi-stream", "--streams", "2", "-b", "2", *FAST, "--json"))["results"][0]
    assert r["scenario"] == "multi-stream" and r["samples_per_query"] == 4
    r = _json(run_edgedl("bench", m, "--io-binding", "--no-spinning", *FAST, "--json"))["results"][0]
    assert r["io_binding"] is True and r["latency_ms"]["count"] == 30
    report = _json(run_edgedl("bench", m, "-d", "0.2", "--seed", "3", "--warmup", "0", "--json"))
    r = report["results"][0]
    assert report["config"]["seed"] == 3 and report["config"]["duration_s"] == 0.2
    assert r["latency_ms"]["count"] > 100 and 0.2 <= r["latency_ms"]["wall_s"] < 0.5


def test_asking_for_a_missing_provider_fails_loudly(zoo):
    m = zoo["mlp"].onnx
    for provider in ("xnnpack", "cuda", "TensorrtExecutionProvider"):
        proc = run_edgedl("bench", m, "--provider", provider, *FAST, check=False)
        _one_line_error(proc, "not available", "--allow-fallback")
    proc = run_edgedl("bench", m, "-p", "cpu,xnnpack", *FAST, "--allow-fallback", "--json", check=False)
    assert proc.returncode == 0, proc.stderr
    results = _json(proc)["results"]
    cpu, xnn = results
    assert cpu["fallback"] == [] and cpu["providers_used"] == ["cpu"]
    assert xnn["provider_requested"] == "xnnpack" and xnn["providers_used"] == ["cpu"]
    assert any("xnnpack not enabled" in f for f in xnn["fallback"])
    assert any("ran on cpu" in f for f in xnn["fallback"])
    assert "FALLBACK" in proc.stderr and "xnnpack" in proc.stderr
    table = run_edgedl("bench", m, "-p", "cuda", *FAST, "--allow-fallback").stdout
    assert "cuda→cpu (FALLBACK)" in table  # never a CPU number labelled as GPU


def test_bad_input_gives_one_line_errors(zoo, tmp_path):
    m = zoo["mlp"].onnx
    cases = [
        (("-p", "cdua"), "did you mean 'cuda'"),
        (("-s", "srever"), "did you mean 'server'"),
        (("-s", "server"), "--target-qps"),
        (("--threads", "-1"), "--threads"),
        (("--batch", "x"), "--batch"),
        (("--shape", "seq=4"), "no model has a dynamic dim"),
        (("--provider-option", "cuda:device_id=0"), "not benchmarked"),
        (("--baseline", "tensorflow"), "unknown baseline"),
        (("--input-data", tmp_path / "missing.npz"), "not found"),
        (("--save", tmp_path), "is a directory"),
        (("--plot", tmp_path / "plot.txt"), ".png"),
    ]
    for args, needle in cases:
        _one_line_error(run_edgedl("bench", m, *args, *FAST, check=False), needle)
    _one_line_error(run_edgedl("bench", tmp_path / "nope.onnx", check=False), "model file not found")
    (tmp_path / "junk.onnx").write_text("not a model")
    _one_line_error(run_edgedl("bench", tmp_path / "junk.onnx", *FAST, check=False), "could not load")
    np.savez(tmp_path / "wrong.npz", image=np.zeros((2, 64), np.float32))
    _one_line_error(run_edgedl("bench", m, "--input-data", tmp_path / "wrong.npz", *FAST, check=False),
                    "no array 'pixels'")
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(tiny_model_bytes())
    _one_line_error(run_edgedl("bench", bare, "-b", "2", "--baseline", "torch", *FAST, check=False),
                    "--torch-model")
    _one_line_error(run_edgedl("bench", bare, *FAST, check=False), "fixed batch of 2", "--batch 2")


def test_input_data_and_explicit_torch_model(zoo, tmp_path):
    import onnx

    bare = onnx.load(str(zoo["mlp"].onnx))  # the same network with its edgedl metadata stripped
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "mlp_bare.onnx"))
    x = np.random.default_rng(0).uniform(0, 1, (3, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", pixels=x)
    proc = run_edgedl("bench", tmp_path / "mlp_bare.onnx", "--input-data", tmp_path / "in.npz", "-b", "5",
                      "--torch-model", "mlp", "--torch-checkpoint", zoo["mlp"].checkpoint, *FAST, "--json")
    report = _json(proc)
    ort, torch = report["results"]
    assert report["config"]["baseline"] == "torch"  # implied by --torch-model
    assert ort["batch"] == torch["batch"] == 5 and torch["torch_model"]["recipe"] == "mlp"
    assert list(BenchReport.from_json(report).speedups()) == [0]  # the ratio pairs the two rows


def test_compare_exit_codes(baseline_run, tmp_path):
    _, out = baseline_run
    same = run_edgedl("bench", "compare", out / "run.json", out / "run.json", check=False)
    assert same.returncode == 0 and "no regression" in same.stdout
    data = json.loads((out / "run.json").read_text())
    data["results"][0]["latency_ms"]["p50_ms"] *= 1.5
    data["results"][1]["throughput"]["samples_per_s"] *= 1.03
    (tmp_path / "slower.json").write_text(json.dumps(data))
    slow = run_edgedl("bench", "compare", out / "run.json", tmp_path / "slower.json", "--threshold", "5%", check=False)
    assert slow.returncode == 3 and "REGRESSION" in slow.stdout and "1 regression(s)" in slow.stdout
    loose = run_edgedl("bench", "compare", out / "run.json", tmp_path / "slower.json", "--threshold", "60%", "--json",
                       check=False)
    assert loose.returncode == 0 and _json(loose)["passed"] is True
    as_json = _json(run_edgedl("bench", "compare", out / "run.json", tmp_path / "slower.json", "--json", check=False))
    assert as_json["regressions"] == 1 and as_json["changes"][0]["verdict"] == "REGRESSION"
    _one_line_error(run_edgedl("bench", "compare", out / "run.json", tmp_path / "nope.json", check=False), "not found")
    _one_line_error(run_edgedl("bench", "compare", out / "run.json", out / "run.json", "--threshold", "lots",
                               check=False), "--threshold")
    assert "OLD NEW" in run_edgedl("bench", "compare", "--help").stdout


def test_worker_runs_standalone_without_torch(zoo, tmp_path):
    """The device-side worker: numpy + onnxruntime only (torch, onnx, rich and click made unimportable)."""
    config = {"model": str(zoo["cnn"].onnx), "iterations": 20, "duration_s": None, "batch": 2}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    code = ("import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('torch', 'onnx', 'rich', 'click')]; "
            f"sys.argv = ['worker', {str(tmp_path / 'cfg.json')!r}]; "
            "runpy.run_module('edgedl.stages.bench.worker', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["latency_ms"]["count"] == 20 and result["batch"] == 2 and "torch" not in result["engine_version"]
    bad = subprocess.run([sys.executable, "-m", "edgedl.stages.bench.worker", '{"model": "/nope.onnx"}'],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "model file not found" in json.loads(bad.stdout)["error"]
