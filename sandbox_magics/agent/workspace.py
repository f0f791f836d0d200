"""Slot workspaces: paths confined to a slot's directory, listing and reset (stdlib only).

A relative path is resolved with every symlink followed; if the result is not inside the
workspace, or the path was absolute or climbed with ``..``, it is refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any


class PathEscapeError(ValueError):
    """Raised when a path would leave the slot's workspace."""


def confine(root: Path, rel: str) -> Path:
    """Return the real path of ``rel`` inside ``root``, or raise `PathEscapeError`."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or "\\" in rel or "\x00" in rel:
        raise PathEscapeError(f"path must be relative to the workspace, got: {rel!r}")
    if ".." in pure.parts:
        raise PathEscapeError(f"path must not contain '..', got: {rel!r}")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / pure))
    if real != real_root and real_root not in real.parents:
        raise PathEscapeError(f"path leads out of the workspace through a symlink: {rel!r}")
    return real


def list_files(root: Path) -> list[dict[str, Any]]:
    """Every regular file below ``root`` (symlinks not followed), sorted by path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not os.path.isfile(full) or os.path.islink(full):
                continue
            out.append({
                "path": os.path.relpath(full, root),
                "size": st.st_size,
                "mtime": st.st_mtime,
            })
    return out


def is_empty(root: Path) -> bool:
    """True if ``root`` has no entries at all."""
    with os.scandir(root) as entries:
        return next(entries, None) is None


def reset(root: Path) -> None:
    """Empty ``root``, removing links themselves rather than what they point to."""
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
