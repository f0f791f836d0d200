"""The core's escalation on an exec handle: SIGINT, SIGTERM, SIGKILL, each given its grace."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest

from sandbox_magics.backends.base import ExecEvent, Exited, Process
from sandbox_magics.exceptions import SandboxLostError
from sandbox_magics.runs.drive import escalate


class ScriptedProcess(Process):
    """A process that ends on the first signal in ``dies_on``; records what it was sent."""

    def __init__(self, dies_on: set[int], running: bool = True, reachable: bool = True,
                 answers: bool = True) -> None:
        self.dies_on, self.running, self.reachable = dies_on, running, reachable
        self.answers = answers
        self.sent: list[int] = []
        self.ended: asyncio.Future[Exited] = asyncio.get_running_loop().create_future()
        if not running:
            self.ended.set_result(Exited(0))

    async def __aiter__(self) -> AsyncIterator[ExecEvent]:
        yield await self.ended

    async def signal(self, sig: int) -> bool:
        if not self.reachable:
            raise SandboxLostError("the sandbox stopped answering")
        if not self.answers:  # as aiohttp's total timeout of the signal request raises
            raise asyncio.TimeoutError
        self.sent.append(sig)
        if not self.running:
            return False
        if sig in self.dies_on:
            self.running = False
            self.ended.set_result(Exited(None, signal=sig))
        return True

    async def aclose(self) -> None:
        pass


INT, TERM, KILL = signal.SIGINT, signal.SIGTERM, signal.SIGKILL


@pytest.mark.parametrize("case, process, step, sent", [
    ("ends on SIGINT", dict(dies_on={INT, TERM, KILL}), "SIGINT", [INT]),
    ("ignores SIGINT, ends on SIGTERM", dict(dies_on={TERM, KILL}), "SIGTERM", [INT, TERM]),
    ("ignores SIGINT and SIGTERM", dict(dies_on={KILL}), "SIGKILL", [INT, TERM, KILL]),
    ("had ended already", dict(dies_on=set(), running=False), "already-finished", [INT]),
    ("never ends, even on SIGKILL", dict(dies_on=set()), "sandbox-unreachable", [INT, TERM, KILL]),
    ("sandbox unreachable", dict(dies_on={INT}, reachable=False), "sandbox-unreachable", []),
    ("signal request timed out", dict(dies_on={INT}, answers=False), "sandbox-unreachable", []),
])
def test_escalate_stops_at_the_first_step_that_works(case: str, process: dict[str, object],
                                                     step: str, sent: list[int]) -> None:
    async def scenario() -> tuple[str, list[int]]:
        proc = ScriptedProcess(**process)  # type: ignore[arg-type]
        return await escalate(proc, proc.ended, grace=0.05), proc.sent
    assert asyncio.run(scenario()) == (step, sent)
