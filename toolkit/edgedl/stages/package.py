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
import json
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
from edgedl.runtime.manifest import MANIFEST, SIGNATURE, SIGNATURE_NAMESPACE, hash_tree, sha256_file
from edgedl.runtime.signature import ShapeOptions, options_per_model
from edgedl.stages.bundle import (REFERENCE, Manifest, ModelEntry, OrtFile, RepositoryManifest, RuntimeWheels,
                                  ServerDefaults, SourceFile, TensorEntry)
from edgedl.stages.device.values import serve_host, tcp_port
from edgedl.stages.files import atomic_output_dir, fresh_output_dir, writable_output
from edgedl.stages.profiles import load_profile
from edgedl.stages.repository import config_text, load_model, model_names
from edgedl.stages.resources import cache_root, deploy_dir

TEMPLATES = deploy_dir("templates")  # deploy/templates in a checkout, edgedl/_deploy/templates when installed


@dataclass
class PackageConfig:
    models: list[Path]
    target: str
    output: Path
    python: str | None = None  # default: the profile's first Python version
    port: int = 8000
    grpc_port: int | None = None  # also serve gRPC on this port (the bundle's wheelhouse then carries hpack and protobuf)
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


@dataclass(frozen=True)
class PackageResult:
    """The bundle written: its manifest, where it is, its size, its tarball and signature (when asked for)."""

    manifest: Manifest
    path: Path
    size_bytes: int
    tarball: Path | None = None
    signature: Path | None = None

    def to_json(self) -> dict:
        return {**self.manifest.to_json(), "path": str(self.path), "tarball": str(self.tarball) if self.tarball else None,
                "size_bytes": self.size_bytes, "signature": str(self.signature) if self.signature else None}


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


def _model_entry(path: Path, name: str) -> ModelEntry:
    """What the manifest says of a model (its file is copied later: sha256 and .ort are filled in then)."""
    runner = load_model(path)
    meta = runner.metadata
    return ModelEntry(name=name, path=f"models/{name}/1/model.onnx", sha256=sha256_file(path),
                      inputs=tuple(TensorEntry.of(t) for t in runner.inputs),
                      outputs=tuple(TensorEntry.of(t) for t in runner.outputs),
                      source=SourceFile(path=str(path.resolve()), sha256=sha256_file(path), size=path.stat().st_size),
                      labels=meta.get("labels"), preprocessing=meta.get("preprocessing"), recipe=meta.get("recipe"),
                      quantization=meta.get("quantization"))


def serve_args(options: ShapeOptions) -> list[str]:
    """The size options as ``edgedl serve`` takes them (the flags of edgedl.cli._shapes), for start.sh's command."""
    number = lambda v: str(int(v)) if float(v).is_integer() else repr(float(v))  # noqa: E731 - exact
    return [*(a for k, v in options.dims.items() for a in ("--shape", f"{k}={v}")),
            *(a for k, v in options.input_shapes.items()
              for a in ("--input-shape", f"{k}={'x'.join(map(str, v)) or 'scalar'}")),
            *(a for k, v in options.batch_axes.items() for a in ("--batch-axis", f"{k}={'none' if v is None else v}")),
            *(a for k, (lo, hi) in options.value_ranges.items()
              for a in ("--input-range", f"{k}={number(lo)}..{number(hi)}"))]


def _model_options(models: list[Path], names: list[str], options: ShapeOptions) -> dict[str, ShapeOptions]:
    """The size options each model gets (those naming its dims, inputs and outputs), checked now: a name no
    model has, a name several models have (the one server of a bundle could not tell whose it is), or a shape the
    input cannot take is refused before anything is written."""
    from edgedl.runtime.signature import Signature

    runners = [load_model(Path(p)) for p in models]
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


