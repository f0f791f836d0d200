"""`AgentSandbox` against a real agent: an exec's ``detach`` flag, a run found again by
its id (its state, and its output from any offset as the same event stream an exec
gives), and the agent's refusals as errors."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sandbox_magics.backends.agent_client import AgentProcess, AgentRunState, AgentSandbox
from sandbox_magics.backends.base import ExecRequest, Exited, Output, Started
from sandbox_magics.exceptions import AgentRequestError
from tests.agent.agent_driver import TOKEN, Agent, start_agent

Scenario = Callable[[AgentSandbox], Awaitable[None]]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = start_agent(tmp_path / "root")
    yield a
    a.stop()


def play(agent: Agent, scenario: Scenario) -> None:
    """Run ``scenario`` with an `AgentSandbox` of ``agent``."""
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await scenario(AgentSandbox("sb", 2, f"http://127.0.0.1:{agent.port}", TOKEN,
                                        session, {}))
    asyncio.run(main())


async def events_of(process: AgentProcess) -> list[Any]:
    """Every event of ``process``, which is closed after."""
    try:
        return [event async for event in process]
    finally:
        await process.aclose()


def output(events: list[Any], *streams: str) -> bytes:
    """The output of ``events`` on ``streams`` (default both), in order."""
    return b"".join(e.data for e in events
                    if isinstance(e, Output) and e.stream in (streams or ("stdout", "stderr")))


async def state_once(sandbox: AgentSandbox, slot: int, run_id: str,
                     holds: Callable[[AgentRunState], bool]) -> AgentRunState:
    """The run's state once ``holds`` is true of it (within 15 s)."""
    deadline = time.monotonic() + 15
    while not holds(state := await sandbox.run_state(slot, run_id)):
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
    return state


async def leave_after_first_output(process: AgentProcess) -> None:
    async for event in process:
        if isinstance(event, Output):
            break
    await process.aclose()


def test_a_detached_exec_goes_on_after_its_stream_is_closed_and_is_read_again_by_id(
        agent: Agent) -> None:
    script = ("echo started; until [ -e go ]; do sleep 0.01; done; "
              "echo done; echo warn >&2; exit 6")

    async def scenario(sandbox: AgentSandbox) -> None:
        await leave_after_first_output(
            await sandbox.exec(0, ExecRequest("bg", ("bash",), stdin=script, detach=True)))
        state = await state_once(sandbox, 0, "bg", lambda s: s.followers == 0)
        assert (state.state, state.detached, state.exited) == ("running", True, None)
        (agent.slot(0) / "go").touch()
        state = await state_once(sandbox, 0, "bg", lambda s: s.state == "ended")
        process = await sandbox.output(0, "bg")
        events = await events_of(process)
        assert isinstance(events[0], Started) and events[0].pgid == state.pgid
        assert output(events) == b"started\ndone\nwarn\n"
        assert events[-1] == state.exited and isinstance(state.exited, Exited)
        assert state.exited.exit_code == process.returncode == 6
        assert process.offset == state.bytes == 18
        later = await sandbox.output(0, "bg", offset=10)
        assert output(await events_of(later)) == b"ne\nwarn\n" and later.offset == 18
    play(agent, scenario)


def test_a_blocking_exec_whose_stream_is_closed_early_is_killed(agent: Agent) -> None:
    async def scenario(sandbox: AgentSandbox) -> None:
        await leave_after_first_output(
            await sandbox.exec(0, ExecRequest("fg", ("bash",), stdin="echo up; sleep 300")))
        state = await state_once(sandbox, 0, "fg", lambda s: s.state == "ended")
        assert state.exited is not None and state.exited.reason == "client-gone"
        assert state.exited.signal == signal.SIGKILL and not state.detached
    play(agent, scenario)


def test_a_run_followed_by_its_id_takes_a_signal(agent: Agent) -> None:
    script = "trap 'echo stopping; exit 9' TERM; echo ready; while :; do sleep 0.05; done"

    async def scenario(sandbox: AgentSandbox) -> None:
        await leave_after_first_output(
            await sandbox.exec(1, ExecRequest("bg", ("bash",), stdin=script, detach=True)))
        process = await sandbox.output(1, "bg")
        events = []
        async for event in process:
            events.append(event)
            if isinstance(event, Output) and event.data == b"ready\n":
                assert await process.signal(signal.SIGTERM)
        await process.aclose()
        assert output(events, "stdout") == b"ready\nstopping\n"
        assert events[-1].exit_code == 9 and events[-1].reason == "cancelled"
    play(agent, scenario)


def test_run_ids_that_are_no_plain_url_segment_reach_the_agent(agent: Agent) -> None:
    run_id = "sweep 3/4 ?lr=1e-3#a%b.."

    async def scenario(sandbox: AgentSandbox) -> None:
        await events_of(await sandbox.exec(0, ExecRequest(run_id, ("bash",), stdin="echo hi")))
        assert (await sandbox.run_state(0, run_id)).bytes == 3
        assert output(await events_of(await sandbox.output(0, run_id))) == b"hi\n"
    play(agent, scenario)


