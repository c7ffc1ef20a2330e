"""`edgedl debug speed` on the real zoo: it explains the CNN's dynamic-int8 slowdown (ConvInteger), its advice run
as given removes that slowdown and writes int8 only when the speed gate measured it faster, per-operator times add
up to the measured latency for the CNN, MLP and LSTM int8 models, the outputs a person reads (table, --json, HTML,
PNG), CPU-dependent advice (also from an emulated arm64 CPU under qemu with a chosen -cpu) and bad input.

No assertion on absolute speed: only structure (which operator dominates, which kernel ran) and agreement of sums
within a tolerance derived below. Speed figures come from the README command, not from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedl_testing import ROOT, run_edgedl, run_edgedl_inprocess
from edgedl.runtime import measure
from edgedl.stages.machine import Int8Support, arm_hwcap_flags, parse_auxv
from edgedl.stages.debug.advice import PRESET_FOR_CPU, CpuFeatures, Findings, Loser, advise, detect_cpu
from edgedl.stages.debug.profile import grouped_median

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import arm64_sysroot  # noqa: E402

FAST = ("--runs", "120", "--seconds", "0.4", "--quiet")  # ~3-6 s per pair; the defaults measure 3x longer


@pytest.fixture(scope="module")
def int8(zoo, tmp_path_factory) -> dict[str, Path]:
    """The CNN, MLP and LSTM quantized dynamically by the real `edgedl quantize` (no speed gate: not under test)."""
    out = tmp_path_factory.mktemp("int8")
    models = {}
    for name in ("cnn", "mlp", "lstm"):
        path = out / f"{name}.dynamic.onnx"
        result = run_edgedl_inprocess("quantize", zoo[name].onnx, "-o", path, "--mode", "dynamic",
                                      "--speed-seconds", "0", "--no-progress")
        assert result.returncode == 0, result.stderr
        models[name] = path
    return models


def debug_speed(float_model: Path, int8_model: Path, *args: str) -> dict:
    """`edgedl debug speed` in its own process, as a user runs it: its timings must not depend on what hundreds of
    earlier tests left in the test process (in a full run the in-process CNN int8 profile read ~30 % high)."""
    result = run_edgedl("debug", "speed", float_model, int8_model, *FAST, "--json", *args, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def cnn_report(zoo, int8) -> dict:
    return debug_speed(zoo["cnn"].onnx, int8["cnn"])


# --- the CNN: explained, and the advice passes the speed gate ----------------------------------------------------
def test_cnn_dynamic_slowdown_is_blamed_on_conv_integer(cnn_report):
    data = cnn_report
    assert data["verdict"] == "slower" and data["speedup"] < 1  # measured 5-8x slower: a wide margin
    rows = {r["node"]: r for r in data["operators"]}
    convs = [r for r in data["operators"] if r["op_type"] == "Conv"]
    assert len(convs) == 2
    for r in convs:  # the float Conv ran a float kernel, the int8 one ConvInteger with u8 activations, s8 weights
        assert r["float_kernel"].startswith("Conv f32") and r["int8_kernel"].startswith("ConvInteger u8s8")
        assert r["delta_us"] > 0
    assert rows[data["losers"][0]]["op_type"] == "Conv"  # the worst loser is a convolution ...
    loss = sum(r["delta_us"] for r in data["operators"] if r["delta_us"] > 0)
    assert sum(r["delta_us"] for r in convs) > 0.8 * loss  # ... and the two of them are most of the loss
    assert any(line.startswith("why ConvInteger is slow") for line in data["explanation"])
    # every kernel but onnxruntime's layout changes is traced to the float-model node it implements
    for side in ("float", "int8"):
        for k in data[side]["kernels"]:
            assert k["origin"] or k["category"] == "layout", k
    # the quantizer's helpers are Q/DQ overhead of the Conv they feed, counted apart
    dql = [k for k in data["int8"]["kernels"] if k["op_type"] == "DynamicQuantizeLinear"]
    assert dql and all(k["category"] == "quantize" and rows[k["origin"]]["op_type"] in ("Conv", "Gemm") for k in dql)
    assert data["int8"]["qdq_us"] == pytest.approx(sum(k["us"] for k in dql), abs=1e-2)
    fix = data["advice"][0]
    assert fix["kind"] == "fix" and "ConvInteger" in fix["text"] and "QLinearConv" in fix["text"]
    assert fix["command"][:3] == ["edgedl", "quantize", str(Path(data["float_model"]))]
    # no speed-up promised on any CPU: the speed gate decides (auto), with this CPU's preset
    assert ["--mode", "auto"] == fix["command"][5:7] and "--require-speedup" not in fix["command"]
    assert "speed gate decide" in fix["text"]
    preset = detect_cpu().preset
    assert ("--preset" in fix["command"]) == (preset is not None)


def test_following_the_advice_removes_the_slowdown_and_writes_what_the_gate_measured(cnn_report, tmp_path):
    command = list(cnn_report["advice"][0]["command"])
    assert command[:2] == ["edgedl", "quantize"]
    out = tmp_path / "cnn.int8.onnx"
    command[command.index("-o") + 1] = str(out)  # the advised output sits next to the zoo model: write here instead
    result = run_edgedl(*command[1:], "--no-progress", "--json", check=False)  # in its own process, as typed
    assert result.returncode == 0, result.stderr  # auto without --require-speedup: fp32 kept is an answer too
    data = json.loads(result.stdout)
    assert data["accepted"] and data["requested_mode"] == "auto"
    min_speedup = data["config"]["gates"]["min_speedup"]
    static = next(c for c in data["candidates"] if c["mode"] == "static")
    dynamic = next(c for c in data["candidates"] if c["mode"] == "dynamic")
    # the advised static conversion (QLinearConv) removed the ConvInteger slowdown the profile measured (5-8x
    # slower; static ran 0.83-1.37x fp32 on this kind of machine): a margin no noise here bridges
    assert static["accuracy_ok"] and static["speedup"]["32"] > 2 * cnn_report["speedup"]
    assert static["speedup"]["32"] > 2 * dynamic["speedup"]["32"]
    # what was written follows what was measured, whichever way the measurement went on this machine
    winners = [c for c in data["candidates"] if c["accuracy_ok"] and c["speedup"]["32"] >= min_speedup]
    if not winners:
        assert data["mode"] == "fp32" and not out.exists() and data["output_path"] is None
        assert any("keeping fp32" in n for n in data["notes"])
    else:
        assert data["mode"] == max(winners, key=lambda c: c["speedup"]["32"])["mode"]
        assert out.is_file() and data["speedup"]["32"] >= min_speedup


# --- the breakdown accounts for the measured latency ----------------------------------------------------------
# Tolerance of predicted (operators + executor) vs the measured median, per model: 30 % of the measured latency
# plus 1.5 us per kernel. The 30 %: medians on this shared 2-core machine move 10-30 % between runs (README,
# quantize), and the profiled and the plain runs are seconds apart. The 1.5 us per kernel: onnxruntime
# records whole microseconds, and the profiler's own cost subtracted from each kernel (~3 us) is calibrated on
# do-nothing nodes: it moved by ~0.7 us from one measurement to the next here, and real kernels cost the profiler
# a little more than the calibration's (the MLP, 5 kernels in 15 us, reads 5-7 us high). Seen here (2026-12, load
# 7-16 from other work, these settings): CNN and LSTM -27 % .. +35 %, MLP up to +46 % (+6.7 us); on a quiet
# machine within +-10 %. Without the correction the MLP int8 model sums to ~2.5x its measured latency.
REL_TOLERANCE, PER_KERNEL_US = 0.30, 1.5


def _agrees(model: dict) -> bool:
    slack = REL_TOLERANCE * model["measured_us"] + PER_KERNEL_US * len(model["kernels"])
    return abs(model["predicted_us"] - model["measured_us"]) <= slack


@pytest.mark.parametrize("name", ["cnn", "mlp", "lstm"])
def test_operator_times_add_up_to_the_measured_latency(zoo, int8, name, cnn_report):
    # other work on the machine (a test suite's lingering servers, a second job) can spoil one measurement beyond
    # what leaving out descheduled runs repairs: measure again, at most three times (a systematic error still fails)
    data = cnn_report if name == "cnn" else debug_speed(zoo[name].onnx, int8[name])
    for _ in range(3):
        if all(_agrees(data[side]) for side in ("float", "int8")):
            break
        data = debug_speed(zoo[name].onnx, int8[name])
    for side in ("float", "int8"):
        m = data[side]
        assert m["predicted_us"] == pytest.approx(m["ops_us"] + m["executor_us"], abs=1e-2)
        assert m["ops_us"] == pytest.approx(sum(k["us"] for k in m["kernels"]), abs=0.05)
        assert _agrees(m), (side, m["predicted_us"], m["measured_us"], m["off_cpu_share"])
        assert data["check"][side]["agreement"] == pytest.approx(m["agreement"])
    # the rows are a partition of the kernels: nothing counted twice, nothing dropped
    rows = data["operators"]
    assert sum(r["float_us"] for r in rows) == pytest.approx(data["float"]["ops_us"], abs=0.05)
    assert sum(r["int8_us"] for r in rows) == pytest.approx(data["int8"]["ops_us"], abs=0.05)
    # the profiler's own cost was measured, and every kernel is below its raw profiled time by at most that
    cost = data["profiler_cost"]
    assert 0 < cost["kernel_us"] < 50 and cost["executor_node_us"] >= 0
    if name == "lstm":  # the LSTM dominates, and ran as onnxruntime's int8 LSTM kernel
        lstm = next(r for r in rows if r["op_type"] == "LSTM")
        assert lstm["int8_kernel"].startswith("DynamicQuantizeLSTM")
        assert lstm["float_us"] == max(r["float_us"] for r in rows)


# --- what a person reads -----------------------------------------------------------------------------------------
def test_terminal_table_html_and_png_reports(zoo, int8, tmp_path):
    html, png = tmp_path / "speed.html", tmp_path / "speed.png"
    result = run_edgedl_inprocess("debug", "speed", zoo["mlp"].onnx, int8["mlp"], *FAST, "--report", html)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("mlp.onnx (float) vs mlp.dynamic.onnx (int8)", "float kernel", "int8 kernel", "DynamicQuantizeMatMul",
                 "measured (median)", "check: operators + executor vs measured", "advice"):
        assert text in out, text
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "DynamicQuantizeMatMul" in page
    assert "<script" not in page.lower() and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    result = run_edgedl_inprocess("debug", "speed", zoo["mlp"].onnx, int8["mlp"], *FAST, "--runs", "40", "--seconds",
                                  "0.1", "--report", png, "--json")  # a shorter run: only the file is checked
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and json.loads(result.stdout)["batch"] == 32


def test_debug_group_lists_speed_and_suggests_on_a_typo():
    result = run_edgedl_inprocess("debug", "--help")
    assert result.returncode == 0 and "speed" in result.stdout
    result = run_edgedl_inprocess("debug", "sped")
    assert result.returncode != 0 and "Did you mean 'speed'" in result.stderr
    assert "debug" in run_edgedl_inprocess("--help").stdout


@pytest.mark.parametrize("case", ["missing", "not_derived", "bad_report", "report_dir", "batch", "runs"])
def test_bad_input_is_one_line_and_measures_nothing(zoo, int8, tmp_path, case):
    cnn, mlp = zoo["cnn"].onnx, int8["mlp"]
    args, expect = {
        "missing": ([cnn, tmp_path / "nope.onnx"], "int8 model not found"),
        "not_derived": ([cnn, mlp], "is not a quantized cnn.onnx"),
        "bad_report": ([cnn, int8["cnn"], "--report", tmp_path / "r.pdf"], "use a .html"),
        "report_dir": ([cnn, int8["cnn"], "--report", tmp_path], "is a directory"),
        "batch": ([cnn, int8["cnn"], "--batch", "0"], "batch size must be >= 1"),
        "runs": ([cnn, int8["cnn"], "--runs", "2"], "at least one run per round"),
    }[case]
    result = run_edgedl_inprocess("debug", "speed", *args, "--quiet")
    assert result.returncode == 1 and expect in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.html")) and not list(Path.cwd().glob("onnxruntime_profile_*.json"))


# --- advice that depends on the CPU ------------------------------------------------------------------------------
def _cpu(machine: str, flags: tuple[str, ...], level: str) -> CpuFeatures:
    return CpuFeatures(machine, "test cpu", flags, "test", Int8Support(level, (), f"{level} int8"))


CONV_INTEGER = Findings(model="m/cnn.onnx", int8_model="m/cnn.dynamic.onnx", speedup=0.15, min_speedup=1.05,
                        batch=32, threads=1, losers=(Loser("node_conv2d_1", "Conv", "ConvInteger", 140.0, 900.0),),
                        int8_kernels=("ConvInteger", "DynamicQuantizeLinear"))


@pytest.mark.parametrize("machine,flags,level,preset", [
    ("x86_64", ("avx2", "avx512_vnni"), "fast", "x86-vnni"),
    ("x86_64", ("avx2",), "basic", "x86-avx2"),
    ("x86_64", (), "slow", None),
    ("aarch64", ("asimd", "asimddp", "i8mm"), "fast", "arm64"),
    ("aarch64", ("asimd",), "basic", "arm64"),
])
def test_advice_follows_the_cpu(machine, flags, level, preset):
    from edgedl.stages.quantize import PRESETS

    cpu = _cpu(machine, flags, level)
    assert cpu.preset == preset
    advice = advise(cpu, CONV_INTEGER)
    static = advice[0]
    # the speed gate chooses (auto) on every CPU: no --require-speedup on a speed-up that flags cannot promise
    assert static.kind == "fix" and static.command[static.command.index("--mode") + 1] == "auto"
    assert "--require-speedup" not in static.command and "speed gate decide" in static.text
    assert ("no int8 dot-product instructions" in static.text) == (level != "fast")
    assert ("--preset" in static.command) == (preset is not None)
    if preset:
        assert static.command[static.command.index("--preset") + 1] == preset
    assert advice[-1].kind == "cpu" and (("save size more than time" in advice[-1].text) == (level != "fast"))
    assert set(PRESET_FOR_CPU.values()) <= set(PRESETS)  # every preset advised exists


def test_advice_for_an_lstm_left_in_float_and_for_a_faster_int8():
    cpu = _cpu("x86_64", ("avx2", "avx512_vnni"), "fast")
    lstm = Findings(model="lstm.onnx", int8_model="lstm.static.onnx", speedup=0.99, min_speedup=1.05, batch=32,
                    threads=1, still_float=(("node_lstm", "LSTM", 170.0),))
    fix = advise(cpu, lstm)[0]
    assert "DynamicQuantizeLSTM" in fix.text and fix.command[fix.command.index("--mode") + 1] == "auto"
    faster = Findings(model="mlp.onnx", int8_model="mlp.int8.onnx", speedup=1.4, min_speedup=1.05, batch=32,
                      threads=1)
    assert any("accepts that" in a.text for a in advise(cpu, faster))
    # the advised output never replaces the int8 model that was profiled
    assert "m/cnn.int8.onnx" in advise(cpu, CONV_INTEGER)[0].command
    clash = Findings(**{**CONV_INTEGER.__dict__, "int8_model": "m/cnn.int8.onnx"})
    assert "m/cnn.int8-2.onnx" in advise(cpu, clash)[0].command


def test_one_operator_that_loses_most_is_advised_to_stay_in_float_and_spread_losses_are_not():
    cpu = _cpu("x86_64", ("avx2", "avx512_vnni"), "fast")
    # the CNN's static int8 here: its first Conv (one input channel) 18 -> 85 us as QLinearConv, the rest level
    one = Findings(model="m/cnn.onnx", int8_model="m/cnn.static.onnx", speedup=0.95, min_speedup=1.05, batch=32,
                   threads=1, losers=(Loser("node_conv2d", "Conv", "QLinearConv", 18.0, 85.0),
                                      Loser("node_max_pool2d", "MaxPool", "NhwcMaxPool", 5.0, 9.5)))
    fix = advise(cpu, one)[0]
    assert fix.kind == "fix" and fix.text.startswith("node_conv2d (Conv) loses most of the time: as QLinearConv")
    assert "speed gate decides" in fix.text
    cmd = fix.command
    assert cmd[cmd.index("--exclude-nodes") + 1] == "node_conv2d" and cmd[cmd.index("--mode") + 1] == "auto"
    assert cmd[cmd.index("-o") + 1] == "m/cnn.int8-keep-float.onnx"
    spread = Findings(**{**one.__dict__, "losers": (Loser("a", "Conv", "QLinearConv", 10.0, 14.0),
                                                    Loser("b", "Conv", "QLinearConv", 10.0, 14.0))})
    first = advise(cpu, spread)[0]
    assert first.kind == "note" and first.text.startswith("no single kernel explains it")
    faster = Findings(**{**one.__dict__, "speedup": 1.3})  # int8 already wins: nothing to keep in float
    assert not any("--exclude-nodes" in a.command for a in advise(cpu, faster))


def test_hwcaps_from_the_auxiliary_vector_name_the_dot_product_instructions():
    import struct

    word = "Q" if struct.calcsize("L") == 8 else "I"
    auxv = struct.pack(f"<{word * 6}", 16, (1 << 1) | (1 << 20), 26, 1 << 13, 0, 0)  # HWCAP asimd+asimddp, HWCAP2 i8mm
    assert arm_hwcap_flags(parse_auxv(auxv)) == {"asimd", "asimddp", "i8mm"}
    assert detect_cpu(machine="x86_64").machine == "x86_64"


@pytest.mark.skipif(arm64_sysroot.available() is not None, reason=str(arm64_sysroot.available()))
def test_emulated_arm64_cpus_get_their_own_advice(tmp_path):
    """The advice worker (standard library only) under qemu-aarch64: a Cortex-A53 has no dot-product
    instructions, qemu's 'max' CPU has asimddp and i8mm; the sysroot's /proc/cpuinfo (a Pi 4's) is the same for
    both, so the difference can only come from the CPU the process runs on."""
    root = arm64_sysroot.sysroot(ROOT / "build" / "arm64")
    findings = tmp_path / "findings.json"
    findings.write_text(json.dumps(CONV_INTEGER.__dict__ | {"losers": [CONV_INTEGER.losers[0].__dict__]}))
    seen = {}
    for cpu in ("cortex-a53", "max"):
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "toolkit"), "QEMU_CPU": cpu,
               "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(tmp_path)}
        proc = subprocess.run([*arm64_sysroot.python_cmd(root), "-m", "edgedl.stages.debug.advice", str(findings)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        seen[cpu] = json.loads(proc.stdout)
    a53, top = seen["cortex-a53"], seen["max"]
    assert a53["cpu"]["machine"] == top["cpu"]["machine"] == "aarch64"
    assert "asimddp" not in a53["cpu"]["flags"] and a53["cpu"]["int8"]["level"] == "basic"
    assert {"asimddp", "i8mm"} <= set(top["cpu"]["flags"]) and top["cpu"]["int8"]["level"] == "fast"
    for data in (a53, top):
        assert data["cpu"]["preset"] == "arm64" and "AT_HWCAP" in data["cpu"]["source"]
        assert data["advice"][0]["command"][data["advice"][0]["command"].index("--preset") + 1] == "arm64"
    assert "no dot-product" in a53["advice"][-1]["text"] and "save size more than time" in a53["advice"][-1]["text"]
    assert "dot-product instructions (asimddp)" in top["advice"][-1]["text"]


# --- building blocks ---------------------------------------------------------------------------------------------
def test_grouped_median_resolves_below_the_recorded_microsecond():
    assert grouped_median([]) == 0.0
    assert grouped_median([2] * 10) == pytest.approx(2.5)  # all in [2, 3): the middle of it
    assert grouped_median([2] * 3 + [3] * 7) == pytest.approx(3 + (5 - 3) / 7)
    rng = np.random.default_rng(0)
    true = rng.normal(10.3, 0.4, 20001)  # what onnxruntime would record: floor(true)
    error = abs(grouped_median(np.floor(true)) - float(np.median(true)))
    assert error < 0.1 and error < abs(float(np.median(np.floor(true))) - float(np.median(true))) / 3


def test_measure_records_cpu_time_when_asked():
    stats = measure(lambda: sum(range(2000)), warmup=2, iterations=50, cpu_time=True)
    assert stats.cpu_ns is not None and stats.cpu_ns.shape == stats.samples_ns.shape
    assert stats.on_cpu().dtype == bool and stats.on_cpu(share=0.0).all()
    plain = measure(lambda: None, warmup=0, iterations=5)
    assert plain.cpu_ns is None and plain.on_cpu().all()


def test_nothing_is_left_in_the_working_directory(zoo, int8, tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        debug_speed(Path(os.path.relpath(zoo["mlp"].onnx, tmp_path)), Path(os.path.relpath(int8["mlp"], tmp_path)))
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []  # onnxruntime's traces went to a private directory, and went away
