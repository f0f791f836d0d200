"""Who owns a sandbox: the client id, the kernel id, and the tags every sandbox carries.

A `Client` gets a short random id that names its sandboxes, workspaces and folders, so two
clients (in one kernel or in two) never share one. The kernel id is the id in the
kernel's connection file, which stays the same when Jupyter restarts the kernel, so a
restarted kernel recognises what its predecessor left. Secrets needed to adopt a sandbox
later live only in a 0600 state file of this user (`SecretStore`), never in tags.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TAG_PREFIX = "sandbox_magics."
CLIENT, KERNEL, PROCESS, PROFILE, VERSION, HEARTBEAT, NAME = (
    f"{TAG_PREFIX}{name}" for name in ("client", "kernel", "process", "profile", "version",
                                       "heartbeat", "name"))


def kernel_id() -> str:
    """The running kernel's id: its connection file's name (``kernel-<id>.json`` under
    Jupyter), which a restart keeps; else one naming this process (a script has no kernel
    to be restarted)."""
    if "ipykernel" in sys.modules:
        try:
            from ipykernel.connect import get_connection_file
            name = Path(get_connection_file()).stem
        except (RuntimeError, AttributeError, ImportError, TypeError):
            name = ""
        if name:
            return name.removeprefix("kernel-")
    return f"process-{socket.gethostname()}-{os.getpid()}"


def version() -> str:
    """This package's version, as tagged on its sandboxes."""
    from . import __version__
    return __version__


def _process() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True)
class Identity:
    """One client's identity; ``tags(profile)`` labels the sandboxes it starts."""

    client_id: str = field(default_factory=lambda: secrets.token_hex(4))
    kernel_id: str = field(default_factory=kernel_id)
    process: str = field(default_factory=_process)

    def tags(self, profile: str, now: float | None = None) -> dict[str, str]:
        return {CLIENT: self.client_id, KERNEL: self.kernel_id, PROCESS: self.process,
                PROFILE: profile, VERSION: version(),
                HEARTBEAT: str(int(time.time() if now is None else now))}


def heartbeat_of(tags: Mapping[str, str]) -> float | None:
    """The heartbeat time in ``tags``, or None if it is missing or unreadable."""
    try:
        return float(tags[HEARTBEAT])
    except (KeyError, ValueError):
        return None


def state_dir(root: Path | None = None) -> Path:
    """This user's folder for state a later kernel reads: ``$XDG_STATE_HOME/sandbox_magics``
    (default ``~/.local/state/sandbox_magics``), or ``root/sandbox_magics``."""
    base = root or Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "sandbox_magics"


def kernel_file_stem(kernel: str) -> str:
    """The stem of a kernel's state files: ``kernel-<id>``, safe as a file name."""
    return f"kernel-{re.sub(r'[^A-Za-z0-9_.-]', '_', kernel)}"


@contextlib.contextmanager
def locked(path: Path, thread_lock: threading.Lock) -> Iterator[None]:
    """Hold ``thread_lock`` and an exclusive ``flock`` of ``path`` (made 0600, its folder
    0700): changes of a state file made under it lose none of another thread's or
    process's."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    with thread_lock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once (a reader sees the old or the new file),
    readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


class SecretStore:
    """Secrets to adopt this kernel's sandboxes after a restart, in one JSON file that only
    this user can read (mode 0600, folder 0700), keyed by sandbox id. Changes are made under
    a lock, so two clients of one kernel (two threads, or two processes) lose none."""

    _thread_lock = threading.Lock()

    def __init__(self, kernel: str, root: Path | None = None) -> None:
        self.path = state_dir(root) / f"{kernel_file_stem(kernel)}.json"

    def __repr__(self) -> str:
        return f"<SecretStore {self.path}>"

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    def _write(self, data: dict[str, str]) -> None:
        write_private(self.path, json.dumps(data))

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return locked(self.path.with_suffix(".lock"), self._thread_lock)

    def get(self, sandbox_id: str) -> str | None:
        return self._read().get(sandbox_id)

    def items(self) -> list[tuple[str, str]]:
        """Every (sandbox id, secret) kept."""
        return list(self._read().items())

    def put(self, sandbox_id: str, secret: str) -> None:
        with self._locked():
            self._write({**self._read(), sandbox_id: secret})

    def drop(self, sandbox_id: str) -> None:
        with self._locked():
            data = self._read()
            if data.pop(sandbox_id, None) is not None:
                self._write(data)
