"""``edgedl package``: a self-contained bundle for one device profile.

Layout of a bundle (also written as ``DIR.tar.gz``)::

    manifest.json            sha256 of every other file, models' inputs/outputs/labels, profile, versions
    manifest.json.sig        with --sign KEY: OpenSSH signature of manifest.json (ssh-keygen -Y, ed25519)
    models/NAME/1/model.onnx model repository in the Triton layout (+ config.pbtxt), what `edgedl serve` loads
    requirements.txt         exact pins of every wheel in wheels/ (edgedl itself included)
    wheels/                  offline wheelhouse for the target's platform and Python: edgedl + its runtime deps
    start.sh supervise.sh    start the server from the release venv / keep it running without systemd
    edgedl.service           systemd unit
    Dockerfile               for the target (arm64 Python base for a Pi, l4t/JetPack for Jetson); text only
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import edgedl
from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import FORMAT, MANIFEST, SIGNATURE, SIGNATURE_NAMESPACE, hash_tree, sha256_file
from edgedl.runtime.signature import ShapeOptions, options_per_model
from edgedl.stages.deploy.values import serve_host, tcp_port
from edgedl.stages.files import atomic_output_dir, writable_output
from edgedl.stages.profiles import DeviceProfile, load_profile
from edgedl.stages.triton import model_names
from edgedl.stages.resources import deploy_dir

SOURCE_ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = deploy_dir("templates")  # deploy/templates in a checkout, edgedl/_deploy/templates when installed
# what the device needs to serve: the runtime (numpy, onnxruntime, click, rich) and the server (uvicorn, httptools)
RUNTIME_REQUIREMENTS = ("numpy", "click", "rich", "uvicorn", "httptools")
GRPC_REQUIREMENTS = ("grpcio", "protobuf")  # edgedl[grpc]: only in a bundle that serves gRPC (--grpc-port)


@dataclass
class PackageConfig:
    models: list[Path]
    target: str
    output: Path
    python: str | None = None  # default: the profile's first Python version
    port: int = 8000
    grpc_port: int | None = None  # also serve gRPC on this port (the bundle's wheelhouse then carries grpcio)
    host: str = "0.0.0.0"
    names: list[str] = field(default_factory=list)  # model names in the repository; default: file stems
    tarball: bool = True
    edgedl_wheel: Path | None = None  # default: built from this source tree
    cache_dir: Path | None = None  # wheelhouse/wheel cache; default $EDGEDL_CACHE or ~/.cache/edgedl
    progress: bool = True
    ort_format: bool = False  # also write each model in onnxruntime's .ort format (for minimal onnxruntime builds)
    sign_key: Path | None = None  # OpenSSH ed25519 private key (or its .pub, with the key in ssh-agent) to sign with
    # sizes, batch axes, value ranges for the models that have those names: the device server's options (start.sh)
    # and the sizes of the reference outputs
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)
    optimization: dict | None = None  # `edgedl optimize`'s search result, recorded in the manifest


def cache_root(explicit: Path | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("EDGEDL_CACHE"):
        return Path(os.environ["EDGEDL_CACHE"])
    return Path.home() / ".cache" / "edgedl"


def _pip(*args: str, what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        if "No matching distribution" in tail:
            raise EdgeDLError(f"{what} failed: {tail.removeprefix('ERROR: ')} - that version has no wheel for this "
                              "platform and Python; pick another --python or pin another onnxruntime in the profile")
        raise EdgeDLError(f"{what} failed: {tail} - check your network/index settings (pip {' '.join(args[:1])})")


def _locked_cache(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.parent / f".{path.name}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # parallel package runs share one download
    return lock


def wheelhouse(profile: DeviceProfile, python: str, cache: Path, grpc: bool = False) -> tuple[Path, list[str]]:
    """The target's runtime wheels, downloaded once per (platforms, python, requirements); returns (dir, specs)."""
    specs = [f"onnxruntime=={profile.onnxruntime_pin(python)}", *RUNTIME_REQUIREMENTS, *(GRPC_REQUIREMENTS if grpc else ())]
    key = hashlib.sha256(json.dumps([profile.platforms, python, specs]).encode()).hexdigest()[:16]
    target = cache / "wheelhouse" / f"{profile.arch}-py{python}-{key}"
    lock = _locked_cache(target)
    try:
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
            platform_args = [a for p in profile.platforms for a in ("--platform", p)]
            tag = python.replace(".", "")
            _pip("download", "-q", "--only-binary=:all:", *platform_args, "--python-version", python,
                 "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none", "-d", str(tmp), *specs,
                 what=f"downloading {profile.arch} wheels for Python {python} ({', '.join(specs)})")
            (tmp / ".complete").write_text(json.dumps(specs))
            tmp.rename(target)
    finally:
        lock.close()
    return target, specs


