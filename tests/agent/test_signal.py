"""``POST /slots/{slot}/signal``: one signal to a run's process group, for the kernel side to
escalate with; the run's EXIT frame still arrives and says how it ended."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from sandbox_magics.agent import protocol
from tests.agent.agent_driver import Agent, Reply, Result, exec_body

WAIT_FOR_SIGNALS = "trap 'echo got {sig}; exit 3' {sig}; echo ready; while :; do sleep 0.05; done"


def _signal(agent: Agent, slot: int, run_id: str, sig: Any) -> Reply:
    return agent.request("POST", f"/slots/{slot}/signal",
                         json.dumps({"run_id": run_id, "signal": sig}).encode())


def _signal_once_ready(agent: Agent, script: str, sig: int) -> tuple[Reply, Result]:
    """Run ``script`` in slot 0; once it prints, signal it; collect the rest of the run."""
    result = Result()
    for kind, payload in agent.frames(0, exec_body(script)):
        if kind == protocol.STDOUT:
            if not result.stdout:
                reply = _signal(agent, 0, "r1", sig)
            result.stdout += payload
        elif kind == protocol.EXIT:
            result.exit = json.loads(payload)
    return reply, result


def test_sigkill_through_the_route_ends_the_run_with_an_exit_frame_that_says_cancelled(
        agent: Agent) -> None:
    reply, result = _signal_once_ready(agent, "echo ready; sleep 300", signal.SIGKILL)
    assert reply == (200, b'{"delivered": true, "running": true}')
    assert result.exit is not None and result.exit["signal"] == signal.SIGKILL
    assert result.exit["reason"] == "cancelled"


def test_sigint_reaches_the_runs_handler_and_the_run_ends_as_it_chooses(agent: Agent) -> None:
    reply, result = _signal_once_ready(agent, WAIT_FOR_SIGNALS.format(sig="INT"), signal.SIGINT)
    assert reply.json() == {"delivered": True, "running": True}
    assert result.stdout == b"ready\ngot INT\n"
    assert result.exit_code == 3 and result.exit["reason"] == "cancelled"  # type: ignore[index]


def test_a_signal_that_does_not_stop_runs_leaves_the_exit_reason_alone(agent: Agent) -> None:
    reply, result = _signal_once_ready(agent, WAIT_FOR_SIGNALS.format(sig="USR1"), signal.SIGUSR1)
    assert reply.json() == {"delivered": True, "running": True}
    assert result.stdout == b"ready\ngot USR1\n"
    assert result.exit_code == 3 and result.exit["reason"] is None  # type: ignore[index]


def test_a_signal_for_an_idle_slot_or_another_run_is_not_delivered(agent: Agent) -> None:
    assert _signal(agent, 1, "r1", signal.SIGKILL).json() == {"delivered": False, "running": False}
    for kind, _ in agent.frames(0, exec_body("echo ready; sleep 300")):
        if kind == protocol.STDOUT:
            other = _signal(agent, 0, "another-run", signal.SIGKILL)
            assert agent.request("GET", "/health").json()["running"] == [0]
            _signal(agent, 0, "r1", signal.SIGKILL)
    assert other.json() == {"delivered": False, "running": False}


@pytest.mark.parametrize("sig", [signal.SIGSEGV, 0, -9, 9999, "9", 9.0, True, None])
def test_signals_outside_the_allowed_set_are_refused(agent: Agent, sig: Any) -> None:
    reply = _signal(agent, 0, "r1", sig)
    assert reply.status == 400 and reply.json()["error"].startswith("signal must be one of SIGHUP (1)")


def test_a_signal_without_a_run_id_is_refused(agent: Agent) -> None:
    reply = agent.request("POST", "/slots/0/signal", json.dumps({"signal": 9}).encode())
    assert reply.status == 400 and reply.json()["error"].startswith("run_id must be")
