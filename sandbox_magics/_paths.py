"""Per-client folders on this machine, and the removal of those left by dead kernels.

A client's folder under a base is ``kernel-<pid>-<client id>``: the client id keeps two
clients apart, the pid tells a later kernel whether the owner is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def user_base(name: str) -> Path:
    """``<tmp>/sandbox_magics-<uid>/<name>``, private to this user."""
    base = Path(tempfile.gettempdir()) / f"sandbox_magics-{os.getuid()}" / name
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base.parent, 0o700)
    return base


def client_dir(name: str, client_id: str, base: Path | None = None) -> Path:
    """This client's folder under ``base`` (default: `user_base` of ``name``); folders of
    dead kernels there are removed first."""
    base = base or user_base(name)
    reap_dead_kernels(base)
    return base / f"kernel-{os.getpid()}-{client_id}"


def reap_dead_kernels(base: Path) -> None:
    """Remove ``kernel-<pid>-…`` folders under ``base`` whose process is gone."""
    if not base.is_dir():
        return
    for entry in base.glob("kernel-*"):
        try:
            os.kill(int(entry.name.split("-")[1]), 0)
        except (ValueError, IndexError):
            continue
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            continue