def edgedl_wheel(cache: Path) -> Path:
    """A wheel of this edgedl source tree (pure Python), built once per source hash with pip's build backend."""
    if not (SOURCE_ROOT / "pyproject.toml").is_file():
        raise EdgeDLError("edgedl's source tree is not available to build the runtime wheel; pass --edgedl-wheel PATH")
    # walk with followlinks: edgedl/_deploy is a link to deploy/, whose files the wheel carries too
    sources = sorted(Path(d, f) for d, _, files in os.walk(SOURCE_ROOT / "toolkit" / "edgedl", followlinks=True)
                     for f in files if "__pycache__" not in Path(d).parts)
    h = hashlib.sha256((SOURCE_ROOT / "pyproject.toml").read_bytes())
    for p in sources:
        h.update(str(p.relative_to(SOURCE_ROOT)).encode())
        h.update(p.read_bytes())
    target = cache / "edgedl-wheel" / h.hexdigest()[:16]
    lock = _locked_cache(target)
    try:
        wheels = sorted(target.glob("edgedl-*.whl"))
        if not wheels:
            with tempfile.TemporaryDirectory(prefix="edgedl-src-") as tmp:
                src = Path(tmp) / "src"
                # build from a clean copy so the shared source tree gets no build/ or egg-info litter
                shutil.copytree(SOURCE_ROOT / "toolkit", src / "toolkit", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                shutil.copy2(SOURCE_ROOT / "pyproject.toml", src)
                if (SOURCE_ROOT / "README.md").is_file():
                    shutil.copy2(SOURCE_ROOT / "README.md", src)
                out = Path(tmp) / "out"
                _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src), what="building the edgedl wheel")
                target.mkdir(parents=True, exist_ok=True)
                for whl in out.glob("edgedl-*.whl"):
                    shutil.copy2(whl, target)
            wheels = sorted(target.glob("edgedl-*.whl"))
    finally:
        lock.close()
    if not wheels:
        raise EdgeDLError("building the edgedl wheel produced no file; run `pip wheel --no-deps .` to see why")
    return wheels[-1]


def _pins(wheel_dir: Path) -> list[str]:
    """name==version for every wheel file (PEP 427 file names)."""
    pins = []
    for whl in sorted(wheel_dir.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        pins.append(f"{name.replace('_', '-').lower()}=={version}")
    return pins


def _render(template: str, values: dict[str, object]) -> str:
    """Fill a template's @KEY@ placeholders. A value never adds a line (a Dockerfile instruction, a unit directive,
    a shell command); values that reach a shell or systemd come quoted for it from the caller."""
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        if any(ord(c) < 32 or ord(c) == 127 for c in str(value)):
            raise EdgeDLError(f"{key.lower().replace('_', ' ')} {str(value)!r} holds a line break or control character "
                              f"and cannot go into {template}; remove it (from the profile, -o or the option)")
        text = text.replace(f"@{key}@", str(value))
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise RuntimeError(f"template {template} has unfilled placeholders {leftover}")
    return text


def _ssh_keygen(*args: str, what: str, **kw) -> subprocess.CompletedProcess:
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise EdgeDLError(f"{what} needs ssh-keygen (OpenSSH 8.1 or newer); install the OpenSSH client")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=300, **kw)


