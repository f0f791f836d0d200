"""Per-kernel folders on this machine, and the removal of those left by dead kernels."""

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


def kernel_dir(base: Path) -> Path:
    """This process's folder under ``base`` (``kernel-<pid>``)."""
    return base / f"kernel-{os.getpid()}"


def reap_dead_kernels(base: Path) -> None:
    """Remove ``kernel-<pid>`` folders under ``base`` whose process is gone."""
    if not base.is_dir():
        return
    for entry in base.glob("kernel-*"):
        try:
            os.kill(int(entry.name.split("-", 1)[1]), 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            continue
