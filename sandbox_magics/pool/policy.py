"""The pool's policy as plain functions: how many sandboxes, which to stop, whom to adopt.

`decide` is called by the pool on every tick and every event with a snapshot of plain
facts and returns the actions to take; it does no I/O and reads no clock, so it is tested
as a table of cases. `classify` says what to do with a sandbox found at pool start.
"""

from __future__ import annotations

import enum
import math
import numbers
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

from .. import identity
from ..identity import Identity
from ..profiles import Profile

MAX_BACKOFF = 60.0
AUTO = "auto"  # a scale target: autoscale between the profile's bounds (as None)
MAX_START_FAILURES = 3


@dataclass(frozen=True)
class SandboxFacts:
    """What the policy needs to know of one live sandbox (starting or ready); ``in_use``:
    a run uses one of its slots (an idle session's slot does not count)."""

    id: str
    starting: bool
    in_use: bool
    created: float
    idle_since: float | None
    slots: int
    draining: bool = False


@dataclass(frozen=True)
class Counts:
    """The pool at one moment: ``waiting`` runs wait for any slot; ``failed_starts`` counts
    start failures since the last success, the latest at ``last_failure``."""

    waiting: int
    sandboxes: tuple[SandboxFacts, ...]
    failed_starts: int = 0
    last_failure: float | None = None
    last_error: str | None = None
    last_scale_down: float = -math.inf


@dataclass(frozen=True)
class Start:
    count: int
    reason: str


@dataclass(frozen=True)
class Stop:
    sandbox: str
    reason: str


@dataclass(frozen=True)
class Drain:
    """Take no new run on a busy sandbox; it is stopped once its runs end."""

    sandbox: str
    reason: str


@dataclass(frozen=True)
class FailWaiting:
    """Tell every waiting run at once that no sandbox can serve it, and why."""

    reason: str


Action = Union[Start, Stop, Drain, FailWaiting]


def bounds(profile: Profile, target: int | None) -> tuple[int, int]:
    """(min, max) sandboxes: a `scale` target pins both; otherwise the profile's bounds."""
    if target is not None:
        return target, target
    return profile.min_sandboxes, profile.max_sandboxes


