"""`Pool`: the sandboxes × slots of one profile, shared fairly among runs.

Policy lives here, I/O in the backend. Acquire is first-in first-out with a timeout; when
every slot is busy and the pool is below ``max_sandboxes`` it starts more; a maintenance
task checks health (two failed checks in a row retire a sandbox), keeps ``min_sandboxes``
running and stops sandboxes idle for longer than ``idle_timeout`` (no more than one
scale-down per ``cooldown``). A sandbox that dies is retired and the runs on it see their
lease's ``lost`` event. Loop-bound: every method runs on the manager's loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..backends.base import Backend
from ..exceptions import AcquireTimeoutError, ClosedError, SandboxError, SandboxStartError
from ..profiles import Profile
from .state import Lease, PoolEvent, SandboxRecord, SandboxState, SlotRecord

HEALTH_TIMEOUT = 3.0
HEALTH_FAILURES = 2
RESET_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
EVENT_HISTORY = 200


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[Lease]
    session: str | None
    granted: bool = False


class Pool:
    """Sandboxes of one profile. Start with `start`, stop with `aclose`."""

    def __init__(self, profile: Profile, backend: Backend,
                 on_event: Callable[[PoolEvent], None] | None = None,
                 tick: float = 1.0, cooldown: float = 10.0) -> None:
        self.profile = profile
        self.backend = backend
        self.sandboxes: list[SandboxRecord] = []
        self.events: collections.deque[PoolEvent] = collections.deque(maxlen=EVENT_HISTORY)
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
        self._last_scale_down = 0.0
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
        return sum(s.busy for r in self.sandboxes for s in r.slots)

    def start(self) -> None:
        """Start the maintenance task and the ``min_sandboxes``."""
        if self._maintenance is None:
            self._maintenance = asyncio.ensure_future(self._maintain())
            self._ensure_min()

    def _emit(self, kind: str, sandbox: str | None = None, detail: str = "") -> None:
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
        return [r for r in self.sandboxes if r.state in (SandboxState.STARTING, SandboxState.READY)]

    async def acquire(self, session: str | None = None, timeout: float | None = None) -> Lease:
        """Wait for a free slot (the session's own slot if it has one) and lease it.

        Raises:
            AcquireTimeoutError: no slot came free within ``timeout`` seconds.
            SandboxStartError: the pool has no sandbox and could not start one.
            ClosedError: the pool was shut down.
        """
        if self._closed:
            raise ClosedError(f"The pool of profile {self.profile.name!r} has been shut down.")
        slot = self._sessions.get(session) if session else None
        waiter = _Waiter(asyncio.get_running_loop().create_future(), session)
        if slot is not None:
            self._session_waiters.setdefault(slot, collections.deque()).append(waiter)
        else:
            self._waiters.append(waiter)
        self._dispatch()
        if not waiter.future.done():
            self._scale_up()
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
            await self.release(Lease(slot), reset=True)
        return True

    def session_notice(self, session: str) -> str | None:
        """If ``session``'s sandbox was lost, say so once."""
        reason = self._lost_sessions.pop(session, None)
        if reason is None:
            return None
        return (f"Session {session!r} started afresh in a new workspace: its sandbox was lost "
                f"({reason}), and the files in it with it.")

    async def release(self, lease: Lease, reset: bool = True) -> None:
        """Give the slot back, emptying its workspace (if ``reset``) unless a session
        holds it; a slot whose session ended meanwhile is emptied."""
        if lease.released:
            return
        lease.released = True
        slot = lease.slot
        record = slot.sandbox
        try:
            if reset and slot.session is None and record.state is SandboxState.READY and record.sandbox:
                try:
                    await asyncio.wait_for(record.sandbox.reset(slot.index), RESET_TIMEOUT)
                except (SandboxError, asyncio.TimeoutError) as exc:
                    self.mark_lost(record, f"could not reset slot {slot.index}: {exc}")
        finally:
            self._free(slot)

    def _free(self, slot: SlotRecord) -> None:
        slot.busy, slot.run_id = False, None
        if slot.session is None and slot.sandbox.state is SandboxState.READY:
            self._free_slots[slot] = None
        if slot.sandbox.idle:
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
        slot.busy = True
        self._free_slots.pop(slot, None)
        slot.lost = asyncio.Event()
        slot.lost_reason = None
        slot.sandbox.idle_since = None
        if waiter.session and slot.session is None:
            slot.session = waiter.session
            self._sessions[waiter.session] = slot
        waiter.granted = True
        waiter.future.set_result(Lease(slot))

    def _free_slot(self) -> SlotRecord | None:
        """A free slot of a ready sandbox, reserved for no session (O(1))."""
        return next(iter(self._free_slots), None)

    def _scale_up(self) -> None:
        waiting = len(self._waiters)
        coming = sum(r.size for r in self.sandboxes if r.state is SandboxState.STARTING)
        room = self.profile.max_sandboxes - len(self._live())
        need = min(room, math.ceil(max(0, waiting - coming) / self.profile.slots_per_sandbox))
        if need > 0:
            self._emit("scale-up", detail=f"{waiting} waiting, {coming} slots starting: "
                                          f"starting {need} sandbox(es)")
        for _ in range(need):
            self._start_sandbox()

    def _ensure_min(self) -> None:
        for _ in range(self.profile.min_sandboxes - len(self._live())):
            self._start_sandbox()

    def _start_sandbox(self) -> None:
        self._counter += 1
        record = SandboxRecord(f"{self.profile.name}-{self._counter}", SandboxState.STARTING,
                               self.profile.slots_per_sandbox)
        self.sandboxes.append(record)
        self._spawn(self._boot(record))

    async def _boot(self, record: SandboxRecord) -> None:
        try:
            sandbox = await asyncio.wait_for(
                self.backend.create(self.profile, record.id), self.profile.start_timeout + 5)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, SandboxError) else (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, asyncio.TimeoutError)
                else f"it did not start within {self.profile.start_timeout:g} s")
            self.sandboxes.remove(record)
            self._emit("start-failed", record.id, reason)
            if not self._live():
                error = SandboxStartError(
                    f"Could not start a sandbox for profile {self.profile.name!r}: {reason}")
                for waiter in self._waiters:
                    if not waiter.future.done():
                        waiter.future.set_exception(error)
            return
        if self._closed:
            await sandbox.terminate()
            return
        record.sandbox = sandbox
        record.slots = [SlotRecord(record, i) for i in range(sandbox.slots)]
        record.size = sandbox.slots
        record.state = SandboxState.READY
        record.idle_since = time.monotonic()
        self._free_slots.update(dict.fromkeys(record.slots))
        self._emit("ready", record.id, str(sandbox.describe().get("address", "")))
        self._dispatch()

    def mark_lost(self, record: SandboxRecord, reason: str) -> None:
        """Retire a dead sandbox: fail its runs' leases, drop its sessions, clean it up."""
        if record.state in (SandboxState.DEAD, SandboxState.STOPPING):
            return
        self._withdraw(record, SandboxState.DEAD)
        for slot in record.slots:
            if slot.busy:
                slot.lost_reason = reason
                slot.lost.set()
            if slot.session is not None:
                self._sessions.pop(slot.session, None)
                self._lost_sessions[slot.session] = reason
            self._waiters.extendleft(reversed(self._session_waiters.pop(slot, ())))
        self._emit("lost", record.id, reason)
        self._spawn(self._retire(record))
        self._ensure_min()
        self._scale_up()
        self._dispatch()

    async def _retire(self, record: SandboxRecord) -> None:
        if record.sandbox is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(record.sandbox.terminate(), STOP_TIMEOUT)
        with contextlib.suppress(ValueError):
            self.sandboxes.remove(record)

    async def _maintain(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._tick)
            ready = [r for r in self.sandboxes if r.state is SandboxState.READY and r.sandbox]
            alive = await asyncio.gather(*(self._alive(r) for r in ready))
            for record, ok in zip(ready, alive):
                record.health_failures = 0 if ok else record.health_failures + 1
                if record.health_failures >= HEALTH_FAILURES:
                    self.mark_lost(record, "it stopped answering health checks")
            self._ensure_min()
            self._scale_down()

    async def _alive(self, record: SandboxRecord) -> bool:
        assert record.sandbox is not None
        try:
            return await asyncio.wait_for(record.sandbox.is_alive(), HEALTH_TIMEOUT)
        except asyncio.TimeoutError:
            return False

    def _scale_down(self) -> None:
        now = time.monotonic()
        if now - self._last_scale_down < self._cooldown:
            return
        live = len(self._live())
        for record in list(self.sandboxes):
            if live <= self.profile.min_sandboxes:
                return
            idle_for = now - record.idle_since if record.idle and record.idle_since else 0.0
            too_old = now - record.created > self.profile.lifetime
            if record.idle and (idle_for > self.profile.idle_timeout or too_old):
                self._withdraw(record, SandboxState.STOPPING)
                self._emit("scale-down", record.id,
                           "lifetime reached" if too_old else f"idle for {idle_for:.0f} s")
                self._spawn(self._retire(record))
                self._last_scale_down = now
                return

    async def scale(self, sandboxes: int) -> None:
        """Run exactly ``sandboxes`` sandboxes from now on (min = max = that number)."""
        self.profile = dataclasses.replace(self.profile, min_sandboxes=sandboxes,
                                           max_sandboxes=max(sandboxes, 1))
        self._emit("scale", detail=f"set to {sandboxes} sandbox(es)")
        self._ensure_min()
        for record in [r for r in self.sandboxes if r.idle][: max(0, len(self._live()) - sandboxes)]:
            self._withdraw(record, SandboxState.STOPPING)
            self._spawn(self._retire(record))

    def update_profile(self, profile: Profile) -> None:
        """Adopt a changed definition of this pool's profile (limits apply from now on)."""
        self.profile = profile

    def snapshot(self) -> dict[str, Any]:
        """The pool as plain data, for status views."""
        return {
            "profile": self.profile.name,
            "backend": self.backend.name,
            "slots_per_sandbox": self.profile.slots_per_sandbox,
            "max_sandboxes": self.profile.max_sandboxes,
            "queued": self.queued,
            "starting": sum(r.state is SandboxState.STARTING for r in self.sandboxes),
            "sandboxes": [
                {"id": r.id, "state": r.state.value,
                 "slots": [s.state for s in r.slots] or [r.state.value] * r.size,
                 "runs": [s.run_id for s in r.slots],
                 **(r.sandbox.describe() if r.sandbox else {})}
                for r in self.sandboxes
            ],
            "events": [e.as_dict() for e in list(self.events)[-20:]],
        }

    async def aclose(self) -> None:
        """Stop every sandbox and task; pending acquires fail with `ClosedError`."""
        if self._closed:
            return
        self._closed = True
        error = ClosedError(f"The pool of profile {self.profile.name!r} was shut down.")
        for waiter in [w for queue in self._queues() for w in queue]:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        for record in self.sandboxes:
            for slot in record.slots:
                if slot.busy:
                    slot.lost_reason = "the pool was shut down"
                    slot.lost.set()
        tasks = [t for t in [self._maintenance, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        records = [r for r in self.sandboxes if r.sandbox is not None]
        await asyncio.gather(*(self._retire(r) for r in records), return_exceptions=True)
        self.sandboxes.clear()
