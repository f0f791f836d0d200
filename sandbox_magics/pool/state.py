"""The pool's state machines and records: sandboxes, their slots, leases and events."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Sandbox


class SandboxState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    DEAD = "dead"


@dataclass(eq=False)
class SlotRecord:
    """One workspace of a sandbox; ``session`` reserves it for one ``--session`` name."""

    sandbox: SandboxRecord
    index: int
    busy: bool = False
    run_id: str | None = None
    session: str | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str | None = None

    @property
    def state(self) -> str:
        if self.sandbox.state is not SandboxState.READY:
            return self.sandbox.state.value
        return "busy" if self.busy else ("session" if self.session else "free")


@dataclass(eq=False)
class SandboxRecord:
    id: str
    state: SandboxState
    size: int
    sandbox: Sandbox | None = None
    slots: list[SlotRecord] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    reason: str | None = None
    idle_since: float | None = field(default_factory=time.monotonic)
    health_failures: int = 0

    @property
    def running(self) -> bool:
        """Whether a run uses one of its slots now (a session's idle slot does not count:
        an idle session does not keep a sandbox past its idle timeout, lifetime or scale)."""
        return any(s.busy for s in self.slots)


@dataclass(eq=False)
class Lease:
    """A slot held by one run until `Pool.release`; ``lost`` is set if its sandbox dies."""

    slot: SlotRecord
    released: bool = False

    @property
    def sandbox(self) -> Sandbox:
        assert self.slot.sandbox.sandbox is not None
        return self.slot.sandbox.sandbox

    @property
    def sandbox_id(self) -> str:
        return self.slot.sandbox.id

    @property
    def index(self) -> int:
        return self.slot.index

    @property
    def lost(self) -> asyncio.Event:
        return self.slot.lost


@dataclass(frozen=True)
class PoolEvent:
    """Something the pool did: scale-up, ready, start-failed, lost, scale-down, session-lost."""

    profile: str
    kind: str
    sandbox: str | None = None
    detail: str = ""
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time, "profile": self.profile, "kind": self.kind,
                "sandbox": self.sandbox, "detail": self.detail}
