"""A run's drive: acquire a slot, upload, execute, collect, release — and stop it on cancel.

`drive` is the one task behind each `Run`. It walks the run through its stages
(`Stage`), and owns the policy a backend must not decide: the run's timeout, the
SIGINT → SIGTERM → SIGKILL escalation (`escalate`, each step given ``grace`` seconds to
work), and the re-queue of a run whose sandbox was lost before its process started (it
goes back to the head of the queue, up to `MAX_REQUEUES` times). Cancelling the task is
how a run is cancelled, at whatever stage it is: it never starts its command afterwards;
cancelling it once the run is DETACHING lets the run go on in its slot instead.
`attached` is the same drive for a run an earlier kernel started: it follows the run's
output from the first byte, where `drive` uploads and executes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.base import ExecRequest, Exited, FileInfo, Output, Process, Started
from ..exceptions import SandboxError, SandboxLostError
from ..pool import Lease, Pool
from ..profiles import Profile
from . import artifacts
from .run import Run
from .state import RunState, Stage

MAX_REQUEUES = 3
TRANSFER_TIMEOUT = 300.0
EXEC_START_TIMEOUT = 60.0
BACKSTOP = 10.0
"""Seconds past its timeout after which a detached run's sandbox stops it by itself (the
kernel watching it stops it first; this bounds a run whose kernel went)."""
_TRANSFER_ERRORS = (SandboxError, OSError, asyncio.TimeoutError)
_STEPS = ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL"))


@dataclass(frozen=True)
class Outcome:
    """How a run ended; ``started`` says whether its process ever ran, ``workspace_empty``
    whether the slot held nothing afterwards (then nothing to collect or reset)."""

    state: RunState
    exit_code: int | None = None
    error: str | None = None
    started: bool = True
    workspace_empty: bool | None = None


class _Requeue(Exception):
    """The sandbox was lost before the run's process started: try again elsewhere."""


async def drive(run: Run, profile: Profile, pool: Pool, artifacts_dir: Path,
                grace: float) -> None:
    """Carry ``run`` from the queue to its end; never raises (the run's state says how it
    ended). Cancel the task running this to cancel the run."""
    for attempt in range(MAX_REQUEUES + 1):
        run._stage(Stage.QUEUED)
        if run.cancelling:  # a cancel that met the re-queue
            run._finish(RunState.CANCELLED, error="cancelled while queued")
            return
        try:
            lease = await pool.acquire(run.spec.session, timeout=profile.acquire_timeout,
                                       first=attempt > 0, holder=run.id)
        except asyncio.CancelledError:
            run._finish(RunState.CANCELLED, error=f"cancelled while {_queued(pool)}")
            return
        except SandboxError as exc:
            run._finish(RunState.ERROR, error=str(exc))
            return
        if run.cancelling:  # granted as it was cancelled (wait_for then drops the cancel)
            await lease.release(reset=False)
            run._finish(RunState.CANCELLED, error="cancelled while queued")
            return
        if run.spec.session and (notice := pool.session_notice(run.spec.session)):
            run._notice(notice)
        inputs: dict[str, FileInfo] = {}
        try:
            await _attempt(run, profile, lease, artifacts_dir, inputs,
                           _execute(run, profile, lease, grace, inputs))
            return
        except _Requeue as lost:
            if attempt == MAX_REQUEUES:
                run._finish(RunState.LOST, error=f"{lost}; it never started, and was re-queued "
                                                 f"{MAX_REQUEUES} times")
                return
            run._notice(f"Sandbox {lease.sandbox_id} was lost before run {run.id} started "
                        f"({lost}); it goes back to the head of the queue.")


def _queued(pool: Pool) -> str:
    return "waiting for a sandbox to start" if pool.status().counts().starting else "queued"


async def attached(run: Run, profile: Profile, lease: Lease, artifacts_dir: Path,
                   grace: float) -> None:
    """Carry ``run``, a detached run an earlier kernel started and ``lease``'s slot keeps,
    to its end as `drive` would: follow its output from the first byte (within what is
    left of its timeout), stop it on cancel, collect its artifacts, release the slot.
    Never raises; cancel the task running this to cancel the run."""
    await _attempt(run, profile, lease, artifacts_dir, {}, _follow(run, lease, grace))