def _ort_format(model: Path, name: str, staging: Path, arch: str, options: ShapeOptions) -> OrtFile:
    """Convert to onnxruntime's .ort format (onnxruntime.tools, needs onnx), prove it computes what the .onnx
    does, and keep the operator config a minimal onnxruntime build (--include_ops_by_config) needs."""
    from edgedl._lazy import require
    from edgedl.runtime import load
    from edgedl.stages.compare import compare_arrays

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
    from edgedl.stages.reference import reference_feeds

    ref, ort = load(model), load(dest / "model.ort")
    feeds = reference_feeds(ref, options)
    want, got = ref.run(feeds), ort.run(feeds)
    worst = max(compare_arrays(k, got[k], want[k], atol=1e-5, rtol=0).max_abs_diff for k in want)
    if worst > 1e-5:
        raise EdgeDLError(f"the .ort form of {model} differs from the .onnx by {worst:.3g}; drop --ort")
    return OrtFile(path=f"ort/{name}/model.ort", max_abs_diff_vs_onnx=worst, sha256=sha256_file(dest / "model.ort"))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def package(config: PackageConfig) -> PackageResult:
    """Build the bundle directory (+ tarball, + signature)."""
    from dataclasses import replace

    from edgedl.console import progress
    from edgedl.stages import reference, wheelhouse

    if not config.models:
        raise EdgeDLError("give at least one MODEL.onnx to package")
    profile = load_profile(config.target)
    python = profile.check_python(config.python or profile.python[0])
    names = model_names(config.models, config.names)
    out = fresh_output_dir(Path(config.output))
    tarball = out.parent / f"{out.name}.tar.gz"
    if config.tarball and tarball.exists():
        raise EdgeDLError(f"{tarball} already exists; remove it or choose another -o (nothing was written)")
    if any(ord(c) < 32 or ord(c) == 127 for c in out.name):
        raise EdgeDLError(f"-o {str(out)!r}: the bundle's name holds a line break or control character; choose another")
    port = tcp_port(config.port, "--port")
    grpc_port = None if config.grpc_port is None else tcp_port(config.grpc_port, "--grpc-port")
    if grpc_port == port:
        raise EdgeDLError(f"--grpc-port {grpc_port} is the HTTP --port too; give gRPC a port of its own (nothing was written)")
    server = ServerDefaults(host=serve_host(config.host, "--host"), port=port, grpc_port=grpc_port,
                            limits=profile.serve_limits,
                            shape_options=config.shape_options)
    writable_output(out, "bundle directory", directory=True)
    if config.sign_key is not None:
        check_signing_key(config.sign_key)

    entries = [_model_entry(Path(p), n) for p, n in zip(config.models, names)]
    options = _model_options(config.models, names, config.shape_options)
    cache = cache_root(config.cache_dir)
    with progress("packaging", total=4, enabled=config.progress) as advance:
        # built in a staging directory next to OUT and renamed into place only when complete
        with atomic_output_dir(out) as staging:
            for i, (src, entry) in enumerate(zip(config.models, entries)):
                dest = staging / entry.path
                dest.parent.mkdir(parents=True)
                shutil.copyfile(src, dest)
                (dest.parent.parent / "config.pbtxt").write_text(config_text(entry.name, None, None)[0])
                entries[i] = replace(entry, sha256=sha256_file(dest),
                                     ort=_ort_format(Path(src), entry.name, staging, profile.arch, options[entry.name])
                                     if config.ort_format else None)
            # reference outputs for the smoke inference a device must pass after a rollout (edgedl fleet)
            ref = reference.compute(staging, entries, f"computed at package time with onnxruntime {_ort_version()} on "
                                                      "the packaging host", config.shape_options)
            (staging / REFERENCE).write_text(json.dumps(ref.to_json()) + "\n")
            advance(info="models")
            wheels = wheelhouse.assemble(
                staging, profile, python, cache, own_wheel=config.edgedl_wheel, grpc=grpc_port is not None,
                note=f"# edgedl runtime for {profile.name} ({profile.arch}, Python {python}); install offline with\n"
                     "#   pip install --no-index --find-links wheels -r requirements.txt\n")
            advance(info="wheelhouse")
            # HOST/PORT land in start.sh (sh, quoted); BUNDLE in the unit's Description= (systemd: % is a specifier)
            values = {"HOST": shlex.quote(server.host), "PORT": server.port, "GRPC_PORT": server.grpc_port or "",
                      "LIMITS": shlex.quote(server.limits),
                      "SERVE_OPTIONS": " ".join(map(shlex.quote, serve_args(server.shape_options))),
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
            (staging / "models" / MANIFEST).write_text(json.dumps(
                RepositoryManifest(out.name, hash_tree(staging / "models")).to_json(), indent=2) + "\n")
            manifest = Manifest(
                bundle=out.name, profile=profile, python=python, server=server, models=tuple(entries),
                runtime=RuntimeWheels(onnxruntime=wheels.onnxruntime, requested=wheels.requested,
                                      requirements=wheels.pins, wheels=wheels.wheels),
                edgedl_version=edgedl.__version__,
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), reference=REFERENCE,
                optimization=config.optimization)
            manifest = replace(manifest, files=hash_tree(staging))
            (staging / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
            if config.sign_key is not None:
                sign_manifest(staging, config.sign_key)
        if config.tarball:
            tmp_tar = tarball.with_name(f".{tarball.name}.partial")
            with tarfile.open(tmp_tar, "w:gz") as tar:
                tar.add(out, arcname=out.name)
            tmp_tar.rename(tarball)
        advance(info="manifest")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return PackageResult(manifest=manifest, path=out, size_bytes=size, tarball=tarball if config.tarball else None,
                         signature=out / SIGNATURE if config.sign_key is not None else None)
