"""`edgedl optimize`'s pieces without a model: the knob table, the space and its enumeration, budgets, and the
noise rules of the final comparison (a win must hold in every interleaved round), the front and the choice."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from edgedl_testing import run_edgedl_inprocess
from edgedl.errors import EdgeDLError
from edgedl.stages.optimize.config import OptimizeConfig, parse_budget
from edgedl.stages.optimize.device import Timing, thread_counts
from edgedl.stages.optimize.front import Member, beats, choose, front, verdict
from edgedl.stages.optimize.space import DEFAULT, KNOBS, Candidate, Space, merge, parse_space
from edgedl.stages.optimize.search import final_duration, finalists_affordable


def test_every_knob_is_declared_once_with_values_and_a_description():
    names = [k.name for k in KNOBS]
    assert names == [f.name for f in dataclasses.fields(Candidate)] and len(set(names)) == len(names)
    for k in KNOBS:
        assert k.description and k.values and k.stage in ("model", "session", "scenario")
        assert k.default == getattr(DEFAULT, k.name)
    listed = run_edgedl_inprocess("optimize", "--list-knobs")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == names


def test_space_enumerates_distinct_normalized_candidates():
    values = {k.name: k.values for k in KNOBS}
    values.update(precision=("fp32", "dynamic", "static"), intra_op_threads=(1, 2), inter_op_threads=(2,),
                  calibration_samples=(None,), saved_optimized=(False,), graph_optimization=("all",))
    space = Space(values)
    everything = list(space.candidates())
    assert len(everything) == len(set(everything)) == space.size()
    assert all(c == c.normalized() and space.contains(c) for c in everything)
    # knobs that do not apply hold their defaults: no calibration for fp32/dynamic, no spinning without a pool
    assert {c.calibration_method for c in everything if c.precision != "static"} == {"minmax"}
    assert {c.spinning for c in everything if c.intra_op_threads == 1 and c.execution_mode == "sequential"} == {True}
    assert {c.inter_op_threads for c in everything if c.execution_mode == "sequential"} == {0}
    # static: 2 formats x 2 granularities x 3 methods x 2 x 2 types x reduce-range;
    # session: t1 (sequential | parallel) + t2 (sequential | parallel, 2 spinnings each), x 2 arenas
    sessions = {(c.intra_op_threads, c.execution_mode, c.spinning, c.memory_arena) for c in everything}
    assert len(sessions) == (1 + 2 + 2 * 2) * 2
    statics = {c.part("model").__repr__() for c in everything if c.precision == "static"}
    assert len(statics) == 2 * 2 * 3 * 2 * 2 * 2
    first = dataclasses.replace(DEFAULT, intra_op_threads=1)
    variants = space.variants(seed=3, first=[first, dataclasses.replace(first, precision="dynamic")])
    assert variants[0] == first and variants[1].precision == "dynamic"
    # fp32 has one file (no saved graph here) and it came first: then dynamic and static in turn
    assert {c.precision for c in variants[2:4]} == {"dynamic", "static"}
    assert len(variants) == 1 + 2 + len({c.part("model").__repr__() for c in everything if c.precision == "static"})
    assert variants == space.variants(seed=3, first=[first, dataclasses.replace(first, precision="dynamic")])
    assert variants != space.variants(seed=4, first=[first, dataclasses.replace(first, precision="dynamic")])
    sessions_order = space.sessions(seed=3, first=first)
    assert sessions_order[0] == first and len(sessions_order) == len(sessions)
    merged = merge(variants[5], sessions_order[3])
    assert merged.part("model") == variants[5].part("model")
    assert merged.part("session") == sessions_order[3].part("session")


def test_space_restrictions_and_budgets_parse_with_one_line_errors():
    assert parse_space(["precision=fp32,static", "intra-op-threads=1,2", "calibration_samples=all,32",
                        "memory_arena=off"]) == {
        "precision": ("fp32", "static"), "intra_op_threads": (1, 2), "calibration_samples": (None, 32),
        "memory_arena": (False,)}
    with pytest.raises(EdgeDLError, match="did you mean 'precision'"):
        parse_space(["precison=fp32"])
    with pytest.raises(EdgeDLError, match="did you mean 'static'"):
        parse_space(["precision=statik"])
    with pytest.raises(EdgeDLError, match="KNOB=VALUE"):
        parse_space(["precision"])
    with pytest.raises(EdgeDLError, match="integer|int"):
        parse_space(["intra_op_threads=two"])
    assert parse_budget("10m") == 600 and parse_budget("90s") == 90 and parse_budget("1h") == 3600
    assert parse_budget("45") == 45
    with pytest.raises(EdgeDLError, match="90s, 10m, 1h"):
        parse_budget("ten minutes")
    with pytest.raises(EdgeDLError, match="one batch size"):
        OptimizeConfig(target="x86-server", batches=(1, 8))
    with pytest.raises(EdgeDLError, match="did you mean 'latency'"):
        OptimizeConfig(target="x86-server", objective="latncy")
    assert thread_counts(1) == (1,) and thread_counts(6) == (1, 2, 4, 6) and thread_counts(8) == (1, 2, 4, 8)


def _member(name: str, p50s: list[float], size: int, loss: float = 0.0, precision: str = "static") -> Member:
    rounds = [Timing(p, p * 1.2, 1000.0 / p, 100, 0.1, 1.0, 50.0, 0.5) for p in p50s]
    c = dataclasses.replace(DEFAULT, precision=precision, batch=1)
    trial = SimpleNamespace(candidate=c, artifact=SimpleNamespace(size_bytes=size, sha256=name))
    return Member(trial, rounds, loss=loss)


def test_a_win_must_hold_in_every_round_else_it_is_a_tie():
    fp32 = _member("fp32", [1.0, 1.0, 1.0, 1.0, 1.0], 400, precision="fp32")
    clear = _member("clear", [0.5, 0.55, 0.5, 0.6, 0.5], 100)
    noisy = _member("noisy", [0.6, 0.6, 1.2, 0.6, 0.6], 100)  # one round lost: not proven
    marginal = _member("marginal", [0.99, 0.98, 0.99, 0.99, 0.98], 100)  # every round, by 1-2 %
    assert beats(clear, fp32, False) and verdict(clear, fp32, False) == "faster"
    assert verdict(fp32, clear, False) == "slower"
    assert verdict(noisy, fp32, False) == "tie" and verdict(marginal, fp32, False) == "tie"
    # with 9 rounds one lost round is chance (sign test: 8 of 9, p = 0.02), two are not (7 of 9, p = 0.09)
    nine = _member("fp32", [1.0] * 9, 400, precision="fp32")
    assert beats(_member("one_bad", [0.5] * 8 + [1.5], 100), nine, False)
    assert not beats(_member("two_bad", [0.5] * 7 + [1.5] * 2, 100), nine, False)
    # with 3 rounds nothing can be shown (all 3 one way: p = 1/8)
    assert not beats(_member("three", [0.5] * 3, 100), _member("fp32", [1.0] * 3, 400), False)


def test_choice_is_on_the_front_never_slower_than_fp32_and_ties_go_to_the_smaller():
    fp32 = _member("fp32", [1.0] * 5, 400, precision="fp32")
    fast_big = _member("fast_big", [0.50, 0.51, 0.50, 0.52, 0.50], 300)
    fast_small = _member("fast_small", [0.51, 0.50, 0.51, 0.50, 0.52], 100)  # ties fast_big, 3x smaller
    small_slow = _member("small_slow", [2.0] * 5, 80)  # smallest but slower than fp32
    lossy = _member("lossy", [0.3] * 5, 90, loss=0.8)  # fastest, loses accuracy
    members = [fp32, fast_big, fast_small, small_slow, lossy]
    for m in members:
        m.baseline = fp32
    on_front = front(members, False)
    assert fast_big not in on_front  # fast_small is as fast within noise, smaller, as accurate
    assert {m.trial.artifact.sha256 for m in on_front} == {"fast_small", "small_slow", "lossy"}
    latency = choose(members, "latency", None, 5)
    assert latency.chosen is lossy and "(faster in 5 of 5 rounds): faster" in latency.reason
    # without the lossy one (e.g. a tighter accuracy budget): the tie goes to the smaller file
    rest = [fp32, fast_big, fast_small, small_slow]
    assert choose(rest, "latency", None, 5).chosen is fast_small
    size = choose(rest, "size", None, 5)
    assert size.chosen is fast_small  # small_slow is smaller but slower than fp32: never chosen
    assert not beats(fp32, size.chosen, False)
    # a latency budget leaves out what misses it (p90 = 1.2 x p50 here)
    assert choose([fp32, fast_small, lossy], "latency", 0.5, 5).chosen is lossy
    budgeted = choose([fp32, fast_small], "latency", 0.55, 5)
    assert budgeted.chosen is fp32 and "over the 0.55 ms p90 budget" in budgeted.reason


def test_final_rounds_fit_the_reserve():
    assert finalists_affordable(7.5, 5, 0.6) == 2  # a small budget still compares one finalist with fp32
    assert finalists_affordable(150, 5, 0.6) == 8
    assert final_duration(100, 4, 5, 0.5, longest=0.5) == 0.5
    assert final_duration(10, 4, 5, 0.4, longest=0.5) == 0.1
    assert final_duration(1, 4, 5, 0.5, longest=0.5) == 0.05


def test_bench_config_turns_graph_optimization_off_only_for_the_saved_optimized_file(tmp_path):
    from edgedl.runtime.manifest import sha256_file
    from edgedl.stages.optimize.report import ChosenConfig

    saved, rebuilt = tmp_path / "model.onnx", tmp_path / "rebuilt.onnx"
    saved.write_bytes(b"the saved optimized graph")
    rebuilt.write_bytes(b"the same conversion, not yet optimized")
    candidate = dataclasses.replace(DEFAULT, saved_optimized=True, graph_optimization="all")
    chosen = ChosenConfig(candidate, {"mode": "dynamic"}, "cpu", "single-stream", {"file_sha256": sha256_file(saved)})
    assert chosen.session_for([saved])["graph_optimization"] == "disable"
    assert chosen.session_for([rebuilt])["graph_optimization"] == "all"  # quantize --config's file: optimized at load
    plain = ChosenConfig(dataclasses.replace(candidate, saved_optimized=False), {"mode": "dynamic"}, "cpu",
                         "single-stream", {})
    assert plain.session_for([saved])["graph_optimization"] == "all"
