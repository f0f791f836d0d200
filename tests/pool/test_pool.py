"""Pool policy with sandboxes that start instantly: fairness, limits, scaling, health, sessions."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sandbox_magics import AcquireTimeoutError, ClosedError, Profile, ProfileError, SandboxStartError
from sandbox_magics import identity
from sandbox_magics.backends.instant import InstantBackend, InstantSandbox
from sandbox_magics.identity import Identity
from sandbox_magics.pool import EventKind, Pool, PoolEvent
from sandbox_magics.pool import policy
from sandbox_magics.pool import pool as pool_module


def run(coro_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(*args), 20))


class Events:
    """A pool's ``on_event``: keeps every event and lets a test wait for those of a kind."""

    def __init__(self) -> None:
        self.seen: list[PoolEvent] = []
        self._arrived = asyncio.Event()

    def __call__(self, event: PoolEvent) -> None:
        self.seen.append(event)
        self._arrived.set()

    def of(self, kind: EventKind) -> list[PoolEvent]:
        return [e for e in self.seen if e.kind is kind]

    async def wait(self, kind: EventKind, count: int = 1) -> None:
        """Wait until ``count`` events of ``kind`` have come."""
        while len(self.of(kind)) < count:
            self._arrived.clear()
            await self._arrived.wait()


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition()`` holds: for steps they take as soon as
    they run (a waiter joining the queue, a stopped sandbox going), never for time to pass."""
    while not condition():
        await asyncio.sleep(0)


async def past(moment: float) -> None:
    """Wait until the monotonic clock (the pool's) is past ``moment``: for idle timeouts and
    backoffs, whose subject is time passing."""
    while time.monotonic() <= moment:
        await asyncio.sleep(moment - time.monotonic() + 0.001)


async def idle_past(pool: Pool, seconds: float) -> None:
    """Wait until every idle sandbox of ``pool`` has been idle for more than ``seconds``."""
    await past(max(r.idle_since for r in pool.sandboxes if r.idle_since is not None) + seconds)


def make_pool(backend: InstantBackend | None = None, events: Events | None = None,
              **options: Any) -> Pool:
    fields = {"slots_per_sandbox": 2, "max_sandboxes": 2, "idle_timeout": 60.0, **options}
    pool = Pool(Profile(name="p", **fields), backend or InstantBackend(), on_event=events,
                tick=0.05, cooldown=0.0)
    pool.start()
    return pool


def test_acquire_is_first_in_first_out() -> None:
    async def scenario() -> list[str]:
        pool = make_pool(slots_per_sandbox=1, max_sandboxes=1)
        held = await pool.acquire()
        order: list[str] = []

        async def wait(name: str) -> None:
            lease = await pool.acquire()
            order.append(name)
            await pool.release(lease)

        tasks = []
        for name in "abcde":
            tasks.append(asyncio.ensure_future(wait(name)))
            await until(lambda: pool.queued == len(tasks))
        await pool.release(held)
        await asyncio.gather(*tasks)
        await pool.aclose()
        return order
    assert run(scenario) == list("abcde")


def test_acquire_timeout_is_a_clear_error() -> None:
    async def scenario() -> str:
        pool = make_pool(slots_per_sandbox=1, max_sandboxes=1)
        await pool.acquire()
        with pytest.raises(AcquireTimeoutError) as info:
            await pool.acquire(timeout=0.2)
        assert pool.queued == 0
        await pool.aclose()
        return str(info.value)
    message = run(scenario)
    assert "No slot of profile 'p' came free within 0.2 s (1 of 1 busy" in message


def test_scales_up_to_max_and_not_beyond() -> None:
    async def scenario() -> tuple[int, int]:
        backend = InstantBackend()
        pool = make_pool(backend, slots_per_sandbox=2, max_sandboxes=3)
        leases = [await pool.acquire() for _ in range(6)]
        extra = asyncio.ensure_future(pool.acquire())
        await until(lambda: pool.queued == 1 or extra.done())
        pool.reconcile()  # what the pool decides on any tick while the run waits
        started, waiting = len(pool.sandboxes), pool.queued
        await pool.release(leases[0])
        await extra
        await pool.aclose()
        return started, waiting
    assert run(scenario) == (3, 1)


def test_scales_down_to_min_when_idle() -> None:
    async def scenario() -> tuple[int, int, int]:
        backend, events = InstantBackend(), Events()
        pool = make_pool(backend, events, slots_per_sandbox=1, max_sandboxes=3, min_sandboxes=1,
                         idle_timeout=0.1)
        leases = [await pool.acquire() for _ in range(3)]
        peak = sum(s.alive for s in backend.created)
        for lease in leases:
            await pool.release(lease)
        await events.wait(EventKind.SCALE_DOWN, 2)
        await idle_past(pool, 0.1)
        pool.reconcile()  # the last one is idle past its timeout too, but it is the minimum
        await until(lambda: len(pool.retired) >= 2)
        after = sum(s.alive for s in backend.created)
        await pool.aclose()
        return peak, len(events.of(EventKind.SCALE_DOWN)), after
    assert run(scenario) == (3, 2, 1)


def test_dead_sandbox_fails_its_leases_and_is_replaced() -> None:
    async def scenario() -> tuple[str | None, bool]:
        backend = InstantBackend()
        pool = make_pool(backend, slots_per_sandbox=1, max_sandboxes=1)
        lease = await pool.acquire()
        backend.created[0].alive = False
        await asyncio.wait_for(lease.lost.wait(), 2)
        await pool.release(lease)
        fresh = await pool.acquire(timeout=2)
        replaced = fresh.sandbox is not backend.created[0]
        await pool.aclose()
        return lease.slot.lost_reason, replaced
    reason, replaced = run(scenario)
    assert reason == "it was killed" and replaced


def test_release_resets_workspace_unless_session() -> None:
    async def scenario() -> tuple[int, bool, bool]:
        backend = InstantBackend()
        pool = make_pool(backend, slots_per_sandbox=2, max_sandboxes=1)
        lease = await pool.acquire()
        await pool.release(lease)
        first = await pool.acquire(session="s")
        await pool.release(first)
        other = await pool.acquire()
        again = await pool.acquire(session="s")
        await pool.aclose()
        return backend.created[0].resets, again.slot is first.slot, other.slot is not first.slot
    assert run(scenario) == (1, True, True)


def test_session_waits_for_its_own_slot() -> None:
    async def scenario() -> bool:
        pool = make_pool(slots_per_sandbox=2, max_sandboxes=1)
        first = await pool.acquire(session="s")
        waiting = asyncio.ensure_future(pool.acquire(session="s"))
        await until(lambda: pool.queued == 1 or waiting.done())
        assert not waiting.done()
        await pool.release(first)
        second = await asyncio.wait_for(waiting, 1)
        await pool.aclose()
        return second.slot is first.slot
    assert run(scenario)


def test_start_failure_fails_waiters_with_the_reason() -> None:
    async def scenario() -> str:
        pool = make_pool(InstantBackend(fail_starts=True))
        with pytest.raises(SandboxStartError) as info:
            await pool.acquire(timeout=5)
        await pool.aclose()
        return str(info.value)
    assert "the instant backend was told to fail" in run(scenario)


def test_close_fails_waiters_and_stops_sandboxes() -> None:
    async def scenario() -> bool:
        backend = InstantBackend()
        pool = make_pool(backend, slots_per_sandbox=1, max_sandboxes=1)
        await pool.acquire()
        waiting = asyncio.ensure_future(pool.acquire())
        await until(lambda: pool.queued == 1 or waiting.done())
        await pool.aclose()
        with pytest.raises(ClosedError):
            await waiting
        with pytest.raises(ClosedError):
            await pool.acquire()
        return not any(s.alive for s in backend.created)
    assert run(scenario)


def test_cancelled_acquire_does_not_leak_the_slot() -> None:
    async def scenario() -> int:
        pool = make_pool(slots_per_sandbox=1, max_sandboxes=1)
        held = await pool.acquire()
        waiting = asyncio.ensure_future(pool.acquire())
        await until(lambda: pool.queued == 1 or waiting.done())
        await pool.release(held)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        if not waiting.cancelled():
            await pool.release(waiting.result())
        lease = await pool.acquire(timeout=1)
        busy = pool.busy_slots
        await pool.release(lease)
        await pool.aclose()
        return busy
    assert run(scenario) == 1


def test_two_first_runs_of_a_new_session_share_one_slot() -> None:
    async def scenario() -> tuple[bool, int]:
        pool = make_pool(slots_per_sandbox=2, max_sandboxes=1)
        first, second = asyncio.ensure_future(pool.acquire(session="s")), asyncio.ensure_future(
            pool.acquire(session="s"))
        lease = await first
        await until(lambda: pool.queued == 1 or second.done())
        assert not second.done()
        await pool.release(lease)
        other = await asyncio.wait_for(second, 1)
        free = sum(1 for r in pool.sandboxes for slot in r.slots if slot.session is None)
        await pool.aclose()
        return other.slot is lease.slot, free
    assert run(scenario) == (True, 1)


def test_scale_target_survives_a_changed_profile_and_is_capped_by_max() -> None:
    async def scenario() -> tuple[int, int, int | None, str]:
        backend, events = InstantBackend(), Events()
        pool = make_pool(backend, events, max_sandboxes=3)
        await pool.scale(2)
        await events.wait(EventKind.READY, 2)
        pool.update_profile(dataclasses.replace(pool.profile, idle_timeout=0.01))
        await idle_past(pool, 0.01)
        pool.reconcile()  # both idle past the new timeout, and both kept for the target
        alive = sum(s.alive for s in backend.created)
        with pytest.raises(ProfileError) as info:
            await pool.scale(1000)
        target = pool.target
        await pool.aclose()
        return alive, len(events.of(EventKind.SCALE_DOWN)), target, str(info.value)
    alive, stopped, target, message = run(scenario)
    assert (alive, stopped, target) == (2, 0, 2)
    assert "max_sandboxes is 3" in message and "1000" in message


def test_scale_zero_stops_everything_and_refuses_runs_with_a_sentence() -> None:
    async def scenario() -> tuple[int, str]:
        backend = InstantBackend()
        pool = make_pool(backend, min_sandboxes=1)
        lease = await pool.acquire()
        await pool.release(lease)
        await pool.scale(0)
        await until(lambda: not any(s.alive for s in backend.created))
        with pytest.raises(SandboxStartError) as info:
            await pool.acquire(timeout=5)
        await pool.aclose()
        return len(backend.created), str(info.value)
    created, message = run(scenario)
    assert created == 1 and "scaled to 0" in message


def test_failed_start_is_retried_with_backoff_for_later_runs() -> None:
    async def scenario() -> tuple[str, str, list[int], bool]:
        backend, events = InstantBackend(fail_starts=True), Events()
        pool = make_pool(backend, events)
        with pytest.raises(SandboxStartError) as info:
            await pool.acquire(timeout=5)
        failed_at = time.monotonic()
        backend.fail_starts = False
        with pytest.raises(SandboxStartError) as during:  # within the backoff: no new start
            await pool.acquire(timeout=5)
        starts = [len(events.of(EventKind.SCALE_UP))]
        await past(failed_at + policy.backoff(1))
        lease = await pool.acquire(timeout=5)
        starts.append(len(events.of(EventKind.SCALE_UP)))
        served = lease.sandbox.alive
        await pool.aclose()
        return str(info.value), str(during.value), starts, served
    message, during, starts, served = run(scenario)
    assert "the instant backend was told to fail" in message
    assert "the instant backend was told to fail" in during
    assert starts == [1, 2] and served


def test_requeued_acquire_goes_to_the_head_of_the_queue() -> None:
    async def scenario() -> list[str]:
        pool = make_pool(slots_per_sandbox=1, max_sandboxes=1)
        held = await pool.acquire()
        order: list[str] = []

        async def wait(name: str, first: bool) -> None:
            lease = await pool.acquire(first=first)
            order.append(name)
            await pool.release(lease)

        tasks = [asyncio.ensure_future(wait("a", False)), asyncio.ensure_future(wait("b", False))]
        await until(lambda: pool.queued == 2)
        tasks.append(asyncio.ensure_future(wait("requeued", True)))
        await until(lambda: pool.queued == 3)
        await pool.release(held)
        await asyncio.gather(*tasks)
        await pool.aclose()
        return order
    assert run(scenario) == ["requeued", "a", "b"]


def test_start_adopts_its_kernels_leftovers_reaps_silent_ones_and_leaves_the_rest() -> None:
    me = Identity(client_id="new", kernel_id="k1", process="host/2")
    before_restart = Identity(client_id="old", kernel_id="k1", process="host/1")
    other = Identity(client_id="x", kernel_id="k2", process="host/3")
    mine = InstantSandbox("p-1", 2, {**before_restart.tags("p"), identity.NAME: "p-1"})
    alive_other = InstantSandbox("p-9", 2, other.tags("p"))
    silent = InstantSandbox("p-7", 2, other.tags("p", now=time.time() - 10_000))

    async def scenario() -> tuple[list[str], bool, bool, bool, int]:
        backend, events = InstantBackend(left_behind=[mine, alive_other, silent]), Events()
        pool = Pool(Profile(name="p", slots_per_sandbox=2, max_sandboxes=2, heartbeat_window=900),
                    backend, me, on_event=events, tick=0.05, cooldown=0.0)
        pool.start()
        lease = await pool.acquire(timeout=5)
        used = lease.sandbox is mine
        await pool.release(lease)
        await events.wait(EventKind.REAPED)
        await until(lambda: not silent.alive)
        names = [r.id for r in pool.sandboxes]
        await pool.aclose()
        return names, used, alive_other.alive, silent.alive, len(backend.created)
    names, used, other_alive, silent_alive, created = run(scenario)
    assert names == ["p-1"] and used and other_alive and not silent_alive and created == 0


def test_a_leased_slot_names_its_holder_in_the_status() -> None:
    async def scenario() -> list[tuple[str | None, ...]]:
        pool = make_pool(slots_per_sandbox=2, max_sandboxes=1)
        lease = await pool.acquire(holder="r7")
        runs = [box.runs for box in pool.status().sandboxes]
        await pool.release(lease)
        runs += [box.runs for box in pool.status().sandboxes]
        await pool.aclose()
        return runs
    assert run(scenario) == [("r7", None), (None, None)]


def test_two_clients_of_a_restarted_kernel_never_both_adopt_one_sandbox() -> None:
    before_restart = Identity(client_id="old", kernel_id="k7", process="host/1")
    first, second = (Identity(client_id=c, kernel_id="k7", process="host/2") for c in "ab")
    left = InstantSandbox("p-41", 2, {**before_restart.tags("p"), identity.NAME: "p-41"})

    async def scenario() -> list[bool]:
        profile = Profile(name="p", slots_per_sandbox=2, max_sandboxes=2, heartbeat_window=900)
        pools = [Pool(profile, InstantBackend(left_behind=[left]), me, tick=0.05, cooldown=0.0)
                 for me in (first, second)]
        for pool in pools:
            pool.start()
        leases = [await pool.acquire(timeout=5) for pool in pools]
        adopted = [lease.sandbox is left for lease in leases]
        for pool in pools:
            await pool.aclose()
        return adopted
    assert sorted(run(scenario)) == [False, True]


def test_scale_zero_stops_a_sandbox_held_only_by_an_idle_session_and_the_session_hears_it() -> None:
    async def scenario() -> tuple[bool, str | None, bool]:
        backend = InstantBackend()
        pool = make_pool(backend, slots_per_sandbox=2, max_sandboxes=1)
        lease = await pool.acquire(session="s")
        await pool.release(lease)
        await pool.scale(0)
        await until(lambda: not backend.created[0].alive)
        await pool.scale(None)
        again = await pool.acquire(session="s", timeout=5)
        notice = pool.session_notice("s")
        fresh = again.sandbox is not backend.created[0]
        await pool.aclose()
        return backend.created[0].alive, notice, fresh
    alive, notice, fresh = run(scenario)
    assert not alive and fresh
    assert notice == ("Session 's' started afresh in a new workspace: its sandbox was stopped "
                      "(the pool is set to at most 0 sandbox(es)), and the files in it with it.")


def test_a_broken_connection_retires_its_sandbox_only_if_it_fails_a_health_check() -> None:
    async def scenario() -> tuple[bool, bool, bool, list[EventKind]]:
        backend = InstantBackend()
        pool = make_pool(backend, slots_per_sandbox=2, max_sandboxes=1)
        first, other = await pool.acquire(), await pool.acquire()
        kept = not await pool.suspect(first.slot.sandbox, "the answer broke off.")
        other_ok = not other.lost.is_set()
        backend.created[0].alive = False
        retired = await pool.suspect(first.slot.sandbox, "the answer broke off.")
        kinds = [e.kind for e in pool.events]
        await pool.aclose()
        return kept, other_ok, retired, kinds
    kept, other_ok, retired, kinds = run(scenario)
    assert kept and other_ok and retired
    assert kinds.index(EventKind.CONNECTION_LOST) < kinds.index(EventKind.LOST)


def test_every_event_the_pool_emits_is_an_event_kind_and_every_kind_is_emitted() -> None:
    tree = ast.parse(inspect.getsource(pool_module))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    emitted = []
    for call in calls:
        if isinstance(call.func, ast.Attribute) and call.func.attr == "_emit":
            kind = call.args[0]
            assert (isinstance(kind, ast.Attribute) and isinstance(kind.value, ast.Name)
                    and kind.value.id == "EventKind"), ast.unparse(call)
            emitted.append(EventKind[kind.attr])
    made = [ast.unparse(c) for c in calls
            if isinstance(c.func, ast.Name) and c.func.id == "PoolEvent"]
    assert made == ["PoolEvent(self.profile.name, kind, sandbox, detail)"]  # only in _emit
    assert set(emitted) == set(EventKind)
