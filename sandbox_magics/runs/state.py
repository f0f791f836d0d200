"""A run's life as one state machine: its `RunState`, the `Stage` an unfinished run is in,
and the transitions allowed between them, in two tables checked at every change.

::

    QUEUED ──> RUNNING ──> SUCCEEDED | FAILED | TIMED_OUT | LOST | ERROR
      │  ^        │
      │  └────────┘ re-queued: its sandbox was lost before its process started
      └──> CANCELLING <──┘ a cancel was asked; the run stops, or ends by itself first
      └──> CANCELLED | ERROR | LOST (never given a slot, or re-queued too often)
               RUNNING ──> DETACHING ──> DETACHED | any finished state

A cancel is a state, not a flag: a drive that meets CANCELLING at any await (one asyncio
may have dropped a cancel at) ends the run CANCELLED. A detached (``--bg``) run whose
kernel goes away is let go, not stopped: DETACHING, then DETACHED, for this kernel final;
it goes on in its sandbox for a later kernel to attach. Finished states are final.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from ..exceptions import SandboxError


class RunState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DETACHING = "detaching"
    DETACHED = "detached"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed-out"
    CANCELLED = "cancelled"
    LOST = "lost"
    ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in FINISHED


class Stage(enum.Enum):
    """Where an unfinished run is; a cancel says which stage it stopped the run in."""

    QUEUED = "queued"
    UPLOADING = "uploading"
    RUNNING = "running"
    COLLECTING = "collecting"


class TransitionError(SandboxError):
    """Raised when a run is asked to move to a state or stage its present one does not
    allow (a bug in the caller, never a user's doing)."""


ENDED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.TIMED_OUT,
                   RunState.CANCELLED, RunState.LOST, RunState.ERROR})
FINISHED = ENDED | {RunState.DETACHED}

TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLING, RunState.CANCELLED,
                                RunState.ERROR, RunState.LOST}),
    RunState.RUNNING: frozenset({RunState.QUEUED, RunState.CANCELLING, RunState.DETACHING}
                                | ENDED),
    RunState.CANCELLING: ENDED,
    RunState.DETACHING: frozenset({RunState.DETACHED} | ENDED),
    **{state: frozenset() for state in FINISHED},
}

STAGES: Mapping[Stage, frozenset[Stage]] = {
    Stage.QUEUED: frozenset({Stage.QUEUED, Stage.UPLOADING, Stage.RUNNING}),  # attached: RUNNING
    Stage.UPLOADING: frozenset({Stage.RUNNING, Stage.QUEUED}),
    Stage.RUNNING: frozenset({Stage.COLLECTING, Stage.QUEUED}),
    Stage.COLLECTING: frozenset(),
}


def check_transition(run_id: str, old: RunState, new: RunState) -> None:
    """Raise `TransitionError` unless the table allows ``old`` → ``new``."""
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"Run {run_id} cannot go from {old.value} to {new.value}.")


def check_stage(run_id: str, old: Stage, new: Stage) -> None:
    """Raise `TransitionError` unless the table allows stage ``old`` → ``new``."""
    if new not in STAGES[old]:
        raise TransitionError(f"Run {run_id} cannot go from stage {old.value} to {new.value}.")