def test_a_run_the_slot_does_not_keep_or_an_offset_past_its_output_is_refused(
        agent: Agent) -> None:
    async def scenario(sandbox: AgentSandbox) -> None:
        with pytest.raises(AgentRequestError) as refused:
            await sandbox.run_state(1, "r1")
        assert refused.value.status == 404
        assert str(refused.value) == ("Sandbox sb refused the request: slot 1 keeps no run 'r1': "
                                      "a slot keeps only its last run, and it has run nothing "
                                      "since the agent started.")
        await events_of(await sandbox.exec(0, ExecRequest("r1", ("bash",), stdin="echo hi")))
        with pytest.raises(AgentRequestError) as refused:
            await sandbox.output(0, "r1", offset=4)
        assert refused.value.status == 400 and "from 0 to 3" in str(refused.value)
    play(agent, scenario)


def test_output_the_agent_let_go_is_one_stderr_line_and_the_offset_goes_past_it(
        tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "root", "--max-output-mb", "1")
    script = "for i in $(seq 30000); do printf '%099d\\n' $i; done"

    async def scenario(sandbox: AgentSandbox) -> None:
        await events_of(await sandbox.exec(0, ExecRequest("flood", ("bash",), stdin=script)))
        state = await sandbox.run_state(0, "flood")
        process = await sandbox.output(0, "flood")
        events = await events_of(process)
        lines = [e.data for e in events if isinstance(e, Output) and e.stream == "stderr"]
        assert lines == [f"\n[sandbox] {state.dropped:,} bytes of output dropped here (the "
                         "sandbox keeps the head and the latest of a run's output: its agent's "
                         "--max-output-mb)\n".encode()]
        assert process.offset == state.bytes == 3_000_000 and state.dropped > 0
    try:
        play(agent, scenario)
    finally:
        agent.stop()


def test_a_detached_run_no_client_watches_is_stopped_by_the_agent_past_its_timeout(
        agent: Agent) -> None:
    script = "trap 'echo interrupted; exit 130' INT; echo up; while :; do sleep 0.05; done"

    async def scenario(sandbox: AgentSandbox) -> None:
        await leave_after_first_output(await sandbox.exec(
            0, ExecRequest("bg", ("bash",), stdin=script, detach=True, timeout=0.5)))
        state = await state_once(sandbox, 0, "bg", lambda s: s.state == "ended")
        assert state.exited is not None and state.exited.reason == "timeout"
        assert state.exited.exit_code == 130
        events = await events_of(await sandbox.follow(0, "bg"))
        assert output(events, "stdout") == b"up\ninterrupted\n"
    play(agent, scenario)


def test_kept_runs_lists_detached_runs_going_or_unread_and_not_blocking_ones(agent: Agent) -> None:
    async def scenario(sandbox: AgentSandbox) -> None:
        await leave_after_first_output(await sandbox.exec(
            0, ExecRequest("going", ("bash",), stdin="echo up; sleep 300", detach=True)))
        await leave_after_first_output(await sandbox.exec(
            1, ExecRequest("ended", ("bash",), stdin="echo up", detach=True)))
        await state_once(sandbox, 1, "ended", lambda s: s.state == "ended")
        kept = sorted(await sandbox.kept_runs(), key=lambda k: k.slot)
        assert [(k.run_id, k.slot, k.running) for k in kept] == [
            ("going", 0, True), ("ended", 1, False)]
        assert output(await events_of(await sandbox.follow(1, "ended"))) == b"up\n"
        assert [k.run_id for k in await sandbox.kept_runs()] == ["going"]
        process = await sandbox.follow(0, "going")
        assert await process.signal(signal.SIGKILL)
        await events_of(process)
        assert await sandbox.kept_runs() == []
    play(agent, scenario)


def test_an_execs_files_are_in_the_workspace_while_it_runs_and_gone_after(agent: Agent) -> None:
    async def scenario(sandbox: AgentSandbox) -> None:
        events = await events_of(await sandbox.exec(0, ExecRequest(
            "f", ("bash",), stdin="cat params.json; ls", files={"params.json": '{"lr": "1"}'})))
        assert output(events, "stdout") == b'{"lr": "1"}params.json\n'
        assert events[-1].workspace_empty is True
        assert not (agent.slot(0) / "params.json").exists()
    play(agent, scenario)


@pytest.mark.parametrize(("files", "says"), [
    ({"../x": "a"}, "plain file name"), ({"a/b": "a"}, "plain file name"),
    ({"..": "a"}, "plain file name"), ({"big": "x" * (1024 * 1024 + 1)}, "at most 1024 KiB"),
])
def test_an_exec_whose_files_are_not_plain_small_files_is_refused(
        agent: Agent, files: dict[str, str], says: str) -> None:
    async def scenario(sandbox: AgentSandbox) -> None:
        with pytest.raises(AgentRequestError, match=says):
            await sandbox.exec(0, ExecRequest("f", ("bash",), stdin="true", files=files))
    play(agent, scenario)


def test_an_execs_file_is_never_written_through_a_link_the_workspace_holds(
        agent: Agent, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    agent.slot(0).mkdir(parents=True, exist_ok=True)
    (agent.slot(0) / "params.json").symlink_to(outside)

    async def scenario(sandbox: AgentSandbox) -> None:
        with pytest.raises(AgentRequestError, match="params.json"):
            await sandbox.exec(0, ExecRequest("f", ("bash",), stdin="true",
                                              files={"params.json": "x"}))
    play(agent, scenario)
    assert outside.read_text() == "keep"
