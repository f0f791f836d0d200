"""`PoolStatus`: one pool at one moment as immutable, typed data, and the counts of it
that every view shows.

The dashboard, the JupyterLab sidebar and its status-bar item (``sandbox N/M``) all take
their numbers from `PoolStatus.counts`, so each number means one thing everywhere:

- ``busy``: slots a run uses now (a session's run included);
- ``session``: slots an idle session keeps for its next run;
- ``free``: slots any run may take;
- ``total``: the slots in service, ``free + busy + session`` (a sandbox that is starting,
  stopping or dead adds none);
- ``stopping``, ``dead``: slots of sandboxes being stopped, or lost and not yet retired;
- ``sandboxes``: ready sandboxes; ``starting``: sandboxes starting; ``queued``: runs waiting.

A status shares nothing with the pool, so it may be read on another thread;
`PoolStatus.as_dict` is its plain-data form (``Client.status()``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .state import UNREADY_SLOT, PoolEvent, SandboxRecord, SandboxState, SlotState


@dataclass(frozen=True)
class SandboxStatus:
    """One sandbox: each slot's state and the run using it; ``reason``: why it was stopped
    or lost; ``details``: what its backend tells of it (process id, address...);
    ``idle_for``: seconds it has run nothing (None: busy or not ready); ``stops_in``:
    seconds before the pool stops it for that (None: it is kept); ``stage``: what its start
    waits for now, for ``stage_for`` seconds."""

    id: str
    state: SandboxState
    slots: tuple[SlotState, ...]
    runs: tuple[str | None, ...]
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    idle_for: float | None = None
    stops_in: float | None = None
    stage: str | None = None
    stage_for: float | None = None

    @classmethod
    def of(cls, record: SandboxRecord, stops_in: float | None = None) -> SandboxStatus:
        """``record`` now; a sandbox whose slots do not exist yet shows ``size`` slots in
        its own state. ``stops_in``: seconds before the pool stops it for being idle."""
        if record.slots or record.state is SandboxState.READY:
            slots = tuple(s.state for s in record.slots)
            runs = tuple(s.run_id for s in record.slots)
        else:
            slots, runs = (UNREADY_SLOT[record.state],) * record.size, (None,) * record.size
        details = record.sandbox.describe() if record.sandbox is not None else {}
        idle_for = (time.monotonic() - record.idle_since
                    if record.idle_since is not None and record.state is SandboxState.READY
                    and not record.running else None)
        stage_for = None if record.stage_since is None else time.monotonic() - record.stage_since
        return cls(record.id, record.state, slots, runs, record.reason or "", details,
                   idle_for, stops_in, record.stage, stage_for)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state.value, "slots": [s.value for s in self.slots],
                "runs": list(self.runs), "stage": self.stage, **self.details}


@dataclass(frozen=True)
class PoolCounts:
    """The numbers the views show of one pool (the module docstring defines each)."""

    sandboxes: int
    starting: int
    queued: int
    busy: int
    session: int
    free: int
    total: int
    stopping: int
    dead: int


@dataclass(frozen=True)
class PoolStatus:
    """One pool: its limits, sandboxes, recently retired sandboxes and latest events, what
    one sandbox costs an hour and what its sandboxes cost so far (None: unknown)."""

    profile: str
    backend: str
    slots_per_sandbox: int
    max_sandboxes: int
    target: int | None
    queued: int
    sandboxes: tuple[SandboxStatus, ...]
    retired: tuple[SandboxStatus, ...] = ()
    events: tuple[PoolEvent, ...] = ()
    price_per_hour: float | None = None
    cost: float | None = None

    def counts(self) -> PoolCounts:
        """Busy, total and the rest, as every view shows them."""
        slots = collections.Counter(s for box in self.sandboxes for s in box.slots)
        boxes = collections.Counter(box.state for box in self.sandboxes)
        in_service = slots[SlotState.FREE] + slots[SlotState.BUSY] + slots[SlotState.SESSION]
        return PoolCounts(
            sandboxes=boxes[SandboxState.READY], starting=boxes[SandboxState.STARTING],
            queued=self.queued, busy=slots[SlotState.BUSY], session=slots[SlotState.SESSION],
            free=slots[SlotState.FREE], total=in_service, stopping=slots[SlotState.STOPPING],
            dead=slots[SlotState.DEAD])

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "backend": self.backend,
            "slots_per_sandbox": self.slots_per_sandbox, "max_sandboxes": self.max_sandboxes,
            "target": self.target, "queued": self.queued, "starting": self.counts().starting,
            "sandboxes": [box.as_dict() for box in self.sandboxes],
            "retired": [{"id": r.id, "state": r.state.value, "reason": r.reason}
                        for r in self.retired],
            "events": [e.as_dict() for e in self.events],
            "price_per_hour": self.price_per_hour, "cost": self.cost,
        }
