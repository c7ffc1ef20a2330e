"""A bundle and its manifest, typed: what ``edgedl package`` writes and ``edgedl deploy`` / ``edgedl fleet`` read.

``manifest.json`` on disk is the format ``edgedl-bundle/1`` that :mod:`edgedl.runtime.manifest` (standard library
only, the reader on the device) checks. Here it is a :class:`Manifest` of frozen dataclasses with one
``to_json()`` and one ``from_json()``; :meth:`Bundle.open` takes a bundle directory or its ``.tar.gz``, unpacks
it, checks its hashes (and its signature, with a verify key) and yields the typed bundle. What a bundle asks of a
device - its release id on the device, the disk it needs, the memory, the architecture and Python - is said
here once (:meth:`Bundle.requirements`); ``device.sh check`` compares it with the device.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from edgedl.errors import EdgeDLError
from edgedl.runtime.manifest import (FORMAT, MANIFEST, SIGNATURE, sha256_file, unpack_bundle, verify_manifest,
                                     verify_signature)
from edgedl.runtime.signature import ShapeOptions
from edgedl.stages.device import values
from edgedl.stages.device.protocol import Requirements
from edgedl.stages.profiles import DeviceProfile

REFERENCE = "reference.json"  # the smoke-inference reference outputs (edgedl.stages.reference)
# rough cost of installing a wheelhouse into a venv, as a multiple of the wheels' size (onnxruntime/numpy unpack ~3x)
INSTALL_EXPANSION = 3.0
MIN_MEMORY_MB = 150  # python + numpy + onnxruntime + a small model peak at ~55 MiB; leave room


def release_id(manifest_sha256: str) -> str:
    """A release's name in a device's ``releases/``: its manifest's hash, so the same bundle is the same release
    wherever it goes (``edgedl deploy`` and ``edgedl fleet`` alike), and deploying it again changes nothing."""
    return f"sha-{manifest_sha256[:12]}"


def _bad(path: Path | str, why: str) -> EdgeDLError:
    return EdgeDLError(f"{path} is not an {FORMAT} manifest ({why}); re-create the bundle with `edgedl package`")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> "TensorEntry":
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))

    @classmethod
    def of(cls, info) -> "TensorEntry":  # a runtime TensorInfo
        return cls(name=info.name, dtype=info.dtype.name, shape=tuple(info.shape))


@dataclass(frozen=True)
class SourceFile:
    """Where a packaged model came from."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class OrtFile:
    """A model's onnxruntime ``.ort`` form (``package --ort``), proven to compute what the ``.onnx`` does."""

    path: str
    max_abs_diff_vs_onnx: float
    sha256: str


@dataclass(frozen=True)
class ModelEntry:
    """One model of the bundle's repository (``models/NAME/VERSION/model.onnx``)."""

    name: str
    path: str
    sha256: str
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    source: SourceFile | None = None
    version: int = 1
    labels: list | None = None
    preprocessing: dict | None = None
    recipe: Any = None
    quantization: dict | None = None
    ort: OrtFile | None = None

    def to_json(self) -> dict:
        out = {"name": self.name, "version": self.version, "path": self.path,
               "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs],
               "labels": self.labels, "preprocessing": self.preprocessing, "recipe": self.recipe,
               "quantization": self.quantization, "source": asdict(self.source) if self.source else None,
               "sha256": self.sha256}
        if self.ort is not None:
            out["ort"] = asdict(self.ort)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "ModelEntry":
        return cls(name=d["name"], path=d["path"], sha256=d["sha256"], version=int(d.get("version", 1)),
                   inputs=tuple(TensorEntry.from_json(t) for t in d.get("inputs", [])),
                   outputs=tuple(TensorEntry.from_json(t) for t in d.get("outputs", [])),
                   source=SourceFile(**d["source"]) if d.get("source") else None, labels=d.get("labels"),
                   preprocessing=d.get("preprocessing"), recipe=d.get("recipe"), quantization=d.get("quantization"),
                   ort=OrtFile(**d["ort"]) if d.get("ort") else None)


@dataclass(frozen=True)
class ServerDefaults:
    """The address a bundle's server binds unless the deploy says otherwise. Checked when read: a bundle may come
    from elsewhere, and these values reach a device's service.env."""

    host: str
    port: int
    grpc_port: int | None = None  # also gRPC (KServe v2 / Triton) there; the wheelhouse then carries hpack, protobuf
    limits: str = "default"  # the server's limits preset (the profile's serve_limits; start.sh passes it)
    # the size options the bundle was packaged with (start.sh passes them; the reference outputs are at those sizes)
    shape_options: ShapeOptions = field(default_factory=ShapeOptions)

    def to_json(self) -> dict:
        return {"host": self.host, "port": self.port, "grpc_port": self.grpc_port, "limits": self.limits,
                "shape_options": self.shape_options.to_json()}

    @classmethod
    def from_json(cls, d: dict, bundle: str = "") -> "ServerDefaults":
        where = f"{bundle}: the bundle" if bundle else "the bundle"
        return cls(host=values.serve_host(d["host"], f"{where}'s server host"),
                   port=values.tcp_port(d["port"], f"{where}'s server port"), limits=str(d.get("limits", "default")),
                   grpc_port=None if d.get("grpc_port") is None else values.tcp_port(d["grpc_port"],
                                                                                     f"{where}'s server gRPC port"),
                   shape_options=ShapeOptions.from_json(d.get("shape_options")))


