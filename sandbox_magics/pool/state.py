"""The pool's state machines and records: sandboxes, their slots, leases and events."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..backends.base import Sandbox


class SandboxState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # above a scale-down: takes no new run, stops when its runs end
    STOPPING = "stopping"
    DEAD = "dead"

    @property
    def serving(self) -> bool:
        """Whether its runs go on (health checks, resets and lost runs apply)."""
        return self in (SandboxState.READY, SandboxState.DRAINING)


class SlotState(enum.Enum):
    """What a slot is doing, as every view shows it: a run uses it (``BUSY``, also a
    session's run), an idle session holds it (``SESSION``), or it is ``FREE``; a slot of a
    sandbox that is not ready has its sandbox's state."""

    FREE = "free"
    BUSY = "busy"
    SESSION = "session"
    STARTING = "starting"
    DRAINING = "draining"
    STOPPING = "stopping"
    DEAD = "dead"


UNREADY_SLOT = {SandboxState.STARTING: SlotState.STARTING, SandboxState.DRAINING: SlotState.DRAINING,
                SandboxState.STOPPING: SlotState.STOPPING, SandboxState.DEAD: SlotState.DEAD}


class EventKind(enum.Enum):
    """Every kind of `PoolEvent` the pool emits."""

    SCALE = "scale"                            # a scale target was set, or autoscaling again
    SCALE_UP = "scale-up"                      # sandboxes are starting, and why
    READY = "ready"                            # a started sandbox serves its slots
    START_FAILED = "start-failed"              # a sandbox did not start (retried after a backoff)
    STAGE = "stage"                            # a start now waits for something (capacity, image)
    SCALE_DOWN = "scale-down"                  # the policy stops a sandbox, and why
    DRAINING = "draining"                      # a busy sandbox above a scale-down takes no new run
    LOST = "lost"                              # a sandbox died and is retired
    CONNECTION_LOST = "connection-lost"        # a run's connection broke; its sandbox answers
    ADOPTED = "adopted"                        # serves again, left by this kernel before a restart
    REAPED = "reaped"                          # stopped: left by a silent owner, or unhealthy
    DISCOVER_FAILED = "discover-failed"        # earlier sandboxes could not be listed at start
    MAINTENANCE_FAILED = "maintenance-failed"  # one round of health checks or scaling failed


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
    def state(self) -> SlotState:
        if self.busy and self.sandbox.state.serving:
            return SlotState.BUSY
        if self.sandbox.state is not SandboxState.READY:
            return UNREADY_SLOT[self.sandbox.state]
        return SlotState.SESSION if self.session else SlotState.FREE


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
    stage: str | None = None
    stage_since: float | None = None

    @property
    def running(self) -> bool:
        """Whether a run uses one of its slots now (a session's idle slot does not count:
        an idle session does not keep a sandbox past its idle timeout, lifetime or scale)."""
        return any(s.busy for s in self.slots)


class LeaseOwner(Protocol):
    """What a lease asks of the pool that granted it (`Pool`)."""

    price_per_hour: float | None

    async def release(self, lease: Lease, reset: bool = True) -> None: ...

    async def suspect(self, record: SandboxRecord, reason: str) -> bool: ...

    def mark_lost(self, record: SandboxRecord, reason: str) -> None: ...


@dataclass(eq=False)
class Lease:
    """A slot held by one run until it is released; all a run learns of its sandbox and
    tells the pool goes through here (the run never sees the pool's records)."""

    slot: SlotRecord
    owner: LeaseOwner
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
    def rate(self) -> float | None:
        """Dollars an hour of this slot: its sandbox's price over its slots (None: unknown)."""
        price = self.owner.price_per_hour
        return None if price is None else price / max(len(self.slot.sandbox.slots), 1)

    @property
    def lost(self) -> asyncio.Event:
        """Set when the pool retires the sandbox (`lost_reason` says why)."""
        return self.slot.lost

    @property
    def lost_reason(self) -> str | None:
        return self.slot.lost_reason

    async def release(self, reset: bool = True) -> None:
        """Give the slot back, emptying its workspace if ``reset`` (see `Pool.release`)."""
        await self.owner.release(self, reset)

    async def report_broken(self, reason: str) -> bool:
        """A connection to the sandbox broke: the pool retires it if it fails a health
        check now; return whether it did."""
        return await self.owner.suspect(self.slot.sandbox, reason)

    def retire(self, reason: str) -> None:
        """The sandbox cannot be trusted any more (it did not stop a run): retire it."""
        self.owner.mark_lost(self.slot.sandbox, reason)


@dataclass(frozen=True)
class PoolEvent:
    """Something the pool did; `EventKind` lists every kind."""

    profile: str
    kind: EventKind
    sandbox: str | None = None
    detail: str = ""
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time, "profile": self.profile, "kind": self.kind.value,
                "sandbox": self.sandbox, "detail": self.detail}
