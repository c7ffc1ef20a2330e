"""Training is deterministic given the seed and writes weights that load without unpickling."""

import json

from edgedl_testing import run_edgedl_inprocess


def _train(out, *extra):
    proc = run_edgedl_inprocess("train", "mlp", "--out", out, "--epochs", "3", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = _train(tmp_path / "a")
    b = _train(tmp_path / "b")
    c = _train(tmp_path / "c", "--seed", "7")
    weights = lambda d: (tmp_path / d / "model.safetensors").read_bytes()  # noqa: E731
    assert weights("a") == weights("b")
    assert a["metrics"]["test_accuracy"] == b["metrics"]["test_accuracy"]
    assert weights("a") != weights("c")
    assert c["config"]["train"]["seed"] == 7 and a["config"]["train"]["epochs"] == 3


def test_weights_are_safetensors_not_pickle(tmp_path):
    from safetensors import safe_open

    _train(tmp_path / "a")
    with safe_open(str(tmp_path / "a" / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["edgedl"])["recipe"] == "mlp"
        assert "net.0.weight" in list(f.keys())


def test_out_must_be_a_directory(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    proc = run_edgedl_inprocess("train", "mlp", "--out", target, "--epochs", "1")
    assert proc.returncode == 1 and "is a file; pass a directory" in proc.stderr
    assert target.read_text() == "keep me"


def test_bad_override_is_rejected():
    proc = run_edgedl_inprocess("train", "mlp", "--out", "x", "--epochs", "0")
    assert proc.returncode == 2 and "--epochs" in proc.stderr
