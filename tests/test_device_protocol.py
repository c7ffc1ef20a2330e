"""The pure parts of the host-device contract: the one exit-code table (Python, device.sh's header and
device_health.py agree), the parsers of what device.sh prints, release ids, and the typed bundle manifest."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from edgedl.errors import EdgeDLError
from edgedl.stages.bundle import Manifest, release_id
from edgedl.stages.device import programs
from edgedl.stages.device.protocol import (Activation, DeviceExit, DeviceStatus, Health, Requirements, key_values,
                                           last_json_line)

DEVICE_DIR = Path(programs.__file__).parent


def test_the_exit_code_table_is_the_same_in_python_device_sh_and_the_health_gate():
    header = dict(re.findall(r"^E_([A-Z_]+)=(\d+)\s+#", programs.DEVICE, re.M))
    assert {name: int(code) for name, code in header.items()} == {e.name: e.value for e in DeviceExit if e.name != "OK"}
    # device.sh exits only through the table (a function's `return 1` is a shell false, not an exit code)
    assert not re.findall(r"\bexit [1-9][0-9]*\b", programs.DEVICE)
    health = dict(re.findall(r"^([A-Z_]+) = (\d+)  # E_\1:", programs.HEALTH, re.M))
    assert health and {n: int(c) for n, c in health.items()} == {n: DeviceExit[n].value for n in health}


def test_every_refusal_that_needs_no_restore_is_an_activate_code():
    assert {e for e in DeviceExit if e.refused_before_change} == {DeviceExit.UNIT_TAKEN, DeviceExit.NO_SYSTEMD,
                                                                 DeviceExit.VALUE}
    assert DeviceExit.of(29) is DeviceExit.UNIT_TAKEN and DeviceExit.of(255) == 255


def test_an_unknown_command_is_a_usage_error(tmp_path):
    proc = subprocess.run(["sh", "-c", programs.DEVICE, "edgedl", str(tmp_path / "d"), "frobnicate"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == DeviceExit.USAGE and "unknown command frobnicate" in proc.stderr


STATUS = """dir=/home/pi/edgedl
arch=aarch64
device_uptime_s=86400.25
current=sha-bbbbbbbbbbbb
running=yes
pid=4242
uptime_s=3600.5
service=systemd
unit=edgedl.service
enabled=enabled
service.EDGEDL_HOST=0.0.0.0
service.EDGEDL_PORT=8000
service.EDGEDL_API_KEY=(set)
release=sha-aaaaaaaaaaaa installed 20480
release=sha-bbbbbbbbbbbb installed 10240
release=sha-cccccccccccc failed 5120
staging=sha-dddddddddddd
history=2026-12-01T10:00:00Z sha-aaaaaaaaaaaa installed
history=2026-12-01T10:00:05Z sha-aaaaaaaaaaaa activated
history=2026-12-01T11:00:00Z sha-cccccccccccc activated
history=2026-12-01T11:00:30Z sha-cccccccccccc failed
history=2026-12-01T11:00:31Z sha-aaaaaaaaaaaa rolled-back-to
history=2026-12-01T12:00:00Z sha-bbbbbbbbbbbb activated
"""


def test_status_lines_parse_into_one_typed_status():
    st = DeviceStatus.parse(STATUS)
    assert (st.current, st.running, st.pid, st.manager, st.unit, st.enabled) == (
        "sha-bbbbbbbbbbbb", True, 4242, "systemd", "edgedl.service", "enabled")
    assert st.service == {"EDGEDL_HOST": "0.0.0.0", "EDGEDL_PORT": "8000", "EDGEDL_API_KEY": "(set)"}
    assert (st.directory, st.arch, st.uptime_s, st.device_uptime_s) == ("/home/pi/edgedl", "aarch64", 3600.5, 86400.25)
    assert [(r.id, r.state, r.size_mb, r.current) for r in st.releases] == [
        ("sha-aaaaaaaaaaaa", "installed", 20.0, False), ("sha-bbbbbbbbbbbb", "installed", 10.0, True),
        ("sha-cccccccccccc", "failed", 5.0, False)]
    assert st.staging == ("sha-dddddddddddd",) and st.installed() == ["sha-aaaaaaaaaaaa", "sha-bbbbbbbbbbbb"]
    # a rollback goes to the release used before the current one, never a failed one
    assert st.last_activated(exclude=st.current) == "sha-aaaaaaaaaaaa"
    assert st.to_json()["history"][-1] == "2026-12-01T12:00:00Z sha-bbbbbbbbbbbb activated"
    empty = DeviceStatus.parse("current=\nrunning=no\nservice=process\n")
    assert (empty.current, empty.running, empty.releases, empty.last_activated(None)) == (None, False, (), None)
    assert empty.uptime_s is None and DeviceStatus.parse("uptime_s=soon\n").uptime_s is None


def test_device_sh_status_reports_the_running_servers_uptime(tmp_path):
    """device.sh status on a real directory: a live pid's uptime comes from /proc (0 <= it < the device's)."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "d" / "run").mkdir(parents=True)
        (tmp_path / "d" / "run" / "edgedl.pid").write_text(f"{sleeper.pid}\n")
        proc = subprocess.run(["sh", "-c", programs.DEVICE, "edgedl", str(tmp_path / "d"), "status"],
                              capture_output=True, text=True, timeout=30)
    finally:
        sleeper.kill()
        sleeper.wait()
    st = DeviceStatus.parse(proc.stdout)
    assert proc.returncode == 0 and st.running and st.pid == sleeper.pid and st.manager == "process"
    assert st.directory == str((tmp_path / "d").resolve()) and st.arch
    assert st.uptime_s is not None and 0 <= st.uptime_s < 30 and st.uptime_s <= st.device_uptime_s


