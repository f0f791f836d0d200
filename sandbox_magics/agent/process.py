"""One slot's process: start it in its own process group, pump its output, stop it.

Output is read in chunks as produced and turned into protocol frames on a bounded queue, so
a slow client slows the process down instead of filling the agent's memory. The run ends
when its main process exits; anything it left running in its process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol

STRAGGLER_GRACE = 0.5
_ESCALATION = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


@dataclass
class Slot:
    """A workspace directory and at most one running process."""

    index: int
    path: Path
    run_id: str | None = None
    process: asyncio.subprocess.Process | None = None
    stop_reason: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def busy(self) -> bool:
        return self.run_id is not None


def killpg(pid: int, sig: int) -> bool:
    """Signal the process group led by ``pid``; False if it is already gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def start(slot: Slot, run_id: str, argv: list[str], env: dict[str, str],
                stdin: bytes | None) -> asyncio.subprocess.Process:
    """Start ``argv`` in the slot's workspace as the leader of a new process group."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=slot.path,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    slot.run_id, slot.process, slot.stop_reason = run_id, process, None
    slot.done = asyncio.Event()
    return process


async def pump(process: asyncio.subprocess.Process, stdin: bytes | None,
               out: asyncio.Queue[bytes | None], timeout: float | None, slot: Slot) -> dict[str, Any]:
    """Feed stdin, forward stdout/stderr frames to ``out``, and return the EXIT payload."""
    assert process.stdout is not None and process.stderr is not None
    started = time.monotonic()
    feeders = [
        asyncio.ensure_future(_read(process.stdout, protocol.STDOUT, out)),
        asyncio.ensure_future(_read(process.stderr, protocol.STDERR, out)),
    ]
    if stdin is not None:
        feeders.append(asyncio.ensure_future(_write_stdin(process, stdin)))
    try:
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            slot.stop_reason = "timeout"
            await stop(process, grace=2.0)
        _, pending = await asyncio.wait(feeders, timeout=STRAGGLER_GRACE)
        if pending:
            killpg(process.pid, signal.SIGKILL)
            await asyncio.wait(pending, timeout=5.0)
    finally:
        killpg(process.pid, signal.SIGKILL)
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
    code = process.returncode
    return {
        "exit_code": code,
        "signal": -code if code is not None and code < 0 else None,
        "reason": slot.stop_reason,
        "seconds": round(time.monotonic() - started, 6),
    }


async def stop(process: asyncio.subprocess.Process, grace: float) -> str:
    """Escalate SIGINT, SIGTERM, SIGKILL on the process group; return the step that worked."""
    for sig in _ESCALATION:
        if process.returncode is not None:
            break
        killpg(process.pid, sig)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), grace)
            return sig.name
    return "already-exited" if process.returncode is not None else "SIGKILL"


async def _read(stream: asyncio.StreamReader, kind: int, out: asyncio.Queue[bytes | None]) -> None:
    while True:
        chunk = await stream.read(protocol.MAX_CHUNK)
        if not chunk:
            return
        await out.put(protocol.frame(kind, chunk))


async def _write_stdin(process: asyncio.subprocess.Process, data: bytes) -> None:
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(data)
        await process.stdin.drain()
    process.stdin.close()
