"""How long runs outlive their owner: a detached run goes on when its kernel (the agent's
parent, or the client that sent heartbeats) is gone, until no client has come for the
heartbeat window; then it is stopped, SIGINT first, and the agent exits leaving no
process behind. A run that is not detached dies with its kernel."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_magics.agent import protocol
from tests.agent.agent_driver import Agent, collect, exec_body, start_agent, start_agent_under_a_parent
from tests.kernel_driver import pid_alive, wait_until

WINDOW = "2"
# Records its own pid and its child's, says it is ready, and waits; a SIGINT is written
# down in the workspace before it exits (its background child ignores SIGINT, as a
# non-interactive shell's background jobs do, and is left to the agent).
WAITS_FOR_A_SIGNAL = ("trap 'echo INT > stopped-by; exit 130' INT; sleep 300 & "
                      "echo $$ $! > pids; echo ready; wait")


@contextlib.contextmanager
def reaped(agent: Agent) -> Iterator[Agent]:
    """``agent``; its process and its parent are killed at the end if the test left them."""
    try:
        yield agent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.pid, signal.SIGKILL)
        agent.stop()


def start_detached(agent: Agent, slot: int) -> list[int]:
    """Start `WAITS_FOR_A_SIGNAL` detached in ``slot``, leave once it is ready, and return
    the pids of the run's shell and of its child."""
    frames = agent.frames(slot, exec_body(WAITS_FOR_A_SIGNAL, run_id="bg", detach=True))
    assert [kind for kind, _ in (next(frames), next(frames))] == [protocol.START, protocol.STDOUT]
    frames.close()
    return [int(pid) for pid in (agent.slot(slot) / "pids").read_text().split()]


def assert_stopped_by_sigint_and_gone(agent: Agent, pids: list[int]) -> None:
    """The agent exits by itself; the run got SIGINT first; no process of it is left."""
    assert wait_until(lambda: not pid_alive(agent.pid), 60), agent.log
    assert (agent.slot(0) / "stopped-by").read_text() == "INT\n"
    assert not [pid for pid in pids if pid_alive(pid)]
    assert f"no client for {WINDOW} s (--heartbeat-window); stopping runs and exiting" in agent.log


def test_with_its_parent_gone_a_detached_run_goes_on_then_stops_after_the_window(
        tmp_path: Path) -> None:
    with reaped(start_agent_under_a_parent(tmp_path / "root", "--heartbeat-window", WINDOW)) as agent:
        pids = start_detached(agent, 0)
        follower = agent.output_frames(0, "bg")  # a client is seen while it follows
        assert [kind for kind, _ in (next(follower), next(follower))] == [protocol.START,
                                                                          protocol.STDOUT]
        blocking = agent.frames(1, exec_body("echo $$; sleep 300", run_id="fg"))
        assert next(blocking)[0] == protocol.START
        blocking_pid = int(next(blocking)[1])
        agent.process.kill()
        agent.process.wait()
        ended = collect(blocking).exit
        assert ended is not None and ended["reason"] == "owner-gone", ended
        assert wait_until(lambda: not pid_alive(blocking_pid), 15)
        state = agent.state(0, "bg")
        assert state["state"] == "running" and all(pid_alive(pid) for pid in pids)
        assert "parent process is gone; keeping its detached runs" in agent.log
        follower.close()
        assert_stopped_by_sigint_and_gone(agent, pids)


def test_without_a_parent_a_detached_run_stops_once_no_client_came_for_the_window(
        tmp_path: Path) -> None:
    with reaped(start_agent(tmp_path / "root", "--heartbeat-window", WINDOW)) as agent:
        pids = start_detached(agent, 0)
        assert_stopped_by_sigint_and_gone(agent, pids)
        assert agent.process.wait(timeout=30) == 0


@pytest.mark.parametrize("read_first", [True, False], ids=["read", "unread"])
def test_with_its_parent_gone_an_agent_stays_only_for_a_detached_run_nobody_read(
        tmp_path: Path, read_first: bool) -> None:
    with reaped(start_agent_under_a_parent(tmp_path / "root", "--heartbeat-window", "600")) as agent:
        script = "until [ -e go ]; do sleep 0.01; done; echo done"
        frames = agent.frames(0, exec_body(script, run_id="bg", detach=True))
        if not read_first:
            next(frames)
            frames.close()
            assert wait_until(lambda: agent.state(0, "bg")["followers"] == 0, 15)
        (agent.slot(0) / "go").touch()
        if read_first:
            assert collect(frames).stdout == b"done\n"
        assert wait_until(lambda: agent.state(0, "bg")["state"] == "ended", 15)
        assert agent.state(0, "bg")["read"] is read_first
        agent.process.kill()
        agent.process.wait()
        if read_first:
            assert wait_until(lambda: not pid_alive(agent.pid), 15)
            assert "parent process is gone; exiting" in agent.log
        else:
            assert wait_until(lambda: "parent process is gone; keeping" in agent.log, 15)
            assert agent.replay(0, "bg").stdout == b"done\n"