def check_signing_key(key: Path) -> None:
    """Refuse, before any work, a --sign KEY that is missing or not ed25519 (ssh-keygen -l reads the public half;
    no passphrase is asked here)."""
    key = Path(key)
    if not key.is_file():
        raise EdgeDLError(f"--sign {key} does not exist; pass an OpenSSH ed25519 private key (ssh-keygen -t ed25519)")
    proc = _ssh_keygen("-l", "-f", str(key), what="--sign")
    kind = proc.stdout.strip().rsplit("(", 1)[-1].rstrip(")") if proc.returncode == 0 else ""
    if kind not in ("ED25519", "ED25519-SK"):
        raise EdgeDLError(f"--sign {key} is {'a ' + kind + ' key' if kind else 'not an OpenSSH key'}; sign with an "
                          "ed25519 key (ssh-keygen -t ed25519 -f KEY)")


def sign_manifest(bundle_dir: Path, key: Path) -> Path:
    """``ssh-keygen -Y sign`` manifest.json into manifest.json.sig; a passphrase is asked on the terminal."""
    proc = _ssh_keygen("-Y", "sign", "-f", str(key), "-n", SIGNATURE_NAMESPACE, str(Path(bundle_dir) / MANIFEST),
                       what="--sign")
    signature = Path(bundle_dir) / SIGNATURE
    if proc.returncode != 0 or not signature.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeDLError(f"signing the manifest with {key} failed ({tail}); check the key and its passphrase "
                          "(nothing was written)")
    return signature


def _model_entry(path: Path, name: str) -> dict:
    from edgedl.runtime import load

    if not path.is_file():
        raise EdgeDLError(f"model {path} does not exist; pass the path of an .onnx file")
    if path.suffix != ".onnx":
        raise EdgeDLError(f"{path} is not an .onnx file; export it first with `edgedl export`")
    if any(path.parent.glob(f"{path.name}.data")) or any(path.parent.glob(f"{path.stem}.onnx.data")):
        data = path.parent / f"{path.name}.data"
        raise EdgeDLError(f"{path} keeps its weights in external data ({data.name}); re-export it as one file "
                          "(edgedl export writes single files)")
    try:
        runner = load(path)
    except EdgeDLError:
        raise
    except Exception as exc:  # onnxruntime's own load errors: a corrupt or non-ONNX file
        raise EdgeDLError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
    meta = runner.metadata
    return {
        "name": name,
        "version": 1,
        "path": f"models/{name}/1/model.onnx",
        "inputs": [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)} for t in runner.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape)} for t in runner.outputs],
        "labels": meta.get("labels"),
        "preprocessing": meta.get("preprocessing"),
        "recipe": meta.get("recipe"),
        "quantization": meta.get("quantization"),
        "source": {"path": str(path.resolve()), "sha256": sha256_file(path), "size": path.stat().st_size},
    }


def _model_options(models: list[Path], names: list[str], options: ShapeOptions) -> dict[str, ShapeOptions]:
    """The size options each model gets (those naming its dims, inputs and outputs), checked now: a name no
    model has, a name several models have (the one server of a bundle could not tell whose it is), or a shape the
    input cannot take is refused before anything is written."""
    from edgedl.runtime import load
    from edgedl.runtime.signature import Signature

    runners = [load(Path(p)) for p in models]
    per_model = options_per_model(options, [(r.inputs, r.outputs) for r in runners])
    owners: dict[str, list[str]] = {}
    for name, own in zip(names, per_model):
        for option in (own.dims, own.input_shapes, own.batch_axes, own.value_ranges):
            for key in option:
                owners.setdefault(key, []).append(name)
    for key, shared in owners.items():
        if len(set(shared)) > 1:
            raise EdgeDLError(f"the size option for '{key}' would apply to models {', '.join(dict.fromkeys(shared))}, "
                              f"which all have a '{key}'; package them in bundles of their own, each with its sizes "
                              "(nothing was written)")
    for name, runner, own in zip(names, runners, per_model):
        try:
            Signature.of_runner(runner, own)
        except EdgeDLError as exc:
            raise EdgeDLError(f"model {name}: {exc} (nothing was written)") from None
    return dict(zip(names, per_model))


