"""Per-client folders on this machine, and the removal of those left by dead kernels.

A client's folder under a base is ``kernel-<pid>-<client id>``: the client id keeps two
clients apart, the pid tells a later kernel whether the owner is gone. A folder whose
owner is gone is kept while a sandbox agent in it lives (it keeps a detached run): each
agent's folder names its pid in ``agent.pid``.
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


AGENT_PID = "agent.pid"


def agent_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live sandbox agent (not a process that reused a dead one's pid)."""
    if pid is None:
        return False
    try:
        return b"sandbox_magics.agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def agents_alive(folder: Path) -> bool:
    """Whether a live sandbox agent serves a folder right under ``folder``."""
    for pid_file in folder.glob(f"*/{AGENT_PID}"):
        try:
            if agent_alive(int(pid_file.read_text())):
                return True
        except (OSError, ValueError):
            continue
    return False


def reap_dead_kernels(base: Path) -> None:
    """Remove ``kernel-<pid>-…`` folders under ``base`` whose process is gone, and with it
    every agent that served a folder in it."""
    if not base.is_dir():
        return
    for entry in base.glob("kernel-*"):
        try:
            os.kill(int(entry.name.split("-")[1]), 0)
        except (ValueError, IndexError):
            continue
        except ProcessLookupError:
            if not agents_alive(entry):
                shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            continue
