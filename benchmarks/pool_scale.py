"""Case 5: the pool's own cost — acquire+release from 10 to 10,000 slots with sandboxes that
start instantly (all but one slot busy), and the dashboard's render time at 10,000 slots."""

from __future__ import annotations

import asyncio
import collections
import time

from sandbox_magics.backends.instant import InstantBackend
from sandbox_magics.pool import Pool
from sandbox_magics.profiles import Profile
from sandbox_magics.widgets.dashboard import render

from ._harness import Row, Stat

PER_SANDBOX = 10


async def _pool(slots: int) -> Pool:
    boxes = max(1, slots // PER_SANDBOX)
    pool = Pool(Profile(name="scale", slots_per_sandbox=PER_SANDBOX, min_sandboxes=boxes,
                        max_sandboxes=boxes), InstantBackend(), tick=3600)
    pool.start()
    while sum(r.state.value == "ready" for r in pool.sandboxes) < boxes:
        await asyncio.sleep(0.001)
    return pool


async def acquire_release(slots: int, ops: int) -> Stat:
    pool = await _pool(slots)
    held = [await pool.acquire() for _ in range(slots - 1)]
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(ops):
            await pool.release(await pool.acquire(), reset=False)
        samples.append((time.perf_counter() - start) / ops)
    for lease in held:
        await pool.release(lease, reset=False)
    await pool.aclose()
    return Stat.of(samples)


async def render_time(slots: int) -> Stat:
    pool = await _pool(slots)
    for _ in range(slots // 2):
        await pool.acquire()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        render([pool.status()], {"scale": collections.Counter(running=slots // 2)})
        samples.append(time.perf_counter() - start)
    await pool.aclose()
    return Stat.of(samples)


def run(quick: bool) -> list[Row]:
    ops = 200 if quick else 5000
    small = asyncio.run(acquire_release(10, ops))
    large = asyncio.run(acquire_release(10_000, ops))
    ratio = large.median / small.median
    drawn = asyncio.run(render_time(10_000))
    return [
        Row("5 pool scale", "acquire+release, 10,000 slots vs 10 slots (instant sandboxes)",
            large.fmt("µs", 1e6), small.fmt("µs", 1e6), ratio, "≤ 1.5×", ratio <= 1.5),
        Row("5 pool scale", "dashboard snapshot + render, 10,000 slots",
            drawn.fmt("ms", 1e3), "–", None, "–", None),
    ]
