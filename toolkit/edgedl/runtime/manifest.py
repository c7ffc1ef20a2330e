"""A bundle's ``manifest.json``: the sha256 of every file, checked before anything in the bundle is trusted, and
its signature ``manifest.json.sig``, which says who made it.

Standard library only: this runs on the device (``edgedl serve`` calls :func:`verify_served` before it loads a
model from a bundle, and at every reload) and in ``edgedl deploy`` before a release is copied.

Fail closed: a model repository inside a bundle is checked against the nearest manifest that covers it, so
deleting ``models/manifest.json`` leaves the bundle's own manifest to refuse the change; ``edgedl serve BUNDLE``
needs the bundle's manifest; with a verify key nothing is served that the key did not sign.

Signatures are OpenSSH's (``ssh-keygen -Y sign``, namespace ``edgedl-bundle``), made with an ed25519 key
(``ssh-ed25519``, or a FIDO ``sk-ssh-ed25519``) and checked with ``ssh-keygen -Y verify``: every laptop and
device that has ssh has them, keys live where users keep them already (files, agents, hardware keys), and edgedl
implements no cryptography of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from edgedl.errors import EdgeDLError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
SIGNATURE_NAMESPACE = "edgedl-bundle"  # ssh-keygen -n: a signature for anything else never verifies as a bundle's
SIGNING_KEY_TYPES = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com")
FORMAT = "edgedl-bundle/1"
# Files under these top-level folders are what the server loads; one that the manifest does not list is tampering.
GUARDED_DIRS = ("models",)
# A bundle carries two manifests: ``manifest.json`` at its root (scope "bundle": every file of the bundle) and
# ``models/manifest.json`` (scope "repository": every file of the model repository), so a server pointed at
# ``--model-repository BUNDLE/models`` finds and verifies the models' hashes too.
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_relpath(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or name != rel.as_posix():
        raise EdgeDLError(f"manifest.json lists an unsafe path {name!r}; the bundle is corrupt or tampered with - "
                          "re-create it with `edgedl package`")
    return rel


def read_manifest(bundle_dir: Path) -> dict:
    """Parse ``bundle_dir/manifest.json`` without checking hashes."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise EdgeDLError(f"{bundle_dir} has no {MANIFEST}: it is not an edgedl bundle - create one with "
                          "`edgedl package`")
    return _parse(path.read_bytes(), path)


