"""Bench building blocks without subprocesses: option parsing, input sizes, placement parsing, compare,
CPU detection from real /proc/cpuinfo texts."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from edgedl.errors import EdgeDLError
from edgedl.runtime import Runner, RunnerConfig
from edgedl.runtime.tensors import TensorInfo
from edgedl.stages.bench.compare import compare_reports
from edgedl.cli._shapes import parse_dim
from edgedl.runtime.signature import ShapeOptions, Signature
from edgedl.stages.bench.config import BenchConfig, parse_int_list, parse_percent, parse_provider_option
from edgedl.stages.machine import parse_cpuinfo
from edgedl.stages.bench.inputs import feed_sizes, load_npz_feeds, make_feeds
from edgedl.stages.profiling import foreign_nodes, parse_profile, profile_placement
from edgedl.stages.bench.report import BenchReport, config_key
from edgedl.stages.doctor import tiny_model_bytes

PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 1
Features\t: fp asimd evtstrm crc32 cpuid
CPU part\t: 0xd08

Hardware\t: BCM2835
Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
ORIN_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm"
X86_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni
"""


def test_option_parsers_accept_good_and_explain_bad_input():
    assert parse_int_list("1, 2,4,2", "--threads") == (1, 2, 4)
    for bad in ("0", "a", "1,-2", ""):
        with pytest.raises(EdgeDLError, match="--threads"):
            parse_int_list(bad, "--threads")
    assert parse_dim("seq=16") == ("seq", 16)
    with pytest.raises(EdgeDLError, match="DIM=SIZE"):
        parse_dim("seq:16")
    assert parse_provider_option("cuda:device_id=0") == ("CUDAExecutionProvider", "device_id", "0")
    assert parse_provider_option("TensorrtExecutionProvider:trt_fp16_enable=1")[0] == "TensorrtExecutionProvider"
    with pytest.raises(EdgeDLError, match="did you mean 'cuda'"):
        parse_provider_option("cdua:device_id=0")
    with pytest.raises(EdgeDLError, match="PROVIDER:KEY=VALUE"):
        parse_provider_option("device_id=0")
    assert parse_percent("5%") == 5.0 and parse_percent("12.5") == 12.5
    with pytest.raises(EdgeDLError):
        parse_percent("five")


def test_bench_config_validates_and_expands(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model_bytes())
    cfg = BenchConfig([model], providers=("CPU", "cpu"), threads=(1, 2), batches=(1, 8), baseline="torch")
    assert cfg.providers == ("CPUExecutionProvider",)
    runs = cfg.configurations()
    assert len(runs) == 1 * 2 * 2 * 2  # model x threads x batch x (ort cpu + torch)
    assert [(r.engine, r.threads, r.batch) for r in runs[:2]] == [("onnxruntime", 1, 1), ("torch", 1, 1)]
    assert all(not r.placement for r in runs if r.engine == "torch")
    bad = [
        (dict(scenario="srever"), "did you mean 'server'"),
        (dict(scenario="server"), "--target-qps"),
        (dict(target_qps=10.0), "server only"),
        (dict(baseline="tf"), "unknown baseline"),
        (dict(provider_options={"cuda": {"device_id": "0"}}), "not benchmarked"),
        (dict(iterations=0), "--iterations"),
        (dict(input_data=tmp_path / "none.npz"), "not found"),
    ]
    for kw, msg in bad:
        with pytest.raises(EdgeDLError, match=msg):
            BenchConfig([model], **kw)
    with pytest.raises(EdgeDLError, match="not found"):
        BenchConfig([tmp_path / "missing.onnx"])


def _sig(infos, meta=None, **options):
    return Signature.of(infos, [], meta or {}, ShapeOptions(**options))


