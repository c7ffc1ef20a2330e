"""Nothing a user types reaches a shell unquoted: every package / deploy / fleet option (and a bundle's own server
defaults) that ends up on a device is tried with command substitution, backticks, quotes, spaces, newlines and
``;``. Each is refused with one line and nothing runs - a marker file the injected command would create never
appears - here, and on a real device over loopback OpenSSH, where device.sh refuses the same values again.
Then a deploy directory with spaces works end to end, and a server beyond loopback gets an API key by default."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from edgedl_testing import ROOT, assert_one_line_error, run_edgedl, run_edgedl_inprocess

sys.path.insert(0, str(Path(__file__).parent / "deploy"))
import loopback_sshd  # noqa: E402

CACHE_ENV = {"EDGEDL_CACHE": str(ROOT / "build" / "cache")}


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "INJECTED"


def injections(marker: Path) -> list[str]:
    """Values that run `touch MARKER` wherever they reach a shell unquoted."""
    m = str(marker)
    return [f"$(touch {m})", f"`touch {m}`", f"x';touch {m};'", f'x";touch {m};"', f"a b;touch {m}",
            f"x\ntouch {m}", f"x;touch {m}"]


def assert_refused(result, marker: Path, *fragments: str) -> None:
    assert_one_line_error(result, *fragments, code=None)
    assert not marker.exists(), "the injected command ran"


@pytest.fixture(scope="module")
def bundle(zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("values") / "mlp-x86"
    run_edgedl("package", zoo["mlp"].onnx, "--target", "x86-server", "-o", out, "--no-tarball", env=CACHE_ENV)
    return out


# --- refused on the laptop, before anything connects or is built -------------------------------------------------

CONN = ["--host", "pi@127.0.0.1", "--port", "9", "--ssh-config", "/dev/null"]


def test_deploy_options_that_reach_the_device_are_refused(bundle, marker, tmp_path):
    for evil in injections(marker):
        assert_refused(run_edgedl_inprocess("deploy", bundle, *CONN, "--serve-host", evil), marker, "--serve-host")
        assert_refused(run_edgedl_inprocess("deploy", bundle, *CONN, "--remote-dir", evil), marker, "--remote-dir")
        assert_refused(run_edgedl_inprocess("deploy", "status", *CONN, "--remote-dir", evil), marker, "--remote-dir")
        assert_refused(run_edgedl_inprocess("deploy", bundle, "--host", f"pi@{evil}", "--ssh-config", "/dev/null"),
                       marker, "--host")
        assert_refused(run_edgedl_inprocess("deploy", bundle, *CONN, "--serve-port", evil), marker, "--serve-port")
        key = tmp_path / "key"
        key.write_text("a-long-enough-bearer-token" + evil)
        assert_refused(run_edgedl_inprocess("deploy", bundle, *CONN, "--api-key-file", key), marker, "API key")


def test_package_options_that_reach_the_device_are_refused(zoo, marker, tmp_path):
    model = zoo["mlp"].onnx
    out = tmp_path / "b"
    for evil in injections(marker):
        assert_refused(run_edgedl_inprocess("package", model, "-t", "x86-server", "-o", out, "--host", evil), marker, "--host")
        assert_refused(run_edgedl_inprocess("package", model, "-t", "x86-server", "-o", out, "--port", evil), marker, "--port")
        assert_refused(run_edgedl_inprocess("package", model, "-t", "x86-server", "-o", out, "--name", evil), marker,
                       "model name")
    assert_refused(run_edgedl_inprocess("package", model, "-t", "x86-server", "-o", tmp_path / "a\nb"), marker,
                   "line break")
    assert not out.exists()


def test_a_bundle_whose_own_server_defaults_are_evil_is_refused_by_deploy_and_fleet(bundle, marker, tmp_path):
    import shutil

    evil = shutil.copytree(bundle, tmp_path / "evil")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["server"]["host"] = f"0.0.0.0$(touch {marker})"  # the manifest does not hash itself: still "valid"
    (evil / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(run_edgedl_inprocess("deploy", evil, *CONN), marker, "the bundle's server host")
    from edgedl.errors import EdgeDLError
    from edgedl.stages.fleet import prepare_bundle

    with pytest.raises(EdgeDLError, match="the bundle's server host"):
        prepare_bundle(evil, tmp_path)
    assert not marker.exists()


# --- refused on the device: device.sh checks every value again, and writes what it accepts quoted ------------------

@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with loopback_sshd.running(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def test_device_script_refuses_every_value_with_exit_33(sshd, marker, tmp_path):
    from edgedl.stages.device import programs

    target = sshd.target()
    d = str(tmp_path / "device")
    (tmp_path / "device" / "releases" / "r1").mkdir(parents=True)
    (tmp_path / "device" / "releases" / "r1" / ".installed").touch()  # so activate gets as far as reading the key
    for evil in injections(marker):
        for args, stdin in ((["activate", "r1", evil, "8000"], None), (["activate", "r1", "127.0.0.1", evil], None),
                            (["activate", evil, "127.0.0.1", "8000"], None),
                            (["activate", "r1", "127.0.0.1", "8000", "set", "keep"], ("k" * 20 + evil).encode()),
                            (["logs", evil, "10"], None), (["logs", "", evil], None), (["discard", evil], None),
                            (["restore", evil, ""], None)):
            proc = target.run(programs.DEVICE, d, *args, check=False, input=stdin)
            assert proc.returncode == 33, (args, proc.stdout, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1 and "refusing the" in proc.stderr
            assert not marker.exists(), args
    assert not (tmp_path / "device" / "service.env").exists()


# --- a deploy directory with spaces, served with a key by default -------------------------------------------------

def _beyond_loopback_name() -> str:
    """A name device.sh must treat as beyond loopback (it is not 127.x, ::1 or localhost) that still resolves to
    this machine's loopback, so the test server takes no traffic from the network."""
    name = socket.gethostname()
    try:
        addr = socket.gethostbyname(name)
    except OSError:
        addr = ""
    if name == "localhost" or not addr.startswith("127."):
        pytest.skip(f"this machine's host name {name!r} does not resolve to a loopback address")
    return name


