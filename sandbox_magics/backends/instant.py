"""The ``instant`` backend: sandboxes that start at once and run nothing.

For pool unit tests and scale benchmarks only (it is not selectable from a profile): it
lets the pool's own cost be measured with no process or network in the way. Its sandboxes
can be killed on purpose to test health checks, and sandboxes "left by an earlier kernel"
can be handed to it for ``discover`` to find.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import identity
from ..exceptions import SandboxLostError, SandboxStartError
from ..profiles import Profile
from .base import Backend, ExecRequest, FileInfo, Health, Process, Sandbox


class InstantSandbox(Sandbox):
    def __init__(self, sandbox_id: str, slots: int, tags: Mapping[str, str]) -> None:
        self.id = sandbox_id
        self.slots = slots
        self.tags = dict(tags)
        self.alive = True
        self.resets = 0
        self.heartbeats = 0

    def _check(self) -> None:
        if not self.alive:
            raise SandboxLostError(f"Instant sandbox {self.id} was killed.")

    async def exec(self, slot: int, request: ExecRequest) -> Process:
        self._check()
        raise NotImplementedError("The instant backend runs nothing; use the local backend.")

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

    async def health(self) -> Health:
        return Health(True) if self.alive else Health(False, "it was killed")

    async def heartbeat(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)
        self.heartbeats += 1

    async def terminate(self) -> None:
        self.alive = False


class InstantBackend(Backend):
    """Creates `InstantSandbox` objects; keeps them all in ``created``; ``discover`` finds
    the live ones of ``left_behind`` for the asked profile."""

    name = "instant"

    def __init__(self, fail_starts: bool = False,
                 left_behind: Sequence[InstantSandbox] = ()) -> None:
        self.created: list[InstantSandbox] = []
        self.fail_starts = fail_starts
        self.left_behind = list(left_behind)

    async def create(self, profile: Profile, tags: Mapping[str, str]) -> InstantSandbox:
        if self.fail_starts:
            raise SandboxStartError("the instant backend was told to fail")
        sandbox = InstantSandbox(tags[identity.NAME], profile.slots_per_sandbox, tags)
        self.created.append(sandbox)
        return sandbox

    async def discover(self, profile: Profile) -> list[Sandbox]:
        return [s for s in self.left_behind
                if s.alive and s.tags.get(identity.PROFILE) == profile.name]
