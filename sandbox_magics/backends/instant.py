"""The ``instant`` backend: sandboxes that start at once and run nothing.

For pool unit tests and scale benchmarks only (it is not selectable from a profile): it
lets the pool's own cost be measured with no process or network in the way. Its sandboxes
can be killed on purpose to test health checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from ..exceptions import SandboxLostError, SandboxStartError
from ..profiles import Profile
from .base import Backend, ExecEvent, ExecRequest, FileInfo, Sandbox


class InstantSandbox(Sandbox):
    def __init__(self, sandbox_id: str, slots: int) -> None:
        self.id = sandbox_id
        self.slots = slots
        self.alive = True
        self.resets = 0

    def _check(self) -> None:
        if not self.alive:
            raise SandboxLostError(f"Instant sandbox {self.id} was killed.")

    async def exec(self, slot: int, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        self._check()
        raise NotImplementedError("The instant backend runs nothing; use the local backend.")
        yield  # pragma: no cover - makes this an async generator

    async def cancel(self, slot: int, run_id: str, grace: float = 2.0) -> str:
        return "not-running"

    async def list_files(self, slot: int) -> list[FileInfo]:
        self._check()
        return []

    async def upload(self, slot: int, local: Path, remote: str) -> None:
        self._check()

    async def download(self, slot: int, remote: str, local: Path) -> None:
        self._check()

    async def reset(self, slot: int) -> None:
        self._check()
        self.resets += 1

    async def is_alive(self) -> bool:
        return self.alive

    async def terminate(self) -> None:
        self.alive = False


class InstantBackend(Backend):
    """Creates `InstantSandbox` objects; keeps them all in ``created``."""

    name = "instant"

    def __init__(self, fail_starts: bool = False) -> None:
        self.created: list[InstantSandbox] = []
        self.fail_starts = fail_starts

    async def create(self, profile: Profile, sandbox_id: str) -> InstantSandbox:
        if self.fail_starts:
            raise SandboxStartError("the instant backend was told to fail")
        sandbox = InstantSandbox(sandbox_id, profile.slots_per_sandbox)
        self.created.append(sandbox)
        return sandbox
