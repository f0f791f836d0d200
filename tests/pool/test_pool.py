"""Pool policy with sandboxes that start instantly: fairness, limits, scaling, health, sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sandbox_magics import AcquireTimeoutError, ClosedError, Profile, SandboxStartError
from sandbox_magics.backends.instant import InstantBackend
from sandbox_magics.pool import Pool


def run(coro_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(*args), 20))


def make_pool(backend: InstantBackend | None = None, **options: Any) -> Pool:
    fields = {"slots_per_sandbox": 2, "max_sandboxes": 2, "idle_timeout": 60.0, **options}
    pool = Pool(Profile(name="p", **fields), backend or InstantBackend(), tick=0.05, cooldown=0.0)
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
            await asyncio.sleep(0.01)
            await pool.release(lease)

        tasks = []
        for name in "abcde":
            tasks.append(asyncio.ensure_future(wait(name)))
            await asyncio.sleep(0.001)
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
        await asyncio.sleep(0.2)
        started, waiting = len(backend.created), pool.queued
        await pool.release(leases[0])
        await extra
        await pool.aclose()
        return started, waiting
    assert run(scenario) == (3, 1)


def test_scales_down_to_min_when_idle() -> None:
    async def scenario() -> tuple[int, int]:
        backend = InstantBackend()
        pool = make_pool(backend, slots_per_sandbox=1, max_sandboxes=3, min_sandboxes=1,
                         idle_timeout=0.1)
        leases = [await pool.acquire() for _ in range(3)]
        peak = sum(s.alive for s in backend.created)
        for lease in leases:
            await pool.release(lease)
        for _ in range(100):
            if sum(s.alive for s in backend.created) == 1:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        after = sum(s.alive for s in backend.created)
        await pool.aclose()
        return peak, after
    assert run(scenario) == (3, 1)


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
    assert reason == "it stopped answering health checks" and replaced


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
        await asyncio.sleep(0.1)
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
        await asyncio.sleep(0.05)
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
        await asyncio.sleep(0.05)
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
        await asyncio.sleep(0.05)
        assert not second.done()
        await pool.release(lease)
        other = await asyncio.wait_for(second, 1)
        free = sum(1 for r in pool.sandboxes for slot in r.slots if slot.session is None)
        await pool.aclose()
        return other.slot is lease.slot, free
    assert run(scenario) == (True, 1)