async def _attempt(run: Run, profile: Profile, lease: Lease, artifacts_dir: Path,
                   inputs: dict[str, FileInfo], start: Awaitable[Outcome]) -> None:
    """One try in one leased slot: ``start`` the run and follow it to its end, collect
    (files other than ``inputs``), release; raises `_Requeue` if the sandbox died before
    the run's process started."""
    outcome = Outcome(RunState.ERROR, error="the run ended without an exit status", started=False)
    requeue: str | None = None
    try:
        outcome = await start
        if outcome.state is RunState.LOST and not outcome.started:
            requeue = outcome.error or "sandbox lost"
        elif outcome.state is not RunState.LOST and outcome.started:
            run._stage(Stage.COLLECTING)
            await _download(run, lease)
            if not outcome.workspace_empty:
                await _collect(run, lease, profile, artifacts_dir, inputs)
    except asyncio.CancelledError:
        if run.detaching:  # this kernel goes; the run goes on in its slot, kept for another
            outcome = Outcome(RunState.DETACHED, workspace_empty=True)
        else:
            outcome = Outcome(RunState.CANCELLED, outcome.exit_code,
                              f"cancelled while {run.stage.value}", started=outcome.started)
    except SandboxLostError as exc:
        if outcome.started:
            outcome = Outcome(RunState.LOST, outcome.exit_code, str(exc))
        else:
            await lease.report_broken(str(exc))
            requeue = str(exc)
    except _TRANSFER_ERRORS as exc:
        outcome = Outcome(RunState.ERROR, error=f"file transfer failed: {exc or 'it took too long'}",
                          started=outcome.started)
    finally:
        with contextlib.suppress(Exception):
            if outcome.state is not RunState.DETACHED and await _despite_cancel(
                    lease.release(reset=not outcome.workspace_empty)):
                run._request_cancel()
        if requeue is None:
            run._finish(outcome.state, outcome.exit_code, outcome.error)
    if requeue is not None:
        run._requeue()
        raise _Requeue(requeue)


async def _execute(run: Run, profile: Profile, lease: Lease, grace: float,
                   inputs: dict[str, FileInfo]) -> Outcome:
    """Upload the run's inputs (listed into ``inputs``), run its command in the leased
    slot within its timeout, and say how it ended."""
    run._assign(lease.sandbox_id, lease.index, lease.sandbox.id, rate=lease.rate)
    run._stage(Stage.UPLOADING)
    inputs.update(await _upload(run, lease))
    if run.cancelling:
        return Outcome(RunState.CANCELLED, error="cancelled while uploading", started=False)
    timeout = run.timeout = run.spec.timeout or profile.run_timeout
    request = ExecRequest(run_id=run.id, argv=(run.spec.interpreter, *run.spec.args),
                          env={**profile.env, **run.spec.env, "SANDBOX_RUN_ID": run.id},
                          stdin=run.spec.code, detach=run.spec.detach, files=run.spec.files,
                          timeout=timeout + BACKSTOP if timeout and run.spec.detach else None,
                          interactive=run.spec.interactive)
    run._stage(Stage.RUNNING)
    return await _watch(run, lease, grace, lease.sandbox.exec(lease.index, request), timeout)


async def _follow(run: Run, lease: Lease, grace: float) -> Outcome:
    """Follow the kept run ``run`` from its first byte, within what is left of its
    timeout (counted from when it started)."""
    run._stage(Stage.RUNNING)
    left = None
    if run.timeout and run.started_at:
        left = max(run.timeout - (time.time() - run.started_at), 0.0)
    outcome = await _watch(run, lease, grace, lease.sandbox.follow(lease.index, run.id), left)
    # a kept run had started: lost, it is never re-queued
    return dataclasses.replace(outcome, started=True) if outcome.state is RunState.LOST else outcome


async def _watch(run: Run, lease: Lease, grace: float, opening: Awaitable[Process],
                 timeout: float | None) -> Outcome:
    """Follow the process ``opening`` gives until it ends, its sandbox is lost, or
    ``timeout`` passes (then stop it); say how it ended."""
    try:
        process = await asyncio.wait_for(opening, EXEC_START_TIMEOUT)
    except SandboxLostError as exc:
        await lease.report_broken(str(exc))
        return Outcome(RunState.LOST, error=str(exc), started=False)
    except (SandboxError, asyncio.TimeoutError) as exc:
        return Outcome(RunState.ERROR, error=f"the sandbox refused the run: {exc or 'no answer'}",
                       started=False)
    started = asyncio.Event()
    if run.spec.interactive:
        run._process = process
    consume = asyncio.ensure_future(_consume(run, process, started))
    lost = asyncio.ensure_future(lease.lost.wait())
    try:
        try:
            if run.cancelling or run.detaching:  # as the exec answered (wait_for drops that)
                raise asyncio.CancelledError
            done, _ = await asyncio.wait({consume, lost}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if run.detaching:  # let go, not stopped: the run goes on in its slot
                raise
            run.stop_step = await _stop(run, process, consume, lease, grace)
            return _stopped(run, consume, RunState.CANCELLED, "cancelled while running")
        if consume in done:
            try:
                return _ended(consume.result())
            except SandboxLostError as exc:
                retired = await lease.report_broken(str(exc))
                error = lease.lost_reason or str(exc)
                if not retired:
                    error = (f"{error.rstrip('.')}; the sandbox still answers, so only this "
                             "run's connection broke")
                return Outcome(RunState.LOST, error=error, started=started.is_set())
        if lost in done:
            return Outcome(RunState.LOST, error=lease.lost_reason or "sandbox lost",
                           started=started.is_set())
        run.stop_step = await _stop(run, process, consume, lease, grace)
        return _stopped(run, consume, RunState.TIMED_OUT, None)
    finally:
        run._process = None
        for task in (consume, lost):
            task.cancel()
        try:
            await asyncio.gather(consume, lost, return_exceptions=True)
        finally:
            await process.aclose()


async def escalate(process: Process, ended: asyncio.Future[Exited], grace: float) -> str:
    """SIGINT, then SIGTERM, then SIGKILL to the process group, each given ``grace``
    seconds to end it; return the step that did, "already-finished" if the process had
    ended by itself, or "sandbox-unreachable"."""
    for sig, name in _STEPS:
        try:
            delivered = await process.signal(sig)
        except (SandboxError, OSError, asyncio.TimeoutError):  # a request's timeout too
            return "sandbox-unreachable"
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(ended), grace)
        if ended.done():
            return name if delivered else "already-finished"
    return "sandbox-unreachable"