def _parse(data: bytes, path: Path) -> dict:
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdgeDLError(f"{path} is not valid JSON ({exc}); re-create the bundle with `edgedl package`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise EdgeDLError(f"{path} is not an {FORMAT} manifest; re-create the bundle with `edgedl package`")
    return manifest


def verify_manifest(bundle_dir: Path, only: str | None = None, manifest: dict | None = None) -> dict:
    """Check every file the manifest lists against its sha256; return the manifest.

    Raises ``EdgeDLError`` naming the first file (in sorted order) that is missing or whose hash differs, and
    for any file under ``models/`` that the manifest does not list (an injected model would otherwise be served).
    ``only``: check just the listed files under this folder (``"models/"``: what a server loads).
    ``manifest``: the manifest already read (the bytes a signature was checked on), instead of reading it again.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir) if manifest is None else manifest
    files: dict[str, str] = manifest["files"]
    for name in sorted(files):
        rel = _safe_relpath(name)
        if only is not None and not name.startswith(only):
            continue
        path = bundle_dir / rel
        if not path.is_file():
            raise EdgeDLError(f"bundle file {name} is missing from {bundle_dir} (listed in {MANIFEST}); the bundle is "
                              "incomplete - copy it again or re-create it with `edgedl package`")
        if sha256_file(path) != files[name]:
            raise EdgeDLError(f"bundle file {name} does not match its sha256 in {MANIFEST}: the bundle was modified "
                              "or corrupted - refusing to use it; re-create it with `edgedl package`")
    guarded = [bundle_dir] if manifest.get("scope") == "repository" else [bundle_dir / top for top in GUARDED_DIRS]
    for root in guarded:
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
            name = path.relative_to(bundle_dir).as_posix()
            if name not in files and name not in (MANIFEST, SIGNATURE):
                raise EdgeDLError(f"bundle file {name} is not listed in {MANIFEST}: an unexpected file was added to "
                                  "the bundle - refusing to use it; remove it or re-create the bundle")
    return manifest


# --- authenticity -----------------------------------------------------------------------------------------------

def _ssh_keygen() -> str:
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise EdgeDLError("checking a bundle's signature needs ssh-keygen (OpenSSH 8.1 or newer); install the OpenSSH "
                          "client (e.g. apt install openssh-client)")
    return tool


def verify_key_lines(key_file: Path) -> list[str]:
    """The ``TYPE BASE64`` ed25519 public keys of an OpenSSH public key file (one key a line, like ``id_ed25519.pub``;
    several lines: any of them may sign)."""
    key_file = Path(key_file)
    try:
        text = key_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeDLError(f"cannot read verify key {key_file}: {getattr(exc, 'strerror', None) or exc}; pass an "
                          "OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub)") from None
    keys = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 2 or words[0] not in SIGNING_KEY_TYPES:
            raise EdgeDLError(f"verify key {key_file} holds {words[0][:40]!r}, not an ed25519 public key "
                              f"({' or '.join(SIGNING_KEY_TYPES)} BASE64); pass the .pub of the signing key")
        keys.append(f"{words[0]} {words[1]}")
    if not keys:
        raise EdgeDLError(f"verify key {key_file} holds no public key; pass the .pub of the key that signs bundles")
    return keys


def verify_signature(bundle_dir: Path, key_file: Path) -> dict:
    """Check ``manifest.json.sig`` over ``manifest.json`` with ``ssh-keygen -Y verify`` against the keys of
    ``key_file``; return the manifest parsed from exactly the bytes that were checked."""
    bundle_dir = Path(bundle_dir)
    data = (bundle_dir / MANIFEST).read_bytes()
    signature = bundle_dir / SIGNATURE
    if not signature.is_file():
        raise EdgeDLError(f"{bundle_dir} is not signed (no {SIGNATURE}) but a verify key was given: refusing it; sign "
                          "it when packaging it (`edgedl package` signs with a key)")
    keys = verify_key_lines(key_file)
    with tempfile.TemporaryDirectory(prefix="edgedl-verify-") as tmp:
        allowed = Path(tmp) / "allowed_signers"  # ssh-keygen's trust list: these keys, for bundle signatures only
        allowed.write_text("".join(f'edgedl namespaces="{SIGNATURE_NAMESPACE}" {key}\n' for key in keys))
        proc = subprocess.run([_ssh_keygen(), "-Y", "verify", "-f", str(allowed), "-I", "edgedl",
                               "-n", SIGNATURE_NAMESPACE, "-s", str(signature)],
                              input=data, capture_output=True, timeout=60)
    if proc.returncode != 0:
        why = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no reason given"])[-1]
        raise EdgeDLError(f"the signature of {bundle_dir / MANIFEST} does not verify with {key_file} ({why}): the "
                          "manifest was changed after signing, or another key signed it - refusing the bundle")
    return _parse(data, bundle_dir / MANIFEST)


# --- what a server may load ------------------------------------------------------------------------------------

def _covering(directory: Path, levels: int = 4) -> list[tuple[Path, dict]]:
    """The edgedl manifests that cover ``directory``, nearest first: its own, then those of the folders above it
    whose scope holds it (a repository manifest: everything under it; a bundle's: its ``models/``). Stops at a
    ``manifest.json`` that is not an edgedl one (another tool's file) or does not cover it."""
    directory = Path(directory).resolve()
    found = []
    if (directory / MANIFEST).is_file():
        found.append((directory, read_manifest(directory)))  # the repository's own: must be a valid one
    for root in list(directory.parents)[:levels]:
        if not (root / MANIFEST).is_file():
            continue
        try:
            manifest = read_manifest(root)
        except EdgeDLError:
            break
        if manifest.get("scope") != "repository" and (root / "models") not in (directory, *directory.parents):
            break
        found.append((root, manifest))
    return found


def verify_served(directory: Path, verify_key: Path | None = None) -> None:
    """Before a server loads models from ``directory`` (a repository, or a model's folder): check it against the
    nearest manifest that covers it. With ``verify_key``, the bundle around it must carry a signature by that
    key, and its signed manifest is what the models are checked against. A directory no manifest covers is a
    plain model repository: served as it is, unless a verify key asks for a signed bundle."""
    chain = _covering(Path(directory))
    if verify_key is not None:
        bundle = next((root for root, m in chain if m.get("scope") != "repository"), None)
        if bundle is None:
            raise EdgeDLError(f"{directory} is not inside an edgedl bundle, so there is no signature to check with the "
                              "verify key; serve a bundle signed when it was packaged (`edgedl package` signs with a key)")
        verify_manifest(bundle, only="models/", manifest=verify_signature(bundle, verify_key))
    elif chain:
        root, manifest = chain[0]
        verify_manifest(root, only=None if manifest.get("scope") == "repository" else "models/", manifest=manifest)


def unpack_bundle(tarball: Path, dest: Path) -> Path:
    """Extract a bundle tarball written by `edgedl package` (one top-level directory, regular files and dirs only)
    into ``dest``; return the bundle directory."""
    import tarfile

    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/")[0] for m in members}
            for m in members:
                parts = m.name.split("/")
                if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()) or len(tops) != 1:
                    raise EdgeDLError(f"{tarball} is not a bundle tarball written by `edgedl package` "
                                      f"(unexpected member {m.name!r}); unpack and check it, or re-package")
            # members checked above (no links, devices or paths outside dest); the data filter re-checks where it exists
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, OSError) as exc:
        raise EdgeDLError(f"cannot read bundle tarball {tarball}: {exc}") from None
    return Path(dest) / tops.pop()


def is_bundle_path(path: Path) -> bool:
    """A bundle directory (its manifest, or a models/ folder) or a bundle tarball, rather than one .onnx file."""
    path = Path(path)
    return path.name.endswith((".tar.gz", ".tgz")) if path.is_file() else path.is_dir()


@contextlib.contextmanager
def open_bundle(path: Path, verify_key: Path | None = None, allow_missing_manifest: bool = False) -> Iterator[Path]:
    """The model repository (``models/``) of a bundle directory or ``.tar.gz`` (unpacked into a temporary
    directory for the block). Its manifest must be there - unless ``allow_missing_manifest``, and never with a
    verify key; the hashes (and signature) are checked when the server loads the repository (:func:`verify_served`)."""
    path = Path(path)
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="edgedl-bundle-") as tmp:
            yield _repository_of(unpack_bundle(path, Path(tmp)), verify_key, allow_missing_manifest)
        return
    yield _repository_of(path, verify_key, allow_missing_manifest)