@dataclass(frozen=True)
class RuntimeWheels:
    """The wheelhouse: the onnxruntime pinned, what was asked for, the exact pins and the wheel files."""

    onnxruntime: str
    requested: tuple[str, ...]
    requirements: tuple[str, ...]
    wheels: tuple[str, ...]

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "RuntimeWheels":
        return cls(onnxruntime=d["onnxruntime"], requested=tuple(d.get("requested", ())),
                   requirements=tuple(d.get("requirements", ())), wheels=tuple(d.get("wheels", ())))


def _profile_json(profile: DeviceProfile) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in profile.to_dict().items() if k != "source"}


def _profile(d: dict) -> DeviceProfile:
    known = {f.name for f in fields(DeviceProfile)} - {"source"}
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
    return DeviceProfile(**data, source="the bundle's manifest")


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what the bundle holds and is for; ``files`` is the sha256 of every other file."""

    bundle: str  # the bundle's name (its directory)
    profile: DeviceProfile
    python: str
    server: ServerDefaults
    models: tuple[ModelEntry, ...]
    runtime: RuntimeWheels
    files: dict[str, str] = field(default_factory=dict)
    edgedl_version: str = ""
    created: str = ""
    reference: str | None = REFERENCE
    format: str = FORMAT
    scope: str = "bundle"
    optimization: dict | None = None  # `edgedl optimize`'s search result, when the bundle came from it

    def to_json(self) -> dict:
        extra = {"optimization": self.optimization} if self.optimization is not None else {}
        return {**extra, "format": self.format, "bundle": self.bundle, "edgedl_version": self.edgedl_version,
                "created": self.created, "profile": _profile_json(self.profile), "python": self.python,
                "platforms": list(self.profile.platforms), "server": self.server.to_json(),
                "models": [m.to_json() for m in self.models], "runtime": self.runtime.to_json(),
                "scope": self.scope, "reference": self.reference, "files": dict(self.files)}

    @classmethod
    def from_json(cls, d: dict, where: str = "the bundle") -> "Manifest":
        """``where``: how errors name the bundle (its directory name)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise _bad(where, f"format is not {FORMAT}")
        if d.get("scope", "bundle") != "bundle":
            raise EdgeDLError(f"{where} is a model repository's manifest, not a bundle's; pass the bundle directory "
                              "(the one holding models/)")
        try:
            return cls(bundle=d["bundle"], profile=_profile(d["profile"]), python=d["python"],
                       server=ServerDefaults.from_json(d["server"], where),
                       models=tuple(ModelEntry.from_json(m) for m in d["models"]),
                       runtime=RuntimeWheels.from_json(d["runtime"]), files=dict(d["files"]),
                       edgedl_version=d.get("edgedl_version", ""), created=d.get("created", ""),
                       reference=d.get("reference"), optimization=d.get("optimization"))
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(where, f"{type(exc).__name__}: {exc}") from None

    def model(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)


@dataclass(frozen=True)
class RepositoryManifest:
    """``models/manifest.json``: the hashes of the model repository alone, so a server pointed at ``BUNDLE/models``
    verifies what it loads."""

    bundle: str
    files: dict[str, str]

    def to_json(self) -> dict:
        return {"format": FORMAT, "scope": "repository", "bundle": self.bundle, "files": dict(self.files)}


@dataclass(frozen=True)
class Bundle:
    """A bundle directory whose hashes (and signature, if a key asked for one) were checked."""

    path: Path
    manifest: Manifest
    manifest_sha256: str  # of the manifest.json bytes checked: the release id comes from it
    signature: Path | None = None  # manifest.json.sig, when the bundle carries one
    verified_with: Path | None = None  # the verify key its signature was checked with

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path, verify_key: Path | None = None) -> Iterator["Bundle"]:
        """The bundle at ``path`` (a directory or the ``DIR.tar.gz`` `edgedl package` wrote, unpacked for the
        block), verified: every file against the manifest, the signature with ``verify_key``."""
        path = Path(path)
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            with tempfile.TemporaryDirectory(prefix="edgedl-bundle-") as tmp:
                yield cls.verified(unpack_bundle(path, Path(tmp)), verify_key)
            return
        if not path.is_dir():
            raise EdgeDLError(f"bundle {path} is not a directory or a .tar.gz; create one with `edgedl package`")
        yield cls.verified(path, verify_key)

    @classmethod
    def verified(cls, directory: Path, verify_key: Path | None = None) -> "Bundle":
        directory = Path(directory)
        signed = verify_signature(directory, verify_key) if verify_key is not None else None
        data = verify_manifest(directory, manifest=signed)
        # the hash of the bytes on disk; a signed manifest's bytes are exactly the ones the signature checked
        digest = sha256_file(directory / MANIFEST)
        signature = directory / SIGNATURE
        return cls(path=directory, manifest=Manifest.from_json(data, directory.name), manifest_sha256=digest,
                   signature=signature if signature.is_file() else None, verified_with=verify_key)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def release(self) -> str:
        return release_id(self.manifest_sha256)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def disk_need_mb(self) -> int:
        """Free disk a device needs for this release: the bundle, its installed runtime, the profile's reserve."""
        return int(self.size_bytes / 2**20 * (1 + INSTALL_EXPANSION) + self.manifest.profile.min_free_disk_mb)

    def requirements(self) -> Requirements:
        """What this bundle asks of a device, for ``device.sh check``."""
        profile = self.manifest.profile
        return Requirements(profile=profile.name, arch=profile.arch, python=self.manifest.python,
                            pythons=profile.python, need_disk_mb=self.disk_need_mb(), min_memory_mb=MIN_MEMORY_MB,
                            memory_mb=int(profile.memory_mb), release=self.release)