def test_key_values_keep_order_and_repeats_and_skip_other_lines():
    assert key_values("pruned=a\nsome log line\npruned=b\nx=1=2\n") == [("pruned", "a"), ("pruned", "b"), ("x", "1=2")]
    assert key_values("a b=c\n=d\n") == []


def test_activation_and_health_reports():
    act = Activation.parse("service=systemd\nunit=edgedl-x.service\nbind=::\nauth=key\napi_key_generated=abc\n")
    assert (act.service, act.unit, act.bind, act.auth, act.api_key_generated) == ("systemd", "edgedl-x.service", "::",
                                                                                  "key", "abc")
    assert Activation.parse("service=process\nbind=127.0.0.1\nauth=none\n").unit is None
    ok = Health.parse(0, '{"ready": true, "max_abs_diff": 1e-06, "models": ["cnn"], "code": 0, '
                         '"release_models": {"cnn": "ab12"}}\n')
    assert ok.ready and ok.max_abs_diff == 1e-06 and ok.models == ("cnn",) and ok.release_models == {"cnn": "ab12"}
    missing = Health.parse(13, '{"ready": false, "error": "the server runs without its model cnn (HTTP 503: x); '
                               'its log ends: a | b", "code": 13}')
    assert not missing.ready and missing.code is DeviceExit.MODEL_MISSING
    assert missing.reason == "the server runs without its model cnn (HTTP 503: x)"
    nothing = Health.parse(10, "", "no service.env in /d: nothing was started here\n")
    assert nothing.code is DeviceExit.NOT_READY and "nothing was started" in nothing.error
    assert last_json_line('banner\n{"a": 1}\nnot json\n') == {"a": 1} and last_json_line("{broken") is None


def test_requirements_become_device_sh_check_arguments():
    r = Requirements(profile="rpi5", arch="aarch64", python="3.11", pythons=("3.11", "3.12"), need_disk_mb=420,
                     min_memory_mb=150, memory_mb=3500, release="sha-0123456789ab")
    assert r.args() == ["profile=rpi5", "arch=aarch64", "python=3.11", "need_disk_mb=420", "min_memory_mb=150",
                        "memory_mb=3500", "release=sha-0123456789ab"]
    assert r.to_json()["pythons"] == ["3.11", "3.12"]


def test_release_ids_are_the_manifests_hash_and_a_file_name_the_device_accepts():
    rid = release_id("0123456789abcdef" * 4)
    assert rid == "sha-0123456789ab"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", rid) and not rid.startswith(".")  # device.sh check_value id