def _ort_format(model: Path, name: str, staging: Path, arch: str, options: ShapeOptions) -> dict:
    """Convert to onnxruntime's .ort format (onnxruntime.tools, needs onnx), prove it computes what the .onnx
    does, and keep the operator config a minimal onnxruntime build (--include_ops_by_config) needs."""
    import numpy as np

    from edgedl._lazy import require
    from edgedl.runtime import load

    require("onnx")  # the converter imports it; name the extra if it is missing
    dest = staging / "ort" / name
    with tempfile.TemporaryDirectory(prefix="edgedl-ort-") as tmp:
        src = Path(tmp) / f"{name}.onnx"
        shutil.copyfile(model, src)
        proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
                               "--output_dir", str(Path(tmp) / "out"), "--optimization_style", "Fixed",
                               "--target_platform", "arm" if arch == "aarch64" else "amd64"],
                              capture_output=True, text=True)
        ort_file = Path(tmp) / "out" / f"{name}.ort"
        if proc.returncode != 0 or not ort_file.is_file():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EdgeDLError(f"converting {model} to .ort failed ({tail}); drop --ort or check the model's ops")
        dest.mkdir(parents=True)
        shutil.copyfile(ort_file, dest / "model.ort")
        configs = sorted((Path(tmp) / "out").glob("*.config"))
        if configs:
            shutil.copyfile(configs[0], dest / "required_operators.config")
    from edgedl.stages.fleet.reference import reference_feeds

    ref, ort = load(model), load(dest / "model.ort")
    feeds = reference_feeds(ref, options)
    want, got = ref.run(feeds), ort.run(feeds)
    worst = max(float(np.max(np.abs(np.asarray(want[k], dtype=np.float64) - np.asarray(got[k], dtype=np.float64))))
                for k in want)
    if worst > 1e-5:
        raise EdgeDLError(f"the .ort form of {model} differs from the .onnx by {worst:.3g}; drop --ort")
    return {"path": f"ort/{name}/model.ort", "max_abs_diff_vs_onnx": worst, "sha256": sha256_file(dest / "model.ort")}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def package(config: PackageConfig) -> dict:
    """Build the bundle directory (+ tarball); return its manifest (with ``bundle`` and ``tarball`` paths added)."""
    from edgedl.console import progress

    if not config.models:
        raise EdgeDLError("give at least one MODEL.onnx to package")
    profile = load_profile(config.target)
    python = profile.check_python(config.python or profile.python[0])
    names = model_names(config.models, config.names)
    out = Path(config.output)
    tarball = out.parent / f"{out.name}.tar.gz"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgeDLError(f"{out} already exists and is not empty; choose another -o or remove it (nothing was written)")
    if config.tarball and tarball.exists():
        raise EdgeDLError(f"{tarball} already exists; remove it or choose another -o (nothing was written)")
    if any(ord(c) < 32 or ord(c) == 127 for c in out.name):
        raise EdgeDLError(f"-o {str(out)!r}: the bundle's name holds a line break or control character; choose another")
    port = tcp_port(config.port, "--port")
    grpc_port = None if config.grpc_port is None else tcp_port(config.grpc_port, "--grpc-port")
    if grpc_port == port:
        raise EdgeDLError(f"--grpc-port {grpc_port} is the HTTP --port too; give gRPC a port of its own (nothing was written)")
    host = serve_host(config.host, "--host")
    writable_output(out, "bundle directory", directory=True)
    if config.sign_key is not None:
        check_signing_key(config.sign_key)

    entries = [_model_entry(Path(p), n) for p, n in zip(config.models, names)]
    options = _model_options(config.models, names, config.shape_options)
    cache = cache_root(config.cache_dir)
    with progress("packaging", total=5, enabled=config.progress) as advance:
        # built in a staging directory next to OUT and renamed into place only when complete
        with atomic_output_dir(out) as staging:
            for src, entry in zip(config.models, entries):
                dest = staging / entry["path"]
                dest.parent.mkdir(parents=True)
                shutil.copyfile(src, dest)
                (dest.parent.parent / "config.pbtxt").write_text(
                    f'name: "{entry["name"]}"\nplatform: "onnxruntime_onnx"\n')
                entry["sha256"] = sha256_file(dest)
                if config.ort_format:
                    entry["ort"] = _ort_format(Path(src), entry["name"], staging, profile.arch, options[entry["name"]])
            # reference outputs for the smoke inference a device must pass after a rollout (edgedl fleet)
            from edgedl.stages.fleet.reference import reference_outputs

            reference = reference_outputs(staging, {"models": entries}, options)
            reference["source"] = f"computed at package time with onnxruntime {_ort_version()} on the packaging host"
            (staging / "reference.json").write_text(json.dumps(reference) + "\n")
            advance(info="models")
            wheels_src, specs = wheelhouse(profile, python, cache, grpc=grpc_port is not None)
            wheels = staging / "wheels"
            shutil.copytree(wheels_src, wheels, ignore=shutil.ignore_patterns(".complete"))
            advance(info="wheelhouse")
            own = Path(config.edgedl_wheel) if config.edgedl_wheel else edgedl_wheel(cache)
            if not own.is_file():
                raise EdgeDLError(f"--edgedl-wheel {own} does not exist")
            shutil.copy2(own, wheels)
            pins = _pins(wheels)
            (staging / "requirements.txt").write_text(
                f"# edgedl runtime for {profile.name} ({profile.arch}, Python {python}); install offline with\n"
                "#   pip install --no-index --find-links wheels -r requirements.txt\n" + "\n".join(pins) + "\n")
            advance(info="edgedl wheel")
            # HOST/PORT land in start.sh (sh, quoted); BUNDLE in the unit's Description= (systemd: % is a specifier)
            values = {"HOST": shlex.quote(host), "PORT": port, "GRPC_PORT": grpc_port or "",
                      "LIMITS": shlex.quote(profile.serve_limits),
                      "SERVE_OPTIONS": " ".join(map(shlex.quote, config.shape_options.to_args())),
                      "PROFILE": profile.name, "DESCRIPTION": profile.description,
                      "BASE_IMAGE": profile.docker_image(python), "DOCKER_ARCH": "arm64" if profile.arch == "aarch64" else "amd64",
                      "WHEEL_NOTE": profile.wheel_note or "see the profile", "REMOTE_DIR": "/opt/edgedl",
                      "BUNDLE": out.name.replace("%", "%%"), "MEMORY_MB": int(profile.memory_mb)}
            for name, template in (("start.sh", "start.sh"), ("supervise.sh", "supervise.sh"), ("edgedl.service", "edgedl.service"),
                                   ("Dockerfile", "Dockerfile.jetson" if profile.docker_base.startswith("nvcr.io/nvidia/l4t") else "Dockerfile")):
                (staging / name).write_text(_render(template, values))
            for script in ("start.sh", "supervise.sh"):
                (staging / script).chmod(0o755)
            advance(info="scripts")
            manifest = {
                "format": FORMAT,
                "bundle": out.name,
                "edgedl_version": edgedl.__version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "profile": {k: v for k, v in profile.to_dict().items() if k != "source"},
                "python": python,
                "platforms": list(profile.platforms),
                "server": {"host": host, "port": port, "grpc_port": grpc_port, "limits": profile.serve_limits,
                           "shape_options": config.shape_options.to_json()},
                "models": entries,
                "runtime": {"onnxruntime": profile.onnxruntime_pin(python), "requested": specs, "requirements": pins,
                            "wheels": sorted(p.name for p in wheels.glob("*.whl"))},
                "scope": "bundle",
                "reference": "reference.json",
            }
            if config.optimization is not None:
                manifest["optimization"] = config.optimization
            (staging / "models" / MANIFEST).write_text(json.dumps(
                {"format": FORMAT, "scope": "repository", "bundle": out.name, "files": hash_tree(staging / "models")}, indent=2) + "\n")
            manifest["files"] = hash_tree(staging)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if config.sign_key is not None:
                sign_manifest(staging, config.sign_key)
        if config.tarball:
            tmp_tar = tarball.with_name(f".{tarball.name}.partial")
            with tarfile.open(tmp_tar, "w:gz") as tar:
                tar.add(out, arcname=out.name)
            tmp_tar.rename(tarball)
        advance(info="manifest")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {**manifest, "path": str(out), "tarball": str(tarball) if config.tarball else None, "size_bytes": size,
            "signature": str(out / SIGNATURE) if config.sign_key is not None else None}
