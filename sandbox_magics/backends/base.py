"""The backend protocol: the small surface every engine (local, Nomad, Modal) implements.

The unit is a *sandbox*: something that can run a command in one of its K slot workspaces,
stream the output as it is produced, stop it, and move files in and out. It does not
assume an agent or an HTTP address (Modal has neither). Backends do I/O; the pool decides
policy (how many, when, which slot). Sandboxes are safe to use from one event loop only.

``exec`` yields `Started` once the process runs, any number of `Output` chunks, then
exactly one `Exited`; if the sandbox dies mid-run, iteration raises `SandboxLostError`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, Union

from ..profiles import Profile


@dataclass(frozen=True)
class ExecRequest:
    """A command for one slot: ``argv`` run in the slot's workspace, ``stdin`` fed to it."""

    run_id: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    stdin: str | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Started:
    """The process is running; ``pgid`` is its process group."""

    pgid: int | None


@dataclass(frozen=True)
class Output:
    """A chunk of output, exactly as the process wrote it."""

    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class Exited:
    """How the process ended: ``reason`` is None, "timeout", "cancelled" or "not-found".

    ``workspace_empty`` is True if the slot's workspace held nothing when the run ended
    (then there are no artifacts to collect and nothing to reset), None if unknown.
    """

    exit_code: int | None
    signal: int | None = None
    reason: str | None = None
    error: str | None = None
    workspace_empty: bool | None = None


ExecEvent = Union[Started, Output, Exited]


def in_workspace(path: str) -> bool:
    """Whether ``path`` names a place inside a slot's workspace: relative, no ``..``."""
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    mtime: float


class Sandbox(abc.ABC):
    """One running sandbox with ``slots`` workspaces."""

    id: str
    slots: int

    @abc.abstractmethod
    def exec(self, slot: int, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        """Run ``request`` in ``slot``; yield Started, Output..., Exited."""

    @abc.abstractmethod
    async def cancel(self, slot: int, run_id: str, grace: float = 2.0) -> str:
        """Stop the run's process group (SIGINT, SIGTERM, SIGKILL); return the step that worked."""

    @abc.abstractmethod
    async def list_files(self, slot: int) -> list[FileInfo]:
        """Every file in the slot's workspace."""

    @abc.abstractmethod
    async def upload(self, slot: int, local: Path, remote: str) -> None:
        """Copy the local file ``local`` to ``remote`` (relative to the workspace)."""

    @abc.abstractmethod
    async def download(self, slot: int, remote: str, local: Path) -> None:
        """Copy ``remote`` (relative to the workspace) to the local file ``local``."""

    @abc.abstractmethod
    async def reset(self, slot: int) -> None:
        """Empty the slot's workspace."""

    @abc.abstractmethod
    async def is_alive(self) -> bool:
        """True if the sandbox answers; never raises, bounded in time."""

    @abc.abstractmethod
    async def terminate(self) -> None:
        """Stop the sandbox and everything running in it; safe to call twice."""

    def describe(self) -> dict[str, object]:
        """Non-secret facts for status views (address, pid, job id...)."""
        return {}


class Backend(abc.ABC):
    """Starts sandboxes on one engine."""

    name: str

    @abc.abstractmethod
    async def create(self, profile: Profile, sandbox_id: str) -> Sandbox:
        """Start a sandbox for ``profile``; raise SandboxStartError with a readable reason."""

    async def discover(self, profile: Profile) -> list[Sandbox]:
        """Sandboxes a previous kernel left for ``profile``, to reattach or reap."""
        return []

    def notices(self, profile: Profile) -> list[str]:
        """Sentences a user should see when this backend serves ``profile``."""
        return []

    async def aclose(self) -> None:
        """Release the backend's own resources (sessions, clients)."""
