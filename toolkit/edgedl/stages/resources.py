"""Where edgedl's files are: its deploy files (device profiles, bundle templates and the Ansible playbooks and
role) and its cache (:func:`cache_root`: wheelhouses, built wheels, fleet runs).

Their readable, editable source of truth is ``deploy/`` at the repository root. In the source tree
``toolkit/edgedl/_deploy`` is a symlink to it (``../../deploy``); setuptools follows the symlink when it builds a
wheel or an sdist, so an installed edgedl carries real copies in ``edgedl/_deploy/`` (package data, see the
``[tool.setuptools.package-data]`` table in pyproject.toml). One lookup for every reader: the packaged
``edgedl/_deploy`` when it is a directory (an installed wheel, or a checkout, through the symlink), else
``deploy/`` next to ``toolkit/`` (a checkout where the symlink did not survive, e.g. Windows without symlinks).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # .../edgedl
PACKAGED = _PACKAGE / "_deploy"
SOURCE_TREE = _PACKAGE.parents[1] / "deploy"  # toolkit/edgedl -> the repository root's deploy/


def deploy_root() -> Path:
    """The directory holding ``profiles/``, ``templates/`` and ``ansible/``.

    Resolved, so a checkout reports ``deploy/...`` (the files to edit) rather than the symlink's path."""
    return PACKAGED.resolve() if PACKAGED.is_dir() else SOURCE_TREE


def deploy_dir(kind: str) -> Path:
    """``deploy_dir("profiles")`` / ``"templates"`` / ``"ansible"``."""
    return deploy_root() / kind


def cache_root(explicit: Path | None = None) -> Path:
    """edgedl's cache: ``explicit``, else ``$EDGEDL_CACHE``, else ``~/.cache/edgedl``."""
    if explicit:
        return Path(explicit)
    if os.environ.get("EDGEDL_CACHE"):
        return Path(os.environ["EDGEDL_CACHE"])
    return Path.home() / ".cache" / "edgedl"
