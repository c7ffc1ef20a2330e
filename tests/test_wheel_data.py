"""An installed edgedl (a wheel, not this checkout) finds its device profiles, bundle templates and Ansible
playbooks (package data under ``edgedl/_deploy``, from the ``toolkit/edgedl/_deploy -> ../../deploy`` symlink) and
its device-side shell scripts.

The wheel and the sdist are built with the real setuptools backend from a copy of the source tree in a temporary
directory (building in place would leave build/ and *.egg-info in the shared tree); the wheel is installed with pip
``--target`` and driven with ``PYTHONPATH`` from a directory outside the repository, so ``import edgedl`` gets the
installed copy and not this checkout (asserted)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from edgedl_testing import ROOT

PROFILES = {"rpi4", "rpi5", "jetson-orin-nano", "x86-server"}
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, timeout=300)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _wheel(src: Path, dist: Path) -> Path:
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src), cwd=src.parent)
    (wheel,) = dist.glob("edgedl-*.whl")
    return wheel


def _shipped(src: Path) -> set[str]:
    """What the wheel must carry from a source tree: deploy/ as edgedl/_deploy, every *.sh and *.pb in the package."""
    deploy = src / "deploy"
    files = [*deploy.glob("profiles/*.toml"), *deploy.glob("templates/*"), *deploy.glob("ansible/**/*")]
    want = {f"edgedl/_deploy/{p.relative_to(deploy).as_posix()}" for p in files
            if p.is_file() and "__pycache__" not in p.parts}
    package = src / "toolkit" / "edgedl"
    # rglob does not descend into the _deploy symlink: these are the package's own scripts (stages/device/device.sh)
    want |= {f"edgedl/{p.relative_to(package).as_posix()}" for p in package.rglob("*.sh") if "_deploy" not in p.parts}
    # and the gRPC endpoint's message descriptors (runtime/server/grpc_server/inference.pb)
    want |= {f"edgedl/{p.relative_to(package).as_posix()}" for p in package.rglob("*.pb")}
    return want


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A copy of what the build reads (pyproject, README, toolkit/ with the _deploy symlink kept, deploy/) and its wheel."""
    work = tmp_path_factory.mktemp("wheel-build")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "toolkit", src / "toolkit", symlinks=True, ignore=_JUNK)
    shutil.copytree(ROOT / "deploy", src / "deploy", ignore=_JUNK)
    assert (src / "toolkit/edgedl/_deploy").is_symlink(), "toolkit/edgedl/_deploy should be a symlink to ../../deploy"
    return {"src": src, "wheel": _wheel(src, work / "dist")}


@pytest.fixture(scope="module")
def site(built, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("wheel-site") / "site"
    _pip("install", "-q", "--no-deps", "--no-compile", "--target", str(site), str(built["wheel"]), cwd=site.parent)
    return site


def _installed(site: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """Python with only the installed copy of edgedl importable ahead of the venv, run outside the repository."""
    home = site.parent / "home"
    home.mkdir(exist_ok=True)  # no ~/.config/edgedl/profiles of the user's
    env = {k: v for k, v in os.environ.items() if k != "EDGEDL_PROFILE_PATH"}
    env.update(PYTHONPATH=str(site), HOME=str(home), EDGEDL_CACHE=str(ROOT / "build" / "cache"), NO_COLOR="1")
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "edgedl", *args]
    return subprocess.run(cmd, cwd=site.parent, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_carries_deploy_files_and_device_scripts(built):
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
    want = _shipped(built["src"])
    assert {f"edgedl/_deploy/profiles/{p}.toml" for p in PROFILES} <= want
    assert {"edgedl/_deploy/templates/start.sh", "edgedl/_deploy/ansible/rollout.yml",
            "edgedl/_deploy/ansible/roles/edgedl_release/tasks/main.yml"} <= want
    assert want - names == set(), "missing from the wheel"
    assert {n for n in names if n.startswith("edgedl/_deploy/")} == {n for n in want if n.startswith("edgedl/_deploy/")}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_sdist_carries_real_files_and_builds_the_same_wheel(built, tmp_path):
    """The sdist stores the symlinked files as regular files, so a wheel built from it (pip install from PyPI's
    sdist, ``python -m build``) carries the same package data."""
    src = built["src"]
    proc = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                           "print(b.build_sdist(sys.argv[1]))", str(tmp_path / "sdist")],
                          cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sdist = tmp_path / "sdist" / proc.stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
        tar.extractall(tmp_path / "unpacked", filter="data")
    profile = members["toolkit/edgedl/_deploy/profiles/rpi5.toml"]
    assert profile.isfile() and not profile.issym()
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    with zipfile.ZipFile(_wheel(unpacked, tmp_path / "dist")) as whl, zipfile.ZipFile(built["wheel"]) as direct:
        assert sorted(whl.namelist()) == sorted(direct.namelist())


def test_installed_copy_finds_profiles_templates_and_playbooks(site):
    code = """if True:
        import json, edgedl
        from edgedl.stages import package, profiles
        from edgedl.stages.fleet import ansible
        print(json.dumps({"edgedl": edgedl.__file__, "builtin": str(profiles.BUILTIN_DIR),
                          "profiles": {n: p.source for n, p in profiles.list_profiles().items()},
                          "templates": str(package.TEMPLATES), "playbooks": str(ansible.playbook_dir())}))
    """
    proc = _installed(site, code=code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    site = site.resolve()
    assert Path(found["edgedl"]).resolve().is_relative_to(site), found["edgedl"]
    assert set(found["profiles"]) == PROFILES
    for path in (found["builtin"], found["templates"], found["playbooks"], *found["profiles"].values()):
        assert Path(path).resolve().is_relative_to(site / "edgedl" / "_deploy"), path
    assert (Path(found["playbooks"]) / "rollout.yml").is_file()
    assert (Path(found["playbooks"]) / "roles" / "edgedl_release" / "tasks" / "main.yml").is_file()
    assert (Path(found["templates"]) / "start.sh").is_file()

    listed = _installed(site, "deploy", "--list-targets", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert {p["name"] for p in json.loads(listed.stdout)} == PROFILES


def test_installed_package_needs_edgedl_wheel_and_renders_installed_templates(site, built, zoo):
    """Without the source tree, ``package`` cannot build the device's edgedl wheel: it says to pass --edgedl-wheel
    and writes nothing; with it, the bundle's scripts come from the installed templates."""
    out = site.parent / "bundle"
    refused = _installed(site, "package", str(zoo["mlp"].onnx), "--target", "rpi5", "-o", str(out))
    assert refused.returncode == 1
    assert "pass --edgedl-wheel PATH" in refused.stderr, refused.stderr[-3000:]
    assert not out.exists() and not out.with_name("bundle.tar.gz").exists()

    made = _installed(site, "package", str(zoo["mlp"].onnx), "--target", "rpi5", "-o", str(out), "--no-tarball",
                      "--edgedl-wheel", str(built["wheel"]))
    assert made.returncode == 0, made.stderr[-3000:]
    assert (out / "wheels" / built["wheel"].name).read_bytes() == built["wheel"].read_bytes()
    for name in ("start.sh", "edgedl.service", "Dockerfile"):
        assert re.search(r"@[A-Z_]+@", (site / "edgedl/_deploy/templates" / name).read_text()), name  # a template
        assert not re.search(r"@[A-Z_]+@", (out / name).read_text()), name  # rendered
    assert "FROM arm64v8/python:3.11-slim-bookworm" in (out / "Dockerfile").read_text()
