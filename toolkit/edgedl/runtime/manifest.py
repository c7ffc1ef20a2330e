"""A bundle's ``manifest.json``: the sha256 of every file, checked before anything in the bundle is trusted.

Standard library only: this runs on the device (``edgedl serve`` calls :func:`verify_manifest` before it loads a
model from a bundle) and in ``edgedl deploy`` before a release is switched on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from edgedl.errors import EdgeDLError

MANIFEST = "manifest.json"
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
                          "`edgedl package MODEL.onnx --target PROFILE -o DIR`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdgeDLError(f"{path} is not valid JSON ({exc}); re-create the bundle with `edgedl package`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise EdgeDLError(f"{path} is not an {FORMAT} manifest; re-create the bundle with `edgedl package`")
    return manifest


def verify_manifest(bundle_dir: Path) -> dict:
    """Check every file the manifest lists against its sha256; return the manifest.

    Raises ``EdgeDLError`` naming the first file (in sorted order) that is missing or whose hash differs, and
    for any file under ``models/`` that the manifest does not list (an injected model would otherwise be served).
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    files: dict[str, str] = manifest["files"]
    for name in sorted(files):
        rel = _safe_relpath(name)
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
            if name not in files and name != MANIFEST:
                raise EdgeDLError(f"bundle file {name} is not listed in {MANIFEST}: an unexpected file was added to "
                                  "the bundle - refusing to use it; remove it or re-create the bundle")
    return manifest


def hash_tree(bundle_dir: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
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
