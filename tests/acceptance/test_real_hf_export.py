"""transformers architectures nobody here wrote, built from tiny configs without a download
(tests/acceptance/hf_architectures.py), through `edgedl export file.py:Class` with a dynamic batch: each export is
validated against PyTorch at two batch sizes and its check is not weak (outputs of unit scale that change with
the input). transformers' own initialisation, which gives outputs that prove nothing, is flagged in the report
(--strict turning that into a refusal is tested in tests/test_export_sources.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from acceptance_cli import edgedl

pytest.importorskip("transformers", reason="pip install -e '.[dev]' (transformers builds the architectures)")

HERE = Path(__file__).resolve().parent
FILE = HERE / "hf_architectures.py"
IMAGE = ("--input", "pixel_values=2x3x64x64", "--dynamic", "pixel_values=0:batch")
TEXT = ("--input", "input_ids=2x16:int64:0..999", "--input", "attention_mask=2x16:int64:0..1",
        "--dynamic", "input_ids=0:batch", "--dynamic", "attention_mask=0:batch")


@dataclass(frozen=True)
class Architecture:
    name: str  # the class in hf_architectures.py
    args: tuple[str, ...]  # export's --input / --dynamic / --output-name options
    outputs: tuple[str, ...]  # the exported model's output names


ARCHITECTURES = [
    Architecture("ResNet", IMAGE, ("logits",)),
    Architecture("MobileNetV2", IMAGE, ("logits",)),
    Architecture("ConvNeXt", IMAGE, ("logits",)),
    Architecture("EfficientNet", IMAGE, ("logits",)),
    Architecture("ViT", ("--input", "pixel_values=2x3x32x32", "--dynamic", "pixel_values=0:batch"), ("logits",)),
    Architecture("YOLOS", IMAGE + ("--output-name", "logits", "--output-name", "pred_boxes"),
                 ("logits", "pred_boxes")),
    Architecture("BERT", TEXT, ("logits",)),
    Architecture("DistilBERT", TEXT, ("logits",)),
    Architecture("WhisperEncoder", ("--input", "input_features=2x16x32", "--dynamic", "input_features=0:batch"),
                 ("last_hidden_state",)),
]


def export(tmp_path: Path, arch: Architecture, *extra: str):
    out = tmp_path / f"{arch.name}.onnx"
    names = () if "--output-name" in arch.args else tuple(a for o in arch.outputs for a in ("--output-name", o))
    return out, edgedl("export", f"{FILE}:{arch.name}", *arch.args, *names, "-o", out, *extra)


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=[a.name for a in ARCHITECTURES])
def test_exports_validated_with_a_check_that_can_fail(tmp_path, arch):
    import onnxruntime

    out, result = export(tmp_path, arch, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    validation = report["validation"]
    assert validation["passed"] and validation["degenerate"] == {}, validation
    assert validation["max_abs_diff"] < 1e-3 and validation["max_rel_diff"] < 1e-3, validation
    assert [c["sizes"] for c in validation["checks"]] == [{"batch": 2}, {"batch": 5}]
    assert "validation proves nothing" not in result.stderr
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert tuple(o.name for o in session.get_outputs()) == arch.outputs
    assert all(i.shape[0] == "batch" for i in session.get_inputs())


def test_transformers_own_initialisation_is_reported_as_a_check_that_proves_nothing(tmp_path):
    """EfficientNet as transformers initialises it without a checkpoint: BatchNorm's initial statistics make every
    logit 0, so 'onnxruntime matches PyTorch' would prove nothing; export says so and the report carries it."""
    arch = next(a for a in ARCHITECTURES if a.name == "EfficientNet")
    out, result = export(tmp_path, arch, "--init-args", '{"calibrate": false}', "--json")
    assert result.returncode == 0 and out.exists(), result.stderr
    validation = json.loads(result.stdout)["validation"]
    assert validation["passed"] and set(validation["degenerate"]) == {"logits"}, validation
    assert validation["degenerate"]["logits"].startswith("every value is exactly 0"), validation["degenerate"]
    assert "validation proves nothing about output 'logits'" in result.stderr
