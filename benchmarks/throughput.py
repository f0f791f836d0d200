"""Case 2: 2,000 short commands over 16 slots vs asyncio subprocesses 16 at a time
(the practical ceiling) and vs ipyparallel with 16 engines running the same commands."""

from __future__ import annotations

import asyncio
import subprocess
import time

from ._harness import Row, client

SLOTS = 16


def ceiling(n: int, width: int) -> float:
    async def main() -> None:
        gate = asyncio.Semaphore(width)

        async def one(i: int) -> None:
            async with gate:
                proc = await asyncio.create_subprocess_exec(
                    "bash", "-c", f"echo {i}", stdout=asyncio.subprocess.PIPE)
                await proc.communicate()
        await asyncio.gather(*(one(i) for i in range(n)))
    start = time.perf_counter()
    asyncio.run(main())
    return n / (time.perf_counter() - start)


def ours(n: int, width: int) -> float:
    with client(slots=width // 2, sandboxes=2) as c:
        start = time.perf_counter()
        runs = [c.submit(f"echo {i}", profile="bench") for i in range(n)]
        for run in runs:
            run.wait(600)
        elapsed = time.perf_counter() - start
        assert all(run.stdout == f"{i}\n" for i, run in enumerate(runs))
    return n / elapsed


def _echo(i: int) -> str:
    import subprocess as sp
    return sp.run(["bash", "-c", f"echo {i}"], capture_output=True, text=True, check=True).stdout


def ipyparallel_rate(n: int, engines: int) -> float | None:
    try:
        import ipyparallel as ipp
    except ImportError:
        return None
    cluster = ipp.Cluster(n=engines, log_level=40)
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(engines, timeout=120)
        view = rc.load_balanced_view()
        view.map_sync(_echo, range(engines))
        start = time.perf_counter()
        out = view.map_sync(_echo, range(n))
        elapsed = time.perf_counter() - start
        assert out[-1] == f"{n - 1}\n"
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    return n / elapsed


def run(quick: bool) -> list[Row]:
    n, width = (60, 4) if quick else (2000, SLOTS)
    subprocess.run(["true"], check=True)
    top = ceiling(n, width)
    mine = ours(n, width)
    ipp_rate = ipyparallel_rate(n, width)
    rows = [Row("2 throughput", f"{n}× `echo $i` over {width} slots vs asyncio, {width} at once",
                f"{mine:.0f} runs/s", f"{top:.0f} runs/s", mine / top, "≥ 0.8×", mine / top >= 0.8)]
    if ipp_rate is None:
        rows.append(Row("2 throughput", "vs ipyparallel", f"{mine:.0f} runs/s",
                        "ipyparallel not installed", None, "> 1×", None))
    else:
        rows.append(Row("2 throughput", f"same commands vs ipyparallel, {width} engines",
                        f"{mine:.0f} runs/s", f"{ipp_rate:.0f} runs/s", mine / ipp_rate, "> 1×",
                        mine > ipp_rate))
    return rows
