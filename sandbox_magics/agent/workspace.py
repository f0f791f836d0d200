"""Slot workspaces: paths confined to a slot's directory, files, listing and reset (stdlib only).

A relative path is resolved with every symlink followed; if the result is not inside the
workspace, or the path was absolute or climbed with ``..``, it is refused. A file with
more than one hard link is refused too, and left out of listings: a run can hard-link any
file it can write into its workspace (``ln /elsewhere/file h``), and the link's name says
nothing of where the other names are.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

_SHOWN = 80


class PathEscapeError(ValueError):
    """Raised when a path would leave the slot's workspace."""


class LinkedFileError(PathEscapeError):
    """Raised when a file has other hard links, any of which may be outside the workspace."""


class NotAFileError(ValueError):
    """Raised when a path names a folder, a FIFO or anything else but a regular file."""


def shown(rel: str) -> str:
    """``rel`` quoted for a message, cut short if long."""
    return repr(rel if len(rel) <= _SHOWN else rel[:_SHOWN] + "...")


def confine(root: Path, rel: str) -> Path:
    """Return the real path of ``rel`` inside ``root``, or raise `PathEscapeError`."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or "\\" in rel or "\x00" in rel:
        raise PathEscapeError(f"path must be relative to the workspace, got: {shown(rel)}")
    if ".." in pure.parts:
        raise PathEscapeError(f"path must not contain '..', got: {shown(rel)}")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / pure))
    if real != real_root and real_root not in real.parents:
        raise PathEscapeError(f"path leads out of the workspace through a symlink: {shown(rel)}")
    return real


def open_file(path: Path, rel: str, write: bool) -> tuple[int, int]:
    """Open the regular file at ``path`` (from `confine`); return its descriptor and size
    (0 once emptied for writing).

    For writing, the file is created if missing, and emptied only once the open descriptor
    shows a regular file with no other hard link: nothing is ever written through a link.
    The last component is not followed, and a FIFO does not block the open.

    Raises:
        LinkedFileError: the file has other hard links.
        NotAFileError: ``path`` is no regular file.
        OSError: the file could not be opened (missing, no permission, a folder...).
    """
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_WRONLY | os.O_CREAT if write else os.O_RDONLY)
    fd = os.open(path, flags, 0o644)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "no regular file"
            raise NotAFileError(f"{shown(rel)} is {kind}; name a file instead")
        if st.st_nlink > 1:
            raise LinkedFileError(
                f"{shown(rel)} has {st.st_nlink} hard links, so it may be a file outside the "
                "workspace; have the run copy the file instead of linking it")
        if write:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, 0 if write else st.st_size


def list_files(root: Path) -> list[dict[str, Any]]:
    """Every regular file below ``root`` with a single link (symlinks not followed), sorted
    by path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
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