def test_sizes_come_from_batch_shape_option_or_export_validation():
    infos = [TensorInfo("tokens", np.dtype(np.float32), ("batch", "seq", 8), "tensor(float)")]
    meta = {"validation": {"checked_sizes": [{"batch": 2, "seq": 8}, {"batch": 5, "seq": 8}]}}

    def sizes(sig, batch):
        return feed_sizes(sig, sig.feeds(batch))

    assert sizes(_sig(infos, meta), 4) == {"batch": 4, "seq": 8}
    assert sizes(_sig(infos, meta, dims={"seq": 3}), 4) == {"batch": 4, "seq": 3}
    with pytest.raises(EdgeDLError, match="seq=N"):
        _sig(infos).feeds(1)
    with pytest.raises(EdgeDLError, match="did you mean 'seq'"):
        _sig(infos, meta, dims={"sq": 3})
    fixed = [TensorInfo("x", np.dtype(np.float32), (2, 4), "tensor(float)")]
    with pytest.raises(EdgeDLError, match="at batch 2"):
        _sig(fixed).feeds(1)
    feeds = make_feeds(_sig(infos, dims={"seq": 5}), 3, seed=0)
    again = make_feeds(_sig(infos, dims={"seq": 5}), 3, seed=0)
    assert feeds["tokens"].shape == (3, 5, 8) and feeds["tokens"].dtype == np.float32
    assert np.array_equal(feeds["tokens"], again["tokens"])  # the same inputs for every engine
    ids = [TensorInfo("ids", np.dtype(np.int64), ("batch", 6), "tensor(int64)")]
    meta_ids = {"inputs": [{"name": "ids", "value_range": [100, 104]}]}
    arr = make_feeds(_sig(ids, meta_ids), 50, seed=1)["ids"]
    assert arr.dtype == np.int64 and arr.min() >= 100 and arr.max() <= 104 and len(np.unique(arr)) == 5


def test_npz_inputs_are_sliced_or_repeated_to_the_batch(tmp_path):
    infos = _sig([TensorInfo("x", np.dtype(np.float32), ("batch", 4), "tensor(float)")])
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "in.npz", x=data)
    assert np.array_equal(load_npz_feeds(infos, tmp_path / "in.npz", 2)["x"], data[:2])
    five = load_npz_feeds(infos, tmp_path / "in.npz", 5)["x"]
    assert five.shape == (5, 4) and np.array_equal(five[3:], data[:2])
    np.savez(tmp_path / "wrong.npz", y=data)
    with pytest.raises(EdgeDLError, match="no array 'x'"):
        load_npz_feeds(infos, tmp_path / "wrong.npz", 1)
    np.savez(tmp_path / "f64.npz", x=data.astype(np.float64))
    with pytest.raises(EdgeDLError, match="expects float32"):
        load_npz_feeds(infos, tmp_path / "f64.npz", 1)
    (tmp_path / "junk.npz").write_text("not an archive")
    with pytest.raises(EdgeDLError, match="cannot read"):
        load_npz_feeds(infos, tmp_path / "junk.npz", 1)


def test_npz_with_a_scalar_and_a_batch_on_axis_1(tmp_path):
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    infos = [TensorInfo("input", f32, ("dim0_0", "dim0_1"), "tensor(float)", frozenset({0, 1})),
             TensorInfo("state", f32, (2, "dim1_1", 128), "tensor(float)", frozenset({1})),
             TensorInfo("sr", i64, (), "tensor(int64)")]
    sig = _sig(infos)
    assert [s.batch_axis for s in sig.inputs] == [0, 1, None]
    audio = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    state = np.zeros((2, 3, 128), np.float32)
    np.savez(tmp_path / "vad.npz", input=audio, state=state, sr=np.array(16000, np.int64))
    feeds = load_npz_feeds(sig, tmp_path / "vad.npz", 5)
    assert feeds["input"].shape == (5, 512) and feeds["state"].shape == (2, 5, 128)
    assert feeds["sr"].shape == () and int(feeds["sr"]) == 16000
    assert np.array_equal(feeds["input"][3:], audio[:2])
    assert feed_sizes(sig, feeds) == {"batch": 5, "input[1]": 512}
    np.savez(tmp_path / "ragged.npz", input=audio, state=np.zeros((2, 4, 128), np.float32), sr=np.array(8000))
    with pytest.raises(EdgeDLError, match="different numbers of samples"):
        load_npz_feeds(sig, tmp_path / "ragged.npz", 2)