def check_target(profile: Profile, target: object) -> str | None:
    """Why ``target`` sandboxes cannot be asked of ``profile``, or None if they can: a
    whole number from 0 to its ``max_sandboxes``, or None or `AUTO` to autoscale."""
    if target is None or target == AUTO:
        return None
    if isinstance(target, bool) or not isinstance(target, numbers.Integral):
        return (f"Cannot scale profile {profile.name!r} to {reprlib.repr(target)}; give a "
                f"whole number of sandboxes, or {AUTO!r} to autoscale between its bounds.")
    if target < 0:
        return f"Cannot scale profile {profile.name!r} to {target}; give 0 or more."
    if target > profile.max_sandboxes:
        return (f"Cannot scale profile {profile.name!r} to {target} sandboxes: its "
                f"max_sandboxes is {profile.max_sandboxes}; raise max_sandboxes in the "
                "profiles file to go higher.")
    return None


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failed starts in a row: 1, 2, 4... up to 60."""
    return min(MAX_BACKOFF, 2.0 ** min(max(0, failures - 1), 6)) if failures else 0.0


def decide(profile: Profile, target: int | None, counts: Counts, now: float,
           cooldown: float = 10.0) -> list[Action]:
    """The actions that bring the pool of ``profile`` toward what it should be.

    - above the maximum: stop idle sandboxes (oldest first) down to it, and drain busy ones
      (no new run; stopped once their runs end) if that is not enough;
    - an idle sandbox older than ``lifetime`` is stopped (and replaced if below min);
    - one idle sandbox above the minimum, idle past ``idle_timeout``, is stopped per
      ``cooldown``;
    - start enough sandboxes for the minimum and for the waiting runs, up to the maximum,
      but not before the backoff after a failed start has passed;
    - waiting runs fail at once when no sandbox is live or starting and none may be
      started (scaled to 0, or a start failed).
    """
    low, high = bounds(profile, target)
    live = list(counts.sandboxes)
    actions: list[Action] = []
    stopping: set[str] = set()

    def stop(facts: SandboxFacts, reason: str) -> None:
        stopping.add(facts.id)
        actions.append(Stop(facts.id, reason))

    for facts in live:
        if facts.draining and not facts.in_use:
            stop(facts, "its runs ended after a scale-down")
    serving = [s for s in live if not s.draining]
    serving_ids = {s.id for s in serving}
    idle = sorted((s for s in serving if not s.starting and not s.in_use), key=lambda s: s.created)
    for facts in idle[: max(0, len(serving) - high)]:
        stop(facts, f"the pool is set to at most {high} sandbox(es)")
    busy = sorted((s for s in serving if not s.starting and s.in_use), key=lambda s: s.created)
    for facts in busy[: max(0, len(serving) - len(stopping & serving_ids) - high)]:
        stopping.add(facts.id)  # serves no more: counted as gone below
        actions.append(Drain(facts.id, f"the pool is set to at most {high} sandbox(es); it "
                                       "stops when its runs end"))
    for facts in idle:
        if facts.id not in stopping and now - facts.created > profile.lifetime:
            stop(facts, f"its lifetime of {profile.lifetime:g} s was reached")
    remaining = len(serving) - len(stopping & serving_ids)
    if now - counts.last_scale_down >= cooldown:
        for facts in idle:
            idle_for = now - facts.idle_since if facts.idle_since is not None else 0.0
            if facts.id not in stopping and remaining > low and idle_for > profile.idle_timeout:
                stop(facts, f"idle for {idle_for:.0f} s")
                remaining -= 1
                break

    kept = [s for s in serving if s.id not in stopping]
    coming = sum(s.slots for s in kept if s.starting)
    demand = math.ceil(max(0, counts.waiting - coming) / profile.slots_per_sandbox)
    want = min(high - len(kept), max(low - len(kept), demand))
    in_backoff = (counts.failed_starts > 0 and counts.last_failure is not None
                  and now < counts.last_failure + backoff(counts.failed_starts))
    if want > 0 and not in_backoff:
        why = (f"{counts.waiting} run(s) waiting" if demand >= low - len(kept)
               else f"the pool keeps at least {low}")
        actions.append(Start(want, why))
    elif counts.waiting and not kept:
        if high == 0:
            actions.append(FailWaiting(
                f"profile {profile.name!r} is scaled to 0 sandboxes; run "
                f"%sandbox scale {profile.name} auto (or N) to run again"))
        elif counts.failed_starts and counts.last_error:
            actions.append(FailWaiting(
                f"Could not start a sandbox for profile {profile.name!r}: {counts.last_error}"))
    return actions


def idle_stops(profile: Profile, target: int | None, counts: Counts, now: float) -> dict[str, float]:
    """Seconds left before `decide` stops each idle sandbox for being idle past
    ``idle_timeout`` (0 once due), longest idle first; those the minimum keeps are left out."""
    low, _ = bounds(profile, target)
    serving = [s for s in counts.sandboxes if not s.draining and not s.starting]
    idle = sorted((s for s in serving if not s.in_use and s.idle_since is not None),
                  key=lambda s: s.idle_since or 0.0)
    return {s.id: max(0.0, (s.idle_since or now) + profile.idle_timeout - now)
            for s in idle[:max(0, len(serving) - low)]}


class Found(enum.Enum):
    """What the pool does with a sandbox that ``discover`` found."""

    ADOPT = "adopt"
    REAP = "reap"
    LEAVE = "leave"


def classify(tags: Mapping[str, str], me: Identity, now: float, window: float) -> Found:
    """Adopt what a predecessor of this kernel left; reap what a silent owner left; leave
    the rest (other live kernels', or another client's of this same process)."""
    if tags.get(identity.KERNEL) == me.kernel_id:
        if tags.get(identity.PROCESS) == me.process:
            return Found.LEAVE
        if tags.get(identity.VERSION) != identity.version():
            return Found.REAP
        return Found.ADOPT
    beat = identity.heartbeat_of(tags)
    if beat is None or now - beat > window:
        return Found.REAP
    return Found.LEAVE
