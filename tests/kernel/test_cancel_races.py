"""Cancels that meet a run between or inside its stages, on real local agents: a second
cancel during the escalation, a shutdown as the run is granted its slot or before its task
ever ran."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sandbox_magics import Client, RunState
from sandbox_magics.runs import Run, RunSpec, Stage
from tests.kernel_driver import wait_until

PROFILES = """
[profiles.pair]
slots_per_sandbox = 2
max_sandboxes = 1

[profiles.pair.local]
workspace_base = "{ws}"

[profiles.one]
slots_per_sandbox = 1
max_sandboxes = 1

[profiles.one.local]
workspace_base = "{ws}"
"""


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for init count as gone)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_a_second_cancel_during_the_escalation_still_kills_the_run_and_spares_its_sandbox(
        client: Client) -> None:
    client.manager.grace = 3.0
    bystander = client.submit("pwd; while [ ! -e go ]; do sleep 0.02; done; echo done",
                              profile="pair")
    stubborn = client.submit("trap 'echo got-int' INT; trap 'echo got-term' TERM; echo armed; "
                             "while true; do sleep 0.05; done", profile="pair")
    assert wait_until(lambda: stubborn.stdout.startswith("armed") and stubborn.pgid
                      and bystander.stdout.endswith("\n"), 30)
    pgid = stubborn.pgid
    first = client._loop.submit(client.manager.cancel(stubborn))
    assert wait_until(lambda: "got-int" in stubborn.stdout, 10, interval=0.01)
    client.cancel(stubborn)  # e.g. the cancel button pressed again while SIGINT's grace runs
    first.result(30)
    assert stubborn.state is RunState.CANCELLED
    assert wait_until(lambda: not _group_alive(pgid), 10)
    (Path(bystander.stdout.splitlines()[0]) / "go").touch()
    assert bystander.wait(30) == 0, bystander.failure_message()
    assert stubborn.stop_step == "SIGKILL"


def test_a_run_granted_its_slot_as_shutdown_cancels_it_never_runs_its_command(
        client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    async def scenario() -> Run:
        manager = client.manager
        pool = manager.pool(manager.profile("one"))
        held = await pool.acquire()
        run = manager.submit(RunSpec(f"touch {marker}", profile="one"))
        while pool.queued == 0:
            await asyncio.sleep(0.01)
        await pool.release(held, reset=False)  # hands the slot to the queued run ...
        await manager.shutdown()  # ... in the same moment shutdown cancels it
        return run

    run = client._loop.run(asyncio.wait_for(scenario(), 60), 90)
    assert run.state is RunState.CANCELLED, run.state
    assert not marker.exists()


def test_a_run_whose_task_is_cancelled_before_it_first_ran_still_ends(client: Client) -> None:
    async def scenario() -> Run:
        run = client.manager.submit(RunSpec("true", profile="one"))
        await client.manager.shutdown()
        return run

    run = client._loop.run(asyncio.wait_for(scenario(), 60), 90)
    assert run.join(10), "the run never ended: its waiters would hang forever"
    assert run.state is RunState.CANCELLED and run.error == "cancelled while queued"
    assert run.stage is Stage.QUEUED