async def _stop(run: Run, process: Process, consume: asyncio.Future[Exited], lease: Lease,
                grace: float) -> str:
    """Escalate; a sandbox that cannot stop the run is retired with everything in it.

    A cancel that arrives meanwhile (a second cancel, a shutdown) waits for the escalation
    to end, then is raised: a cut escalation would leave the command going in a slot about
    to be reset and handed to another run."""
    escalation = asyncio.ensure_future(escalate(process, consume, grace))
    cancelled = await _despite_cancel(escalation)
    run.stop_step = step = escalation.result()
    if step == "sandbox-unreachable":
        lease.retire(f"it did not stop run {run.id} when told to")
    if cancelled:
        raise asyncio.CancelledError
    return step


async def _despite_cancel(awaitable: Any) -> bool:
    """Await ``awaitable`` to its end even if this task is cancelled meanwhile (it must be
    bounded in time); return whether it was. Its own exception is raised."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    return cancelled


def _stopped(run: Run, consume: asyncio.Future[Exited], state: RunState,
             error: str | None) -> Outcome:
    """The outcome of a run we stopped: ``state``, with the exit code it ended with."""
    exited = consume.result() if consume.done() and not consume.exception() else None
    if run.stop_step == "sandbox-unreachable":
        error = f"{error or 'stopped'}; the sandbox did not answer, so it was retired"
    return Outcome(state, exited.exit_code if exited else None, error,
                   workspace_empty=exited.workspace_empty if exited else None)


def _ended(exited: Exited) -> Outcome:
    if exited.reason == "not-found":
        return Outcome(RunState.ERROR, exited.exit_code, exited.error,
                       workspace_empty=exited.workspace_empty)
    if exited.reason == "timeout":  # its sandbox stopped it, past its timeout
        return Outcome(RunState.TIMED_OUT, exited.exit_code, None,
                       workspace_empty=exited.workspace_empty)
    state = RunState.SUCCEEDED if exited.exit_code == 0 else RunState.FAILED
    error = f"killed by signal {exited.signal}" if exited.signal else exited.error
    return Outcome(state, exited.exit_code, error, workspace_empty=exited.workspace_empty)


async def _consume(run: Run, process: Process, started: asyncio.Event) -> Exited:
    async for event in process:
        if isinstance(event, Output):
            run._output(event.stream, event.data)
        elif isinstance(event, Started):
            run.pgid = event.pgid
            started.set()
        elif isinstance(event, Exited):
            return event
    raise SandboxLostError(f"Sandbox {run.sandbox} ended the stream without an exit status.")


async def _upload(run: Run, lease: Lease) -> dict[str, FileInfo]:
    """Copy the run's inputs in; return them as listed afterwards (they are no artifacts)."""
    for local, remote in run.spec.uploads:
        source = Path(local)
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"--upload {local}: no such file or folder here")
        for path in files:
            target = remote if path == source else f"{remote}/{path.relative_to(source).as_posix()}"
            await asyncio.wait_for(lease.sandbox.upload(lease.index, path, target), TRANSFER_TIMEOUT)
    if not run.spec.uploads:
        return {}
    listed = await asyncio.wait_for(lease.sandbox.list_files(lease.index), TRANSFER_TIMEOUT)
    return {f.path: f for f in listed}


async def _download(run: Run, lease: Lease) -> None:
    for remote, local in run.spec.downloads:
        try:
            await asyncio.wait_for(lease.sandbox.download(lease.index, remote, Path(local)),
                                   TRANSFER_TIMEOUT)
        except _TRANSFER_ERRORS as exc:
            run._notice(f"--download {remote}: not copied ({exc}).")


async def _collect(run: Run, lease: Lease, profile: Profile, artifacts_dir: Path,
                   inputs: dict[str, FileInfo]) -> None:
    if run.started_at is None:
        return
    try:
        run.artifacts = await asyncio.wait_for(
            artifacts.collect(lease.sandbox, lease.index, run.started_at, artifacts_dir / run.id,
                              profile.artifact_limit_mb, inputs), TRANSFER_TIMEOUT)
    except _TRANSFER_ERRORS as exc:
        run._notice(f"The run's artifacts could not be collected ({exc or type(exc).__name__}).")