MANIFEST = {
    "format": "edgedl-bundle/1", "bundle": "digits", "edgedl_version": "0.1.0", "created": "2026-12-01T10:00:00+00:00",
    "profile": {"name": "rpi5", "arch": "aarch64", "platforms": ["manylinux_2_28_aarch64"], "python": ["3.11", "3.12"],
                "onnxruntime": "1.32.0", "description": "Raspberry Pi 5", "onnxruntime_known_bad": [],
                "onnxruntime_for_python": {}, "providers": ["cpu"], "threads": 4, "quantization": "arm64",
                "memory_mb": 3500, "min_free_disk_mb": 200, "cpu_features": [], "docker_base": "", "wheel_note": "", "serve_limits": "small"},
    "python": "3.11", "platforms": ["manylinux_2_28_aarch64"], "server": {
        "host": "0.0.0.0", "port": 8000, "grpc_port": 8001, "limits": "small",
        "shape_options": {"dims": {"batch": 4}, "input_shapes": {}, "batch_axes": {},
                          "value_ranges": {"image": [0.0, 1.0]}}},
    "models": [{"name": "cnn", "version": 1, "path": "models/cnn/1/model.onnx",
                "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}],
                "labels": ["0", "1"], "preprocessing": None, "recipe": "cnn", "quantization": None,
                "source": {"path": "/x/cnn.onnx", "sha256": "ab" * 32, "size": 1234}, "sha256": "ab" * 32}],
    "runtime": {"onnxruntime": "1.32.0", "requested": ["onnxruntime==1.32.0", "numpy"],
                "requirements": ["numpy==2.1.0", "onnxruntime==1.32.0"], "wheels": ["numpy-2.1.0-cp311.whl"]},
    "scope": "bundle", "reference": "reference.json", "files": {"models/cnn/1/model.onnx": "ab" * 32},
}


def test_the_manifest_round_trips_through_its_typed_form():
    m = Manifest.from_json(json.loads(json.dumps(MANIFEST)))
    assert m.profile.name == "rpi5" and m.profile.python == ("3.11", "3.12") and m.server.port == 8000
    assert m.models[0].inputs[0].shape == ("batch", 1, 8, 8) and m.models[0].source.size == 1234
    assert m.runtime.requirements == ("numpy==2.1.0", "onnxruntime==1.32.0")
    assert m.server.grpc_port == 8001 and m.server.shape_options.dims == {"batch": 4}
    assert m.server.shape_options.value_ranges == {"image": (0.0, 1.0)}
    assert m.to_json() == MANIFEST
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other/2"), "is not an edgedl-bundle/1 manifest"),
    (lambda d: d.pop("models"), "is not an edgedl-bundle/1 manifest"),
    (lambda d: d.update(scope="repository"), "a model repository's manifest"),
    (lambda d: d["server"].update(host="0.0.0.0$(id)"), "the bundle's server host"),
    (lambda d: d["server"].update(port="80; id"), "the bundle's server port"),
])
def test_a_manifest_that_is_not_a_bundles_is_refused_in_one_line(change, message):
    data = json.loads(json.dumps(MANIFEST))
    change(data)
    with pytest.raises(EdgeDLError, match=re.escape(message)):
        Manifest.from_json(data, "digits")


def test_a_fleet_status_row_is_read_from_the_devices_own_lines():
    """fleet status.yml hands back what device.sh status and wait-ready printed; the same parsers make the row."""
    from edgedl.stages.fleet import _device_state

    health = '{"ready": true, "code": 0, "release_models": {"cnn": "ab12", "mlp": "cd34"}}'
    row = _device_state({"host": "pi", "reachable": True, "status": STATUS, "health": health, "health_rc": 0},
                        ["rpi5"])
    assert (row.current, row.running, row.ready, row.arch, row.dir, row.port, row.uptime_s, row.service) == (
        "sha-bbbbbbbbbbbb", True, True, "aarch64", "/home/pi/edgedl", "8000", 3600.5, "systemd")
    assert row.models == {"cnn": "ab12", "mlp": "cd34"} and row.groups == ["rpi5"] and row.error is None
    slow = _device_state({"host": "pi", "reachable": True, "status": STATUS, "health_rc": 10,
                          "health": '{"ready": false, "code": 10, "error": "not ready within 3 s; its log ends: x"}'},
                         [])
    assert not slow.ready and slow.running and slow.error == "not ready within 3 s"
    stopped = _device_state({"host": "pi", "reachable": True, "status": "current=sha-b\nrunning=no\n", "health_rc": 10,
                             "health": '{"ready": false, "code": 10, "error": "not ready within 0 s", '
                                       '"release_models": {"cnn": "ab12"}}'}, [])
    # a stopped server is not ready, which is no error; its current release's models are still named
    assert (stopped.running, stopped.ready, stopped.models, stopped.error) == (False, False, {"cnn": "ab12"}, None)
    unprobed = _device_state({"host": "pi", "reachable": True, "status": "current=\nrunning=no\n", "health": "",
                              "health_rc": None}, [])
    assert (unprobed.ready, unprobed.models, unprobed.error) == (False, {}, None)
    down = _device_state({"host": "dev4", "reachable": False, "error": "Connection refused"}, [])
    assert not down.reachable and down.error == "Connection refused" and down.current is None
