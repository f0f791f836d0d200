"""Slot workspaces: paths confined to a slot's directory, listing and reset (stdlib only).

A relative path is resolved with every symlink followed; if the result is not inside the
workspace, or the path was absolute or climbed with ``..``, it is refused.
"""

from __future__ import annotations

import os
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
    """True if ``root`` exists and has no entries at all (False when in doubt)."""
    try:
        with os.scandir(root) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def reset(root: Path) -> None:
    """Empty ``root`` (re-creating it if a run removed it) and check that it is empty.

    Links are removed, not followed; folders a run made read-only are made writable
    first, so nothing of one run is left for the next.

    Raises:
        OSError: something could not be removed; the slot must not be reused.
    """
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for name in os.listdir(root):
        _remove(os.path.join(root, name))
    if not is_empty(root):
        raise OSError(f"workspace {root} could not be emptied")


def _remove(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    os.chmod(path, 0o700)
    for name in os.listdir(path):
        _remove(os.path.join(path, name))
    os.rmdir(path)