def test_placement_from_a_real_onnxruntime_profile():
    model = tiny_model_bytes()
    config = dict(providers=("cpu",), graph_optimization="disable")
    x = np.ones((2, 4), np.float32)
    placement = profile_placement(lambda: Runner(model, RunnerConfig(**config, profile=True)),
                                  lambda r: r.run({"x": x}), runs=2)
    assert placement["nodes"] == 3 and placement["by_provider"] == {"cpu": 3}
    assert placement["ops_by_provider"]["cpu"] == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert foreign_nodes(placement, "CPUExecutionProvider") == {}
    assert foreign_nodes(placement, "CUDAExecutionProvider") == {"cpu": 3}


def test_placement_parser_reads_mixed_providers():
    def node(name, op, provider):
        return {"cat": "Node", "name": f"{name}_kernel_time", "args": {"op_name": op, "provider": provider}}

    events = [node("a", "Conv", "CUDAExecutionProvider"), node("a", "Conv", "CUDAExecutionProvider"),
              node("b", "Shape", "CPUExecutionProvider"), {"cat": "Node", "name": "b_fence_before", "args": {}},
              node("trt", "TRTKernel_graph_main_0", "TensorrtExecutionProvider"), {"cat": "Session", "name": "x"}]
    p = parse_profile(events)
    assert p["nodes"] == 3
    assert p["by_provider"] == {"cuda": 1, "cpu": 1, "tensorrt": 1}
    assert foreign_nodes(p, "CUDAExecutionProvider") == {"cpu": 1, "tensorrt": 1}


def test_shape_computation_on_the_cpu_is_not_a_fallback():
    def node(name, op, provider, out):
        return {"cat": "Node", "name": f"{name}_kernel_time",
                "args": {"op_name": op, "provider": provider, "output_type_shape": out}}

    events = [node("shape", "Shape", "CPUExecutionProvider", [{"int64": [3]}]),
              node("gather", "Gather", "CPUExecutionProvider", [{"int64": []}]),
              node("matmul", "MatMul", "CUDAExecutionProvider", [{"float": [1, 8, 64]}]),
              node("argmax", "ArgMax", "CPUExecutionProvider", [{"int64": [32, 1]}])]  # real output, not a shape
    p = parse_profile(events)
    assert p["shape_nodes_by_provider"] == {"cpu": 2}
    assert foreign_nodes(p, "CUDAExecutionProvider") == {"cpu": 1}  # only the ArgMax counts
    assert foreign_nodes(p, "CUDAExecutionProvider", count_shape_nodes=True) == {"cpu": 3}
    assert foreign_nodes(p, "CPUExecutionProvider") == {"cuda": 1}


