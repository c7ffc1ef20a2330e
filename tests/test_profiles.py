"""Device profiles: the built-in four, user profiles, and the errors a typo or a bad pin gets."""

from __future__ import annotations

import json

import pytest

from edgedl_testing import run_edgedl
from edgedl.errors import EdgeDLError
from edgedl.stages.profiles import list_profiles, load_profile, load_profile_file


def test_builtin_profiles_declare_what_a_deploy_needs():
    profiles = list_profiles()
    assert {"rpi4", "rpi5", "jetson-orin-nano", "x86-server"} <= set(profiles)
    rpi4 = profiles["rpi4"]
    assert rpi4.arch == "aarch64"
    # an older tag alone makes pip pick onnxruntime 1.16.3 (PITFALLS.md): the 2_28 tag must come first
    assert rpi4.platforms[0] == "manylinux_2_28_aarch64"
    assert "1.21.0" in rpi4.onnxruntime_known_bad and rpi4.onnxruntime != "1.21.0"
    assert "asimddp" in profiles["rpi5"].cpu_features
    assert profiles["jetson-orin-nano"].providers[:2] == ("tensorrt", "cuda")
    assert profiles["jetson-orin-nano"].docker_image("3.10").startswith("nvcr.io/nvidia/l4t")
    assert profiles["rpi5"].docker_image("3.11") == "arm64v8/python:3.11-slim-bookworm"
    assert profiles["x86-server"].arch == "x86_64"


def test_unknown_profile_suggests_the_nearest():
    with pytest.raises(EdgeDLError, match="did you mean 'rpi5'"):
        load_profile("rpi-5")


def test_list_targets_cli_table_and_json():
    proc = run_edgedl("deploy", "--list-targets")
    for name in ("rpi4", "rpi5", "jetson-orin-nano", "x86-server"):
        assert name in proc.stdout
    data = json.loads(run_edgedl("deploy", "--list-targets", "--json").stdout)
    assert {p["name"]: p["onnxruntime"] for p in data}["rpi4"] == "1.32.0"


def test_user_profile_from_profile_path_is_listed_and_loaded(tmp_path):
    (tmp_path / "my-board.toml").write_text(
        'arch = "aarch64"\nplatforms = ["manylinux_2_28_aarch64"]\npython = ["3.11"]\nonnxruntime = "1.32.0"\n'
        'memory_mb = 512\ndescription = "my board"\n')
    proc = run_edgedl("deploy", "--list-targets", "--json", env={"EDGEDL_PROFILE_PATH": str(tmp_path)})
    mine = {p["name"]: p for p in json.loads(proc.stdout)}["my-board"]
    assert mine["memory_mb"] == 512 and mine["arch"] == "aarch64"
    assert load_profile(str(tmp_path / "my-board.toml")).name == "my-board"


@pytest.mark.parametrize("body, message", [
    ('arch = "aarch64"\nplatforms = ["manylinux_2_28_aarch64"]\npython = ["3.11"]\nonnxruntime = "1.21.0"\n'
     'onnxruntime_known_bad = ["1.21.0"]\n', "known bad"),
    ('arch = "armv7l"\nplatforms = ["linux_armv7l"]\npython = ["3.11"]\nonnxruntime = "1.32.0"\n', "32-bit ARM"),
    ('arch = "aarch64"\nplatforms = ["manylinux_2_28_aarch64"]\npython = ["3.11"]\nonnxruntime = "1.32.0"\n'
     'thread = 4\n', "did you mean 'threads'"),
    ('arch = "aarch64"\nplatforms = ["manylinux_2_28_aarch64"]\npython = ["3.11"]\nonnxruntime = "1.32.0"\n'
     'providers = ["cdua"]\n', "did you mean 'cuda'"),
    ('arch = "aarch64"\nplatforms = ["manylinux_2_28_aarch64"]\npython = ["3.11"]\nonnxruntime = "1.32.0"\n'
     'serve_limits = "tiny"\n', "not a limits preset; use one of default, small"),
    ('arch = "aarch64"\n', "lacks platforms, python, onnxruntime"),
    ('arch = \n', "not valid TOML"),
])
def test_bad_profile_files_fail_clearly(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(EdgeDLError, match=message):
        load_profile_file(path)


def test_per_python_pin_must_name_a_listed_python(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('arch = "x86_64"\nplatforms = ["manylinux_2_28_x86_64"]\npython = ["3.11"]\nonnxruntime = "1.32.0"\n'
                    'onnxruntime_for_python = { "3.9" = "1.19.2" }\n')
    with pytest.raises(EdgeDLError, match="names Python 3.9"):
        load_profile_file(path)
    assert load_profile("x86-server").onnxruntime_pin("3.10") == "1.23.2"
    assert load_profile("x86-server").onnxruntime_pin("3.11") == "1.32.0"
