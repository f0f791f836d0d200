"""`Pool`: the sandboxes × slots of one profile, shared fairly among runs.

Acquire is first-in first-out with a timeout (a run re-queued after its sandbox was lost
before it started goes to the head). How many sandboxes run is decided by
`policy.decide`, called on every tick and every event; the pool only carries its actions
out, with the backend doing the I/O. At start, sandboxes that ``discover`` finds are
adopted, reaped or left by `policy.classify`. A maintenance task checks health (two
failed checks in a row retire a sandbox) and sends heartbeats. A sandbox that dies is
retired and the runs on it see their lease's ``lost`` event. An adopted sandbox's slots
that keep a detached run stay busy until a run of the manager `claim` s them; closing
the pool can leave such sandboxes running for a later kernel. Loop-bound: every method runs
on the manager's loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .. import identity
from ..backends.base import STAGE, Backend, Health, KeptRun, Sandbox
from ..exceptions import (AcquireTimeoutError, BudgetError, ClosedError, ProfileError, SandboxError,
                          SandboxStartError, SlotBusyError, UnknownRunError,
                          UnknownSandboxError)
from ..identity import Identity
from ..profiles import Profile
from . import cost as pricing
from . import policy
from .state import EventKind, Lease, PoolEvent, SandboxRecord, SandboxState, SlotRecord, SlotState
from .status import PoolStatus, SandboxStatus

HEALTH_TIMEOUT = 3.0
HEALTH_FAILURES = 2
RESET_TIMEOUT = 30.0
BUSY_RETRY = 0.1
STOP_TIMEOUT = 15.0
DISCOVER_TIMEOUT = 30.0
HEARTBEAT_INTERVAL = 60.0
EVENT_HISTORY = 200
EVENTS_SHOWN = 20
RETIRED_HISTORY = 20
logger = logging.getLogger(__name__)
# (backend, sandbox id) adopted by a pool of this process: two clients of one restarted
# kernel both see their predecessor's sandboxes as theirs, and only one may take each.
_adopted: set[tuple[str, str]] = set()


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[Lease]
    session: str | None
    holder: str | None = None
    granted: bool = False


class Pool:
    """Sandboxes of one profile. Start with `start`, stop with `aclose`."""

    def __init__(self, profile: Profile, backend: Backend, me: Identity | None = None,
                 on_event: Callable[[PoolEvent], None] | None = None,
                 tick: float = 1.0, cooldown: float = 10.0,
                 budget: Callable[[], str | None] | None = None) -> None:
        self.profile = profile
        self.backend = backend
        self.identity = me or Identity()
        self.target: int | None = None
        self.sandboxes: list[SandboxRecord] = []
        self.events: collections.deque[PoolEvent] = collections.deque(maxlen=EVENT_HISTORY)
        self.retired: collections.deque[SandboxRecord] = collections.deque(maxlen=RETIRED_HISTORY)
        self._on_event = on_event
        self._tick = tick
        self._cooldown = cooldown
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._session_waiters: dict[SlotRecord, collections.deque[_Waiter]] = {}
        self._sessions: dict[str, SlotRecord] = {}
        self._free_slots: collections.OrderedDict[SlotRecord, None] = collections.OrderedDict()
        self._lost_sessions: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._counter = 0
        self._last_scale_down = -float("inf")
        self._failed_starts = 0
        self._last_failure: float | None = None
        self._last_error: str | None = None
        self._last_heartbeat = time.monotonic()
        self._discovered = False
        self._settled = asyncio.Event()
        self._kept: dict[str, SlotRecord] = {}
        self.price_per_hour: float | None = None
        self._spent_seconds = 0.0
        self._budget = budget
        self._closed = False
        self._maintenance: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (f"<Pool {self.profile.name} sandboxes={len(self._live())} "
                f"busy={self.busy_slots} queued={self.queued}>")

    @property
    def queued(self) -> int:
        return sum(len(queue) for queue in self._queues())

    @property
    def busy_slots(self) -> int:
        """Slots a run uses now, as every view counts them (`SlotState.BUSY`)."""
        return sum(s.state is SlotState.BUSY for r in self.sandboxes for s in r.slots)

    def start(self) -> None:
        """Adopt or reap what ``discover`` finds, then keep the pool as the policy says."""
        if self._maintenance is None:
            self._maintenance = asyncio.ensure_future(self._maintain())

    def _emit(self, kind: EventKind, sandbox: str | None = None, detail: str = "") -> None:
        event = PoolEvent(self.profile.name, kind, sandbox, detail)
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _live(self) -> list[SandboxRecord]:
        return [r for r in self.sandboxes if r.state is SandboxState.STARTING or r.state.serving]

    async def acquire(self, session: str | None = None, timeout: float | None = None,
                      first: bool = False, holder: str | None = None) -> Lease:
        """Wait for a free slot (the session's own slot if it has one) and lease it;
        ``first`` puts the request at the head of the queue (a run being re-queued);
        ``holder`` names the run for status views.

        Raises:
            AcquireTimeoutError: no slot came free within ``timeout`` seconds.
            SandboxStartError: the pool has no sandbox and could not start one.
            ClosedError: the pool was shut down.
        """
        if self._closed:
            raise ClosedError(f"The pool of profile {self.profile.name!r} has been shut down.")
        slot = self._sessions.get(session) if session else None
        waiter = _Waiter(asyncio.get_running_loop().create_future(), session, holder)
        queue = (self._session_waiters.setdefault(slot, collections.deque())
                 if slot is not None else self._waiters)
        if first:
            queue.appendleft(waiter)
        else:
            queue.append(waiter)
        self._dispatch()
        if not waiter.future.done():
            self.reconcile()
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        except asyncio.TimeoutError:
            self._give_back(waiter)
            raise AcquireTimeoutError(
                f"No slot of profile {self.profile.name!r} came free within {timeout:g} s "
                f"({self.busy_slots} of {self.profile.max_slots} busy, {self.queued} queued); "
                f"wait for runs to end, cancel some, or raise max_sandboxes."
            ) from None
        except asyncio.CancelledError:
            self._give_back(waiter)
            raise
        finally:
            if not waiter.granted:
                self._forget(waiter)

    def _queues(self) -> list[collections.deque[_Waiter]]:
        """The general queue and every session's own queue."""
        return [self._waiters, *self._session_waiters.values()]

    def _give_back(self, waiter: _Waiter) -> None:
        """Free the slot of a waiter that was granted one but gave up before taking it."""
        if waiter.granted:
            self._free(waiter.future.result().slot)

    def _forget(self, waiter: _Waiter) -> None:
        """Drop a waiter that timed out or was cancelled from whichever queue holds it."""
        for queue in self._queues():
            with contextlib.suppress(ValueError):
                queue.remove(waiter)

    async def end_session(self, session: str) -> bool:
        """Give ``session``'s slot back to everyone, emptying its workspace; False if unknown.

        A run of the session still going keeps the slot until it ends.
        """
        slot = self._sessions.pop(session, None)
        if slot is None:
            return False
        slot.session = None
        if not slot.busy:
            slot.busy = True
            await self.release(Lease(slot, self), reset=True)
        return True

    def session_notice(self, session: str) -> str | None:
        """If ``session``'s sandbox was lost, say so once."""
        what = self._lost_sessions.pop(session, None)
        if what is None:
            return None
        return (f"Session {session!r} started afresh in a new workspace: its sandbox {what}, "
                "and the files in it with it.")

    async def release(self, lease: Lease, reset: bool = True) -> None:
        """Give the slot back, emptying its workspace (if ``reset``) unless a session
        holds it; a slot whose session ended meanwhile is emptied."""
        if lease.released:
            return
        lease.released = True
        slot = lease.slot
        record = slot.sandbox
        try:
            if reset and slot.session is None and record.state.serving and record.sandbox:
                try:
                    await asyncio.wait_for(self._reset(record.sandbox, slot.index), RESET_TIMEOUT)
                except (SandboxError, asyncio.TimeoutError) as exc:
                    self.mark_lost(record, f"could not reset slot {slot.index}: {exc}")
        finally:
            self._free(slot)

    @staticmethod
    async def _reset(sandbox: Sandbox, slot: int) -> None:
        """Empty a slot, waiting while it still runs the command of a run whose connection
        broke (its sandbox stops it when it notices; the caller bounds the wait)."""
        while True:
            try:
                return await sandbox.reset(slot)
            except SlotBusyError:
                await asyncio.sleep(BUSY_RETRY)

    async def suspect(self, record: SandboxRecord, reason: str) -> bool:
        """A run lost its connection to ``record`` (``reason``): retire the sandbox if it
        fails a health check now; return whether it was retired. One broken connection
        must not take the other runs of a healthy sandbox with it."""
        reason = reason.rstrip(".")
        if record.state.serving and record.sandbox is not None:
            health = await self._health(record.sandbox)
            if health.ok and record.state.serving:
                self._emit(EventKind.CONNECTION_LOST, record.id, f"{reason}; the sandbox still answers")
                return False
            if health.reason and health.reason not in reason:
                reason = f"{reason}; {health.reason}"
        self.mark_lost(record, reason)
        return True

    def _free(self, slot: SlotRecord) -> None:
        slot.busy, slot.run_id = False, None
        if slot.session is None and slot.sandbox.state is SandboxState.READY:
            self._free_slots[slot] = None
        if not slot.sandbox.running:
            slot.sandbox.idle_since = time.monotonic()
        self._dispatch()

    def _withdraw(self, record: SandboxRecord, state: SandboxState) -> None:
        """Take a sandbox out of service: none of its slots is handed out any more."""
        record.state = state
        for slot in record.slots:
            self._free_slots.pop(slot, None)

    def _dispatch(self) -> None:
        """Hand free slots to waiters in arrival order (a session's waiters get its slot)."""
        for slot, queue in list(self._session_waiters.items()):
            while queue and queue[0].future.done():
                queue.popleft()
            if not queue:
                del self._session_waiters[slot]
            elif not slot.busy and slot.sandbox.state is SandboxState.READY:
                self._grant(queue.popleft(), slot)
        while self._waiters:
            waiter = self._waiters[0]
            if waiter.future.done():
                self._waiters.popleft()
                continue
            if waiter.session in self._sessions:
                own = self._sessions[waiter.session]
                self._session_waiters.setdefault(own, collections.deque()).append(self._waiters.popleft())
                if not own.busy and own.sandbox.state is SandboxState.READY:
                    self._grant(self._session_waiters[own].popleft(), own)
                continue
            free = self._free_slot()
            if free is None:
                return
            self._grant(self._waiters.popleft(), free)

    def _grant(self, waiter: _Waiter, slot: SlotRecord) -> None:
        slot.busy, slot.run_id = True, waiter.holder
        self._free_slots.pop(slot, None)
        slot.lost = asyncio.Event()
        slot.lost_reason = None
        slot.sandbox.idle_since = None
        if waiter.session and slot.session is None:
            slot.session = waiter.session
            self._sessions[waiter.session] = slot
        waiter.granted = True
        waiter.future.set_result(Lease(slot, self))

    def _free_slot(self) -> SlotRecord | None:
        """A free slot of a ready sandbox, reserved for no session (O(1))."""
        return next(iter(self._free_slots), None)

    def _facts(self) -> policy.Counts:
        live = self._live()
        return policy.Counts(
            waiting=sum(not w.future.done() for w in self._waiters),
            sandboxes=tuple(policy.SandboxFacts(
                r.id, r.state is SandboxState.STARTING, r.running,
                r.created, r.idle_since, r.size, r.state is SandboxState.DRAINING) for r in live),
            failed_starts=self._failed_starts, last_failure=self._last_failure,
            last_error=self._last_error, last_scale_down=self._last_scale_down)

    def reconcile(self) -> None:
        """Ask the policy what to do now, and do it (once what ``discover`` found is settled,
        so a restarted kernel adopts its sandboxes instead of starting new ones)."""
        if self._closed or not self._discovered:
            return
        if self._budget is not None and any(not w.future.done() for w in self._waiters) \
                and (spent := self._budget()):
            self._fail_waiters(BudgetError(spent))  # no money left to wait for a slot with
        now = time.monotonic()
        for action in policy.decide(self.profile, self.target, self._facts(), now, self._cooldown):
            if isinstance(action, policy.Start):
                if self._budget is not None and self._budget():
                    continue
                self._emit(EventKind.SCALE_UP, detail=f"{action.reason}: starting {action.count} sandbox(es)")
                for _ in range(action.count):
                    self._start_sandbox()
            elif isinstance(action, policy.Stop):
                record = self._scale_down(action, SandboxState.STOPPING, "was stopped")
                self._emit(EventKind.SCALE_DOWN, record.id, action.reason)
                self._spawn(self._retire(record))
                self._last_scale_down = now
            elif isinstance(action, policy.Drain):
                record = self._scale_down(action, SandboxState.DRAINING, "is draining")
                self._emit(EventKind.DRAINING, record.id, action.reason)
            else:
                self._fail_waiters(SandboxStartError(action.reason))

    def _scale_down(self, action: policy.Stop | policy.Drain, state: SandboxState,
                    what: str) -> SandboxRecord:
        """Take the action's sandbox out of service (``state``); its sessions end."""
        record = next(r for r in self.sandboxes if r.id == action.sandbox)
        record.reason = action.reason
        self._withdraw(record, state)
        self._end_sessions(record, f"{what} ({action.reason})")
        return record

    def _fail_waiters(self, error: Exception) -> None:
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _name(self) -> str:
        taken = {r.id for r in self.sandboxes}
        while True:
            self._counter += 1
            name = f"{self.profile.name}-{self._counter}"
            if name not in taken:
                return name

    def _start_sandbox(self) -> None:
        record = SandboxRecord(self._name(), SandboxState.STARTING, self.profile.slots_per_sandbox)
        self.sandboxes.append(record)
        self._spawn(self._boot(record))

    async def _boot(self, record: SandboxRecord) -> None:
        tags = {**self.identity.tags(self.profile.name), identity.NAME: record.id}
        STAGE.set(lambda stage: self._staged(record, stage))  # this task's own context
        try:
            sandbox = await asyncio.wait_for(
                self.backend.create(self.profile, tags), self.profile.start_timeout + 5
                + self.backend.preparation_timeout(self.profile))
        except Exception as exc:
            reason = str(exc) if isinstance(exc, SandboxError) else (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, asyncio.TimeoutError)
                else f"it did not start within {self.profile.start_timeout:g} s")
            self.sandboxes.remove(record)
            self._spent_seconds += time.monotonic() - record.created
            self._failed_starts += 1
            self._last_failure, self._last_error = time.monotonic(), reason
            self._emit(EventKind.START_FAILED, record.id,
                       f"{reason} (retrying in {policy.backoff(self._failed_starts):g} s)")
            self.reconcile()
            return
        if self._closed:
            await sandbox.terminate()
            return
        self._failed_starts, self._last_error = 0, None
        self._serve(record, sandbox)
        self._emit(EventKind.READY, record.id)

    def _staged(self, record: SandboxRecord, stage: str) -> None:
        """The start of ``record`` now waits for ``stage`` (the views show it, and since when)."""
        record.stage, record.stage_since = stage, time.monotonic()
        self._emit(EventKind.STAGE, record.id, stage)

    def _serve(self, record: SandboxRecord, sandbox: Sandbox, kept: Sequence[KeptRun] = ()) -> None:
        """Put a started (or adopted) sandbox's slots in service; those that keep a
        detached run (``kept``) stay busy with it until its run is claimed (`claim`)."""
        record.sandbox = sandbox
        record.stage = record.stage_since = None
        record.slots = [SlotRecord(record, i) for i in range(sandbox.slots)]
        record.size = sandbox.slots
        record.state = SandboxState.READY
        record.idle_since = time.monotonic()
        for run in kept:
            if 0 <= run.slot < len(record.slots):
                slot = record.slots[run.slot]
                slot.busy, slot.run_id = True, run.run_id
                self._kept[run.run_id] = slot
        if kept:
            record.idle_since = None
        self._free_slots.update(dict.fromkeys(s for s in record.slots if not s.busy))
        self._dispatch()
        self.reconcile()

    def kept(self) -> list[str]:
        """Ids of the detached runs that adopted sandboxes keep and no run has claimed."""
        return list(self._kept)

    def claim(self, run_id: str) -> Lease:
        """The lease of the slot that keeps detached run ``run_id`` (see `kept`).

        Raises:
            UnknownRunError: no sandbox of this pool keeps that run (now).
        """
        slot = self._kept.pop(run_id, None)
        if slot is None or not slot.sandbox.state.serving:
            raise UnknownRunError(
                f"No sandbox of profile {self.profile.name!r} keeps run {run_id} now; it ended "
                "and its sandbox stopped, or another kernel follows it.")
        slot.lost = asyncio.Event()
        slot.lost_reason = None
        return Lease(slot, self)

    async def settled(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until what ``discover`` found is adopted or
        reaped, so `kept` lists what the sandboxes of an earlier kernel keep."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)

    async def _adopt_or_reap(self) -> None:
        """Adopt what this kernel's predecessor left if it is healthy, reap what owners
        that stopped sending heartbeats left, and leave the rest alone."""
        try:
            found = await asyncio.wait_for(self.backend.discover(self.profile), DISCOVER_TIMEOUT)
        except Exception as exc:
            self._emit(EventKind.DISCOVER_FAILED, detail=f"could not list earlier sandboxes: {exc}")
            return
        now = time.time()
        for sandbox in found:
            verdict = policy.classify(sandbox.tags, self.identity, now, self.profile.heartbeat_window)
            if verdict is policy.Found.ADOPT and (self.backend.name, sandbox.id) not in _adopted:
                await self._adopt(sandbox, "left by this kernel before its restart")
            elif verdict is policy.Found.REAP:
                self._emit(EventKind.REAPED, detail=f"{sandbox.id}: its owner sent no heartbeat for "
                                            f"{self.profile.heartbeat_window:g} s")
                self._spawn(self._stop(sandbox))

    async def _adopt(self, sandbox: Sandbox, why: str) -> None:
        """Serve ``sandbox`` in this pool, the runs it keeps held for their claims, if it is
        healthy; else stop it."""
        _adopted.add((self.backend.name, sandbox.id))
        health = await self._health(sandbox)
        if health.ok and not self._closed:
            try:
                kept = await asyncio.wait_for(sandbox.kept_runs(), HEALTH_TIMEOUT)
            except (SandboxError, asyncio.TimeoutError):
                kept = []
            record = SandboxRecord(self._adopted_name(sandbox), SandboxState.STARTING, sandbox.slots)
            self.sandboxes.append(record)
            self._serve(record, sandbox, kept)
            self._spawn(sandbox.heartbeat(self.identity.tags(self.profile.name)))
            held = f"; it keeps run(s) {', '.join(k.run_id for k in kept)}" if kept else ""
            self._emit(EventKind.ADOPTED, record.id, f"{why} ({sandbox.id}){held}")
            return
        self._emit(EventKind.REAPED, detail=f"{sandbox.id}: {why}, and unhealthy ({health.reason})")
        self._spawn(self._stop(sandbox))

    def _adopted_name(self, sandbox: Sandbox) -> str:
        name = sandbox.tags.get(identity.NAME, "")
        return name if name and name not in {r.id for r in self.sandboxes} else self._name()

    def mark_lost(self, record: SandboxRecord, reason: str) -> None:
        """Retire a dead sandbox: fail its runs' leases, drop its sessions, clean it up."""
        if record.state in (SandboxState.DEAD, SandboxState.STOPPING):
            return
        record.reason = reason
        self._withdraw(record, SandboxState.DEAD)
        for slot in record.slots:
            if slot.busy:
                slot.lost_reason = reason
                slot.lost.set()
            if slot.run_id is not None and self._kept.get(slot.run_id) is slot:
                del self._kept[slot.run_id]
        self._end_sessions(record, f"was lost ({reason})")
        self._emit(EventKind.LOST, record.id, reason)
        self._spawn(self._retire(record))
        self._dispatch()
        self.reconcile()

    def _end_sessions(self, record: SandboxRecord, what: str) -> None:
        """The sessions held in ``record`` end: their next run starts afresh elsewhere and
        is told that its sandbox ``what``."""
        for slot in record.slots:
            if slot.session is not None:
                self._sessions.pop(slot.session, None)
                self._lost_sessions[slot.session] = what
                slot.session = None
            self._waiters.extendleft(reversed(self._session_waiters.pop(slot, ())))

    async def _retire(self, record: SandboxRecord) -> None:
        if record.sandbox is not None:
            await self._stop(record.sandbox)
        with contextlib.suppress(ValueError):
            self.sandboxes.remove(record)
            self.retired.append(record)
            self._spent_seconds += time.monotonic() - record.created
        self.reconcile()

    def cost(self) -> float | None:
        """What this pool's sandboxes cost so far, live and retired, idle or not (None:
        their price is unknown)."""
        now = time.monotonic()
        return pricing.cost(self.price_per_hour, self._spent_seconds + sum(
            now - r.created for r in self.sandboxes))

    async def sandbox_log(self, name: str) -> str:
        """The engine's log of sandbox ``name``, live or among the recently retired.

        Raises:
            UnknownSandboxError: no such sandbox in this pool (the sentence lists those it has).
            SandboxError: the engine could not be asked.
        """
        for record in [*self.sandboxes, *self.retired]:
            if record.id == name and record.sandbox is not None:
                return await asyncio.wait_for(record.sandbox.log(), HEALTH_TIMEOUT * 5)
        known = ", ".join(r.id for r in [*self.sandboxes, *self.retired]) or "none"
        raise UnknownSandboxError(
            f"Profile {self.profile.name!r} has no sandbox {name!r}; it has: {known}.")

    @staticmethod
    async def _stop(sandbox: Sandbox) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sandbox.terminate(), STOP_TIMEOUT)

    async def _maintain(self) -> None:
        try:
            self.price_per_hour = await asyncio.wait_for(
                self.backend.price_per_hour(self.profile), DISCOVER_TIMEOUT)
        except Exception as exc:
            self._emit(EventKind.MAINTENANCE_FAILED, detail=f"no price for its sandboxes ({exc}); "
                                                        "their cost is unknown")
        try:
            await self._adopt_or_reap()
        finally:
            self._discovered = True
            self._settled.set()
        while not self._closed:
            try:
                self.reconcile()
                await asyncio.sleep(self._tick)
                await self._check_health()
            except Exception as exc:
                logger.exception("pool maintenance of profile %r failed once", self.profile.name)
                self._emit(EventKind.MAINTENANCE_FAILED, detail=f"{type(exc).__name__}: {exc}")

    async def _check_health(self) -> None:
        """Retire sandboxes that failed two health checks in a row; send heartbeats."""
        ready = [r for r in self.sandboxes if r.state.serving and r.sandbox]
        results = await asyncio.gather(*(self._health(r.sandbox) for r in ready if r.sandbox))
        for record, health in zip(ready, results):
            record.health_failures = 0 if health.ok else record.health_failures + 1
            if record.health_failures >= HEALTH_FAILURES:
                self.mark_lost(record, health.reason or "it stopped answering health checks")
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_INTERVAL:
            self._last_heartbeat = time.monotonic()
            tags = self.identity.tags(self.profile.name)
            await asyncio.wait_for(asyncio.gather(
                *(r.sandbox.heartbeat({**tags, identity.NAME: r.id}) for r in ready if r.sandbox),
                return_exceptions=True), HEALTH_TIMEOUT)

    @staticmethod
    async def _health(sandbox: Sandbox) -> Health:
        try:
            return await asyncio.wait_for(sandbox.health(), HEALTH_TIMEOUT)
        except asyncio.TimeoutError:
            return Health(False, f"it did not answer a health check within {HEALTH_TIMEOUT:g} s")
        except Exception as exc:
            return Health(False, f"its health check failed ({type(exc).__name__}: {exc})")

    async def scale(self, sandboxes: int | Literal["auto"] | None) -> None:
        """Run exactly ``sandboxes`` sandboxes from now on; None or "auto": autoscale again
        between the profile's bounds. Idle sandboxes above the number stop at once, busy
        ones when their runs end.

        Raises:
            ProfileError: ``sandboxes`` is not a whole number or "auto", or it is negative
                or above the profile's ``max_sandboxes``.
        """
        if problem := policy.check_target(self.profile, sandboxes):
            raise ProfileError(problem)
        sandboxes = None if sandboxes in (None, policy.AUTO) else int(sandboxes)
        self.target = sandboxes
        self._emit(EventKind.SCALE, detail="autoscaling" if sandboxes is None
                   else f"set to {sandboxes} sandbox(es)")
        self._failed_starts = 0
        self.reconcile()

    def keep_idle(self) -> int:
        """Reset the idle clock of every idle sandbox once (the user kept them warm);
        return how many."""
        idle = [r for r in self.sandboxes if r.state is SandboxState.READY and not r.running]
        for record in idle:
            record.idle_since = time.monotonic()
        if idle:
            self._emit(EventKind.SCALE, detail=f"{len(idle)} idle sandbox(es) kept warm")
        return len(idle)

    def stop_idle(self) -> int:
        """Stop now the idle sandboxes the pool would stop for being idle; return how many."""
        due = policy.idle_stops(self.profile, self.target, self._facts(), time.monotonic())
        for record in [r for r in self.sandboxes if r.id in due]:
            self._withdraw(record, SandboxState.STOPPING)
            self._end_sessions(record, "was stopped (idle, stopped from the panel)")
            self._emit(EventKind.SCALE_DOWN, record.id, "idle, stopped from the panel")
            self._spawn(self._retire(record))
        return len(due)

    def update_profile(self, profile: Profile) -> None:
        """Adopt a changed definition of this pool's profile (limits apply from now on; a
        `scale` target stays, unless the new maximum is below it)."""
        self.profile = profile
        if self.target is not None and self.target > profile.max_sandboxes:
            self.target = None
        self.reconcile()

    def status(self) -> PoolStatus:
        """The pool now as immutable data, for status views (`PoolStatus.counts` gives
        the numbers they show)."""
        stops = policy.idle_stops(self.profile, self.target, self._facts(), time.monotonic())
        return PoolStatus(
            profile=self.profile.name, backend=self.backend.name,
            slots_per_sandbox=self.profile.slots_per_sandbox,
            max_sandboxes=self.profile.max_sandboxes, target=self.target, queued=self.queued,
            sandboxes=tuple(SandboxStatus.of(r, stops.get(r.id)) for r in self.sandboxes),
            retired=tuple(SandboxStatus.of(r) for r in self.retired),
            events=tuple(self.events)[-EVENTS_SHOWN:],
            price_per_hour=self.price_per_hour, cost=self.cost())

    async def aclose(self, leave: Collection[str] = ()) -> list[str]:
        """Stop every sandbox and task, but leave running the sandboxes whose slots hold a
        run of ``leave`` (detached runs a later kernel attaches); pending acquires fail
        with `ClosedError`. Return the ids of the sandboxes left."""
        if self._closed:
            return []
        self._closed = True
        error = ClosedError(f"The pool of profile {self.profile.name!r} was shut down.")
        for waiter in [w for queue in self._queues() for w in queue]:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        left = [r for r in self.sandboxes if any(s.busy and s.run_id in leave for s in r.slots)]
        for record in self.sandboxes:
            for slot in record.slots:
                if slot.busy and record not in left:
                    slot.lost_reason = "the pool was shut down"
                    slot.lost.set()
        tasks = [t for t in [self._maintenance, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        records = [r for r in self.sandboxes if r.sandbox is not None and r not in left]
        await asyncio.gather(*(self._retire(r) for r in records), return_exceptions=True)
        now = time.monotonic()  # those left running cost until now, as far as we know
        self._spent_seconds += sum(now - r.created for r in self.sandboxes)
        self.sandboxes.clear()
        self._kept.clear()
        return [r.id for r in left]