def test_remote_dir_with_spaces_and_a_generated_key(sshd, bundle, tmp_path):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    name = _beyond_loopback_name()
    remote_dir = tmp_path / "my models" / "edge dl"
    port = loopback_sshd.free_port()
    conn = sshd.cli_args(remote_dir)
    try:
        proc = run_edgedl("deploy", bundle, *conn, "--serve-host", name, "--serve-port", port, timeout=300)
        out = proc.stdout
        assert f"listening on {name}:{port} (http://{name}:{port})" in out, out
        key_line = next(line for line in out.splitlines() if line.startswith("API key (generated on the device"))
        key = key_line.rsplit(": ", 1)[1]
        assert len(key) == 64 and int(key, 16) >= 0
        env = remote_dir / "service.env"
        assert env.stat().st_mode & 0o777 == 0o600
        assert env.read_text().splitlines()[:2] == [f"EDGEDL_HOST='{name}'", f"EDGEDL_PORT='{port}'"]
        assert f"EDGEDL_API_KEY='{key}'" in env.read_text()
        assert not (remote_dir / "staging").exists()

        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException, match="API key"):
            client.get_model_repository_index()
        assert [m["name"] for m in client.get_model_repository_index(headers={"Authorization": f"Bearer {key}"})] == ["mlp"]

        status = json.loads(run_edgedl("deploy", "status", *conn, "--json").stdout)
        assert status["ready"] and status["service"]["EDGEDL_API_KEY"] == "(set)"
        shown = json.loads(run_edgedl("deploy", "status", *conn, "--show-key", "--json").stdout)
        assert shown["service"]["EDGEDL_API_KEY"] == key and shown["service"]["EDGEDL_HOST"] == name

        # a second deploy keeps the device's key (and says nothing new about it)
        again = json.loads(run_edgedl("deploy", bundle, *conn, "--serve-host", name, "--serve-port", port, "--json").stdout)
        assert again["auth"] == "key" and again["api_key"] is None and again["bind"] == f"{name}:{port}"
        assert f"EDGEDL_API_KEY='{key}'" in env.read_text()

        # --no-auth: explicit, and loud
        open_proc = run_edgedl("deploy", bundle, *conn, "--serve-host", name, "--serve-port", port, "--no-auth")
        assert "WITHOUT an API key" in open_proc.stderr and "API key: none" in open_proc.stdout
        assert "EDGEDL_API_KEY" not in env.read_text()
        assert [m["name"] for m in client.get_model_repository_index()] == ["mlp"]
    finally:
        loopback_sshd.stop_release_services(remote_dir)
