"""Soak: thousands of runs in one kernel, with failures, spilled logs, cancels and agent
kills mixed in; nothing may leak.

The runs go through the kernel's own client (``%%sandbox`` cells and ``client.submit``
from code run in the kernel), in batches. After the first batch (pools warm) and after the
last, with the pool settled, the test reads the kernel's open file descriptors
(``/proc/<pid>/fd``), threads (``/proc/<pid>/task``) and resident memory from outside, and
asks the kernel how many asyncio tasks its client's loop has. They must stay flat: at most
`FD_SLACK` more descriptors, `THREAD_SLACK` more threads and `TASK_SLACK` more tasks, and
resident memory at most `RSS_SLACK` more (the history keeps every run, and each ended
run's log keeps a tail of at most 256 KiB in memory; the runs here write less than that,
except the spilled ones, which are counted in the bound).

The default run does 300 runs; ``python -m pytest -m soak`` does 5,000.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import kernel_env
from tests.kernel_driver import Kernel, agent_pids, rss, wait_until

BATCH = 250
FD_SLACK = 8
THREAD_SLACK = 4
TASK_SLACK = 2
RSS_SLACK = 64 * 2**20
SPILLED_TAIL = 256 * 1024
PROFILES = """
[profiles.default]
slots_per_sandbox = 4
min_sandboxes = 2
max_sandboxes = 2
acquire_timeout = 600
idle_timeout = 3600
"""
DRIVER = r'''
import asyncio, concurrent.futures, json, os, random, signal
client = get_ipython().magics_manager.registry["SandboxMagics"].client

def soak_batch(first, count, kill):
    """Submit ``count`` runs (every 25th spills its log, every 25th fails, every 17th
    cancels an earlier run; ``kill``: SIGKILL an agent halfway); wait for all; print the
    states."""
    rng = random.Random(first)
    runs = []
    for i in range(first, first + count):
        if i % 25 == 3:
            code = "head -c 300000 /dev/zero | tr '\\0' x; echo"
        elif i % 25 == 7:
            code = f"echo failing {i}; exit 3"
        else:
            code = (f"for j in $(seq {rng.randint(1, 60)}); do echo {i} $j; done; "
                    f"sleep 0.0{rng.randint(0, 5)}; echo x > out-{i}.txt")
        runs.append(client.submit(code, raise_error=False))
        if i % 17 == 5:
            client.cancel(runs[rng.randrange(len(runs))])
        if kill and i == first + count // 2:
            pids = [b["pid"] for p in client.status() for b in p["sandboxes"] if b.get("pid")]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
    for run in runs:
        assert run.join(300), f"{run} never ended"
    states = {}
    for run in runs:
        states[run.state.value] = states.get(run.state.value, 0) + 1
    requeued = sum(any("back to the head of the queue" in n for n in r.notices) for r in runs)
    print(json.dumps({"states": states, "spilled": sum(r.log.spilled for r in runs),
                      "requeued": requeued}))

def soak_tasks():
    """The asyncio tasks on the client's loop (counted on that loop)."""
    box = concurrent.futures.Future()
    def count():
        box.set_result(len(asyncio.all_tasks()))
        return False
    client.every(lambda: 1.0, count)
    return box.result(10)

def soak_settled():
    pool = client.status()[0]
    return (pool["queued"] == 0 and len(pool["sandboxes"]) == 2
            and all(b["state"] == "ready" and "busy" not in b["slots"] for b in pool["sandboxes"]))
'''


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    k = Kernel(kernel_env(profiles, tmp_path / "ws"))
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    assert k.execute(DRIVER).status == "ok"
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


def value(k: Kernel, expression: str) -> object:
    reply = k.execute(f"print(json.dumps({expression}))", timeout=120)
    assert reply.status == "ok", reply.error
    return json.loads(reply.stdout)


def sample(k: Kernel) -> dict[str, int]:
    """The kernel's descriptors, threads, loop tasks and RSS, once its pool has settled."""
    assert wait_until(lambda: value(k, "soak_settled()"), 60), value(k, "client.status()")
    pid = k.pid
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task")),
            "tasks": int(value(k, "soak_tasks()")),  # type: ignore[call-overload]
            "rss": rss(pid)}


def shown(s: dict[str, int]) -> str:
    return (f"{s['fds']} fds, {s['threads']} threads, {s['tasks']} asyncio tasks, "
            f"RSS {s['rss'] / 2**20:.1f} MB")


def soak(k: Kernel, runs: int) -> None:
    states: dict[str, int] = {}
    spilled = requeued = 0
    start: dict[str, int] = {}
    for batch, first in enumerate(range(0, runs, BATCH)):
        count = min(BATCH, runs - first)
        reply = k.execute(f"soak_batch({first}, {count}, kill={batch % 2 == 1})", timeout=600)
        assert reply.status == "ok", reply.error
        summary = json.loads(reply.stdout)
        for state, n in summary["states"].items():
            states[state] = states.get(state, 0) + n
        spilled += summary["spilled"]
        requeued += summary["requeued"]
        cell = k.execute(f"%%sandbox bash\necho cell {batch}")
        assert cell.stdout == f"cell {batch}\n", cell.error
        if batch == 0:
            start = sample(k)
    end = sample(k)
    history = int(value(k, "len(client.runs())"))  # type: ignore[call-overload]
    print(f"\nsoak: {runs} runs ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}; "
          f"{spilled} spilled their log; {requeued} re-queued after an agent kill) and {history - runs} cells in one kernel\n"
          f"  after the first batch: {shown(start)}\n  at the end:            {shown(end)}")
    assert sum(states.values()) == runs and history == runs + (runs + BATCH - 1) // BATCH
    assert set(states) <= {"succeeded", "failed", "cancelled", "lost"}, states
    assert states.get("failed") and states.get("cancelled")
    assert states["succeeded"] > runs * 0.75
    if runs > BATCH:
        assert states.get("lost", 0) + requeued, "no agent kill hit a run"
    assert end["fds"] - start["fds"] <= FD_SLACK
    assert end["threads"] - start["threads"] <= THREAD_SLACK
    assert end["tasks"] - start["tasks"] <= TASK_SLACK
    assert end["rss"] - start["rss"] <= RSS_SLACK + spilled * SPILLED_TAIL
    assert len(agent_pids(parent=k.pid)) == 2
    assert k.execute("%%sandbox bash\nls").stdout == ""


def test_300_runs_in_one_kernel_leave_fds_threads_tasks_and_memory_flat(kernel: Kernel) -> None:
    soak(kernel, 300)


@pytest.mark.soak
def test_5000_runs_in_one_kernel_leave_fds_threads_tasks_and_memory_flat(kernel: Kernel) -> None:
    soak(kernel, 5000)


def test_spilled_runs_hold_no_descriptor_once_ended(kernel: Kernel) -> None:
    spill = textwrap.dedent("""
        runs = [client.submit("head -c 300000 /dev/zero", raise_error=False) for _ in range({n})]
        assert all(r.join(120) for r in runs) and all(r.log.spilled for r in runs)
    """)
    assert kernel.execute(spill.format(n=16)).status == "ok"     # every slot's connection open
    assert wait_until(lambda: value(kernel, "soak_settled()"), 60)
    before = len(os.listdir(f"/proc/{kernel.pid}/fd"))
    assert kernel.execute(spill.format(n=80)).status == "ok"
    assert wait_until(lambda: value(kernel, "soak_settled()"), 60)
    assert len(os.listdir(f"/proc/{kernel.pid}/fd")) - before <= FD_SLACK
