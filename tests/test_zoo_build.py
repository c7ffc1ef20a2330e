"""The zoo trains to its accuracy targets and exports faithfully (the fixture drives the real CLI)."""

import pytest

TARGETS = {"mlp": 0.95, "cnn": 0.97, "lstm": 0.93, "transformer": 0.93}


@pytest.mark.parametrize("name", list(TARGETS))
def test_zoo_model_meets_accuracy_target(zoo, name):
    model = zoo[name]
    assert model.metrics["test_accuracy"] >= TARGETS[name]
    assert model.metrics["test_samples"] == 360
    assert model.onnx.stat().st_size > 10_000
