"""config.pbtxt ``version_policy`` decides which version folders are served, as in Triton (the differential test
checks the same repositories against the real Triton)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgedl.errors import EdgeDLError
from edgedl.runtime.server.repository import BatchPolicy, discover


def _repo(tmp_path: Path, policy: str | None) -> Path:
    folder = tmp_path / "repo" / "m"
    for v in (1, 2, 3):
        (folder / str(v)).mkdir(parents=True)
        (folder / str(v) / "model.onnx").write_bytes(b"not read by discover")
    config = 'name: "m"\nplatform: "onnxruntime_onnx"\n'
    (folder / "config.pbtxt").write_text(config + (f"version_policy: {policy}\n" if policy else ""))
    return tmp_path / "repo"


@pytest.mark.parametrize("policy, served", [
    (None, [1, 2, 3]),  # edgedl's default (Triton's is the newest only): every version folder
    ("{ latest { num_versions: 1 }}", [3]),
    ("{ latest { num_versions: 2 }}", [2, 3]),
    ("{ latest { num_versions: 9 }}", [1, 2, 3]),
    ("{ specific { versions: [1, 3] }}", [1, 3]),
    ("{ specific: { versions: [ 2 ] } }", [2]),  # the form `edgedl package` writes
    ("{ all { }}", [1, 2, 3]),
])
def test_served_versions(tmp_path, policy, served):
    (source,) = discover(None, _repo(tmp_path, policy), BatchPolicy())
    assert sorted(source.versions) == served and source.latest == served[-1]


@pytest.mark.parametrize("policy, message", [
    ("{ specific { versions: [4] }}", "asks for version(s) 4 but the folder has 1, 2, 3"),
    ("{ latest { num_versions: 0 }}", "num_versions must be a positive integer"),
    ("{ newest { }}", "must hold latest, specific or all"),
])
def test_bad_policy_is_a_user_error(tmp_path, policy, message):
    failures: dict[str, str] = {}
    assert discover(None, _repo(tmp_path, policy), BatchPolicy(), failures=failures) == []
    assert message in failures["m"]
    with pytest.raises(EdgeDLError, match="config.pbtxt: version_policy"):
        discover(None, _repo(tmp_path / "again", policy), BatchPolicy())