def _repository_of(bundle: Path, verify_key: Path | None, allow_missing_manifest: bool) -> Path:
    repository = bundle / "models"
    if (bundle / MANIFEST).is_file():
        if read_manifest(bundle).get("scope") == "repository":
            raise EdgeDLError(f"{bundle} is a model repository, not a bundle", hint="serve it as a model repository",
                              option=("model_repository", str(bundle)))
    elif verify_key is not None or not allow_missing_manifest:
        raise EdgeDLError(f"{bundle} has no {MANIFEST}, so nothing proves its models are the ones packaged: refusing "
                          "it. Re-create it with `edgedl package`, serve its models/ as a plain model repository, or "
                          "serve them unverified", hint="allow a missing manifest (allow_missing_manifest=True)",
                          option=("allow_missing_manifest", None))
    if not repository.is_dir():
        raise EdgeDLError(f"{bundle} has no models/ folder: it is not an edgedl bundle; create one with `edgedl package`")
    return repository


def hash_tree(bundle_dir: Path, exclude: tuple[str, ...] = (MANIFEST, SIGNATURE)) -> dict[str, str]:
    """{relative posix path: sha256} for every regular file under bundle_dir (what a manifest's ``files`` holds)."""
    bundle_dir = Path(bundle_dir)
    out = {}
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_symlink():
            raise EdgeDLError(f"{path} is a symlink; a bundle holds only regular files")
        if path.is_file():
            name = path.relative_to(bundle_dir).as_posix()
            if name not in exclude:
                out[name] = sha256_file(path)
    return out