def _report(p50s):
    results = []
    for (model, threads), p50 in p50s.items():
        results.append({"model": f"/m/{model}.onnx", "model_name": model, "engine": "onnxruntime",
                        "provider_requested": "cpu", "scenario": "single-stream", "threads": threads, "batch": 1,
                        "sizes": {"batch": 1}, "io_binding": False, "peak_rss_mib": 60.0,
                        "latency_ms": {"p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 2, "mean_ms": p50},
                        "throughput": {"samples_per_s": 1000 / p50}})
    return BenchReport({"scenario": "single-stream"}, {}, results)


def test_compare_flags_regressions_beyond_the_threshold_only():
    old = _report({("mlp", 1): 1.0, ("cnn", 1): 2.0, ("lstm", 1): 3.0})
    new = _report({("mlp", 1): 1.04, ("cnn", 1): 2.4, ("gone", 1): 1.0})
    cmp = compare_reports(old, new, 5.0)
    by = {(c.key.split()[0], c.metric): c for c in cmp.changes}
    assert by[("mlp", "p50")].change_pct == pytest.approx(4.0)
    assert [c.key.split()[0] for c in cmp.regressions] == ["cnn", "cnn"]  # p50 +20 % and throughput -17 %
    assert by[("cnn", "throughput")].worse_pct == pytest.approx(100 / 6)
    assert not cmp and cmp.to_json()["passed"] is False
    assert cmp.only_old == ["lstm ort:cpu single-stream t1 b1"] and cmp.only_new == ["gone ort:cpu single-stream t1 b1"]
    assert compare_reports(old, new, 25.0)  # truthy: nothing beyond 25 %
    faster = compare_reports(old, _report({("mlp", 1): 0.5}), 5.0)
    assert faster and [c.metric for c in faster.improvements] == ["p50", "throughput"]
    with pytest.raises(EdgeDLError, match="share no configuration"):
        compare_reports(old, _report({("other", 1): 1.0}))
    with pytest.raises(EdgeDLError, match="did you mean 'p99'"):
        compare_reports(old, new, metrics=("p98",))


def test_report_json_round_trip_and_rejects_other_files(tmp_path):
    rep = _report({("mlp", 1): 1.0})
    path = rep.save(tmp_path / "r.json")
    back = BenchReport.load(path)
    assert back.results == rep.results and config_key(back.results[0]) == "mlp ort:cpu single-stream t1 b1"
    (tmp_path / "bad.json").write_text('{"results": []}')
    with pytest.raises(EdgeDLError, match="not an edgedl bench report"):
        BenchReport.load(tmp_path / "bad.json")
    (tmp_path / "text.json").write_text("nope")
    with pytest.raises(EdgeDLError, match="not JSON"):
        BenchReport.load(tmp_path / "text.json")
    broken = copy.deepcopy(rep.to_json())
    del broken["results"][0]["latency_ms"]
    with pytest.raises(EdgeDLError, match="lacks latency_ms"):
        BenchReport.from_json(broken)


def test_cpu_detection_from_real_cpuinfo_texts():
    pi = parse_cpuinfo(PI4_CPUINFO)
    assert pi["arm_core"] == "Cortex-A72" and "neon" in pi["flags"] and "dotprod" not in pi["flags"]
    assert "Cortex-A72" in pi["model"] and pi["board"] == "Raspberry Pi 4 Model B Rev 1.4"
    orin = parse_cpuinfo(f"processor\t: 0\nFeatures\t: {ORIN_FEATURES}\nCPU part\t: 0xd42\n")
    assert {"asimddp", "dotprod", "neon", "asimdhp"} <= set(orin["flags"]) and orin["arm_core"] == "Cortex-A78AE"
    x86 = parse_cpuinfo(X86_CPUINFO)
    assert x86["model"].startswith("Intel(R) Xeon(R)") and "avx512_vnni" in x86["flags"]
    assert x86["physical_cores"] == 1 and "neon" not in x86["flags"]


def test_io_binding_query_computes_the_same_outputs():
    from edgedl.stages.bench.worker import _ort_run_query
    from edgedl.stages.doctor import TINY_X, tiny_expected

    runner = Runner(tiny_model_bytes())
    run = _ort_run_query(runner, {"x": TINY_X}, io_binding=True)
    out = run.keep[-1]  # the preallocated output buffer the binding writes into
    run()
    assert np.allclose(out.numpy(), tiny_expected(), atol=1e-6)
    plain = _ort_run_query(runner, {"x": TINY_X}, io_binding=False)
    assert np.allclose(plain()[0], tiny_expected(), atol=1e-6)


def test_cuda_graphs_need_io_binding(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model_bytes())
    with pytest.raises(EdgeDLError, match="--io-binding"):
        BenchConfig([model], providers=("cuda",), provider_options={"cuda": {"enable_cuda_graph": "1"}})
    BenchConfig([model], providers=("cuda",), provider_options={"cuda": {"enable_cuda_graph": "1"}}, io_binding=True)


def test_a_long_step_prints_progress_lines_into_a_log_file(monkeypatch, capsys):
    """stderr not a terminal (bench 2>run.log): no bar, a plain line per step once LINE_INTERVAL_S has passed."""
    from edgedl import console

    monkeypatch.setattr(console, "LINE_INTERVAL_S", 0.0)
    with console.progress("benchmarking", total=2, lines=True) as advance:
        advance(info="mlp b1")
        advance(info="mlp b32")
    lines = capsys.readouterr().err.splitlines()
    assert [ln.rsplit(" (", 1)[0] for ln in lines] == ["benchmarking: 1/2 done, mlp b1", "benchmarking: 2/2 done, mlp b32"]
    monkeypatch.setattr(console, "LINE_INTERVAL_S", 3600.0)  # a short run prints nothing
    with console.progress("benchmarking", total=2, lines=True) as advance:
        advance()
    assert capsys.readouterr().err == ""
