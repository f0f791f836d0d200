"""The dashboard and the JupyterLab sidebar show the same counts for the same pool states."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from sandbox_magics import Profile
from sandbox_magics.backends.instant import InstantBackend, InstantSandbox
from sandbox_magics.pool import Lease, Pool, PoolStatus
from sandbox_magics.widgets.dashboard import render
from sandbox_magics.widgets.lab import LabBridge

SHOWN = ("busy", "total", "queued", "starting")


class GatedBackend(InstantBackend):
    """Instant sandboxes that start only once ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def create(self, profile: Profile, tags: Mapping[str, str]) -> InstantSandbox:
        await self.gate.wait()
        return await super().create(profile, tags)


def make_pool(backend: InstantBackend, slots: int = 2, sandboxes: int = 1) -> Pool:
    profile = Profile(name="p", slots_per_sandbox=slots, max_sandboxes=sandboxes)
    pool = Pool(profile, backend, tick=60.0, cooldown=0.0)
    pool.start()
    return pool


async def one_busy_one_free(pool: Pool) -> None:
    await pool.acquire()


async def idle_session(pool: Pool) -> None:
    await pool.release(await pool.acquire(session="s"))


async def running_session(pool: Pool) -> None:
    await pool.acquire(session="s")


async def dead_sandbox(pool: Pool) -> None:
    lease = await pool.acquire()
    pool.mark_lost(lease.slot.sandbox, "it was killed")


async def starting_sandbox(pool: Pool) -> asyncio.Future[Lease]:
    waiting = asyncio.ensure_future(pool.acquire())
    while not pool.sandboxes:  # the pool decides once its start-up discovery is done
        await asyncio.sleep(0)
    return waiting


async def one_dead_one_ready_with_session(pool: Pool) -> None:
    first, second = await pool.acquire(), await pool.acquire()
    await pool.release(await pool.acquire(session="s"))
    await pool.release(second)
    pool.mark_lost(first.slot.sandbox, "it was killed")


Scenario = Callable[[Pool], Awaitable["asyncio.Future[Lease] | None"]]
CASES: list[tuple[Scenario, dict[str, Any], dict[str, int]]] = [
    (one_busy_one_free, {}, {"busy": 1, "free": 1, "session": 0, "total": 2, "dead": 0}),
    (idle_session, {}, {"busy": 0, "free": 1, "session": 1, "total": 2, "dead": 0}),
    (running_session, {}, {"busy": 1, "free": 1, "session": 0, "total": 2, "dead": 0}),
    (dead_sandbox, {}, {"busy": 0, "free": 0, "session": 0, "total": 0, "dead": 2}),
    (starting_sandbox, {"gated": True},
     {"busy": 0, "free": 0, "session": 0, "total": 0, "dead": 0, "starting": 1, "queued": 1}),
    (one_dead_one_ready_with_session, {"slots": 1, "sandboxes": 3},
     {"busy": 0, "free": 1, "session": 1, "total": 2, "dead": 1}),
]


async def capture(scenario: Scenario, gated: bool = False, **shape: int) -> PoolStatus:
    backend = GatedBackend() if gated else InstantBackend()
    pool = make_pool(backend, **shape)
    waiting = await scenario(pool)
    status = pool.status()  # taken before a dead sandbox's retirement runs
    await pool.aclose()
    if waiting is not None:
        await asyncio.gather(waiting, return_exceptions=True)
    return status


def dashboard_counts(status: PoolStatus) -> dict[str, int]:
    html = render([status], {})
    return {k: int(v) for k, v in re.findall(r'data-([a-z]+)="(\d+)"', html)}


class Magics:
    """Stands for the `SandboxMagics` a bridge serves (only weakly referred to)."""


def sidebar_counts(status: PoolStatus) -> dict[str, int]:
    client = SimpleNamespace(manager=SimpleNamespace(status=lambda: [status], runs=[], sweeps={}, kernels={},
                                                    cost=lambda: None))
    state = LabBridge(Magics()).state(client)  # type: ignore[arg-type]
    (pool,) = state["pools"]
    assert (state["busy"], state["total"]) == (pool["busy"], pool["total"])  # status bar
    return {k: pool[k] for k in SHOWN}


@pytest.mark.parametrize(("scenario", "shape", "expected"), CASES,
                         ids=[case[0].__name__ for case in CASES])
def test_dashboard_and_sidebar_count_the_same(scenario: Scenario, shape: dict[str, Any],
                                              expected: dict[str, int]) -> None:
    status = asyncio.run(asyncio.wait_for(capture(scenario, **shape), 10))
    dashboard, sidebar = dashboard_counts(status), sidebar_counts(status)
    expected = {"starting": 0, "queued": 0, **expected}
    assert {k: dashboard[k] for k in expected} == expected
    assert sidebar == {k: expected[k] for k in SHOWN}
