"""`Manager`: the async core — pools per profile, the run registry, and each run's drive.

One cell's path: ``submit(spec)`` → ``pool.acquire`` → ``sandbox.exec`` → chunks into the
run's log and listeners → ``pool.release``. Everything here runs on one event loop (the
kernel bridge's thread); other threads reach it through `sandbox_magics.kernel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._paths import kernel_dir, reap_dead_kernels, user_base
from .backends import Backend, make_backend
from .backends.base import ExecRequest, Exited, Output, Started
from .exceptions import ClosedError, ProfileError, SandboxError, SandboxLostError, UnknownProfileError
from .pool import Lease, Pool, PoolEvent
from .profiles import Profile
from .runs import LogBuffer, Run, RunRegistry, RunSpec, RunState, artifacts
from .runs.run import Listener

CANCEL_GRACE = 2.0
CANCEL_RETRY = 0.05
TRANSFER_TIMEOUT = 300.0
EXEC_SLACK = 30.0
_TRANSFER_ERRORS = (SandboxError, OSError, asyncio.TimeoutError)

_EXIT_STATES = {"timeout": RunState.TIMED_OUT, "cancelled": RunState.CANCELLED,
                "not-found": RunState.ERROR}


class Manager:
    """Pools, runs and backends of one kernel. Loop-bound: call from its loop only."""

    def __init__(self, load_profiles: Callable[[], dict[str, Profile]],
                 backend_factory: Callable[[str], Backend] = make_backend,
                 pool_options: dict[str, Any] | None = None) -> None:
        self._load_profiles = load_profiles
        self._backend_factory = backend_factory
        self._pool_options = pool_options or {}
        self.backends: dict[str, Backend] = {}
        self.pools: dict[str, Pool] = {}
        self.runs = RunRegistry()
        self.listeners: list[Callable[[PoolEvent], None]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, Lease] = {}
        self._folders: dict[str, Path] = {}
        self._closed = False

    def profiles(self) -> dict[str, Profile]:
        return self._load_profiles()

    def profile(self, name: str) -> Profile:
        """The profile called ``name``; an `UnknownProfileError` lists the valid names otherwise."""
        profiles = self.profiles()
        if name not in profiles:
            raise UnknownProfileError(
                f"Unknown profile {name!r}; valid profiles are: {', '.join(sorted(profiles))}.")
        return profiles[name]

    def pool(self, profile: Profile) -> Pool:
        if self._closed:
            raise ClosedError("The sandbox manager has been shut down; load the extension again.")
        pool = self.pools.get(profile.name)
        if pool is None:
            if profile.backend not in self.backends:
                self.backends[profile.backend] = self._backend_factory(profile.backend)
            pool = Pool(profile, self.backends[profile.backend], on_event=self._on_event,
                        **self._pool_options)
            self.pools[profile.name] = pool
            pool.start()
        elif pool.profile != profile:
            pool.update_profile(profile)
        return pool

    def _on_event(self, event: PoolEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    def submit(self, spec: RunSpec, listener: Listener | None = None) -> Run:
        """Queue ``spec`` and return its `Run` at once; the run proceeds in a task.

        ``listener`` is attached before anything (notices included) is emitted.
        """
        profile = self.profile(spec.profile)
        pool = self.pool(profile)
        run = Run(self.runs.next_id(), spec, profile.backend,
                  LogBuffer(spill_dir=str(self.kernel_folder("logs"))))
        if listener is not None:
            run.add_listener(listener)
        self.runs.add(run)
        for notice in pool.backend.notices(profile):
            run._notice(notice)
        task = asyncio.ensure_future(self._drive(run, profile, pool))
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run.id, None))
        return run

    async def _drive(self, run: Run, profile: Profile, pool: Pool) -> None:
        try:
            lease = await pool.acquire(run.spec.session, timeout=profile.acquire_timeout)
        except asyncio.CancelledError:
            run._finish(RunState.CANCELLED, error="cancelled while queued")
            return
        except SandboxError as exc:
            run._finish(RunState.ERROR, error=str(exc))
            return
        if run.spec.session and (notice := pool.session_notice(run.spec.session)):
            run._notice(notice)
        self._leases[run.id] = lease
        outcome = _Outcome(RunState.ERROR, error="the run ended without an exit status")
        try:
            run._start(lease.sandbox_id, lease.index)
            await self._upload(run, lease)
            if run.cancel_requested:
                outcome = _Outcome(RunState.CANCELLED, error="cancelled before it started")
            else:
                outcome = await self._execute(run, profile, pool, lease)
            if outcome.state is not RunState.LOST:
                await self._download(run, lease)
                if not outcome.workspace_empty:
                    await self._collect(run, lease, profile)
        except asyncio.CancelledError:
            outcome = _Outcome(RunState.CANCELLED, error="the manager shut down")
        except _TRANSFER_ERRORS as exc:
            outcome = _Outcome(RunState.ERROR,
                               error=f"file transfer failed: {exc or 'it took too long'}")
        finally:
            reset = not outcome.workspace_empty
            try:
                await asyncio.shield(pool.release(lease, reset=reset))
            except (Exception, asyncio.CancelledError):
                pass
            finally:
                self._leases.pop(run.id, None)
                run._finish(outcome.state, outcome.exit_code, outcome.error)

    async def _execute(self, run: Run, profile: Profile, pool: Pool, lease: Lease) -> _Outcome:
        """Run the command in the leased slot and say how it ended."""
        timeout = run.timeout = run.spec.timeout or profile.run_timeout
        request = ExecRequest(
            run_id=run.id, argv=(run.spec.interpreter,),
            env={**profile.env, **run.spec.env, "SANDBOX_RUN_ID": run.id},
            stdin=run.spec.code, timeout=timeout)
        exec_task = asyncio.ensure_future(self._consume(run, lease, request))
        lost_task = asyncio.ensure_future(lease.lost.wait())
        try:
            done, _ = await asyncio.wait({exec_task, lost_task},
                                         timeout=timeout + EXEC_SLACK if timeout else None,
                                         return_when=asyncio.FIRST_COMPLETED)
            if exec_task in done:
                try:
                    return _Outcome.of(exec_task.result())
                except SandboxLostError as exc:
                    pool.mark_lost(lease.slot.sandbox, str(exc))
                    return _Outcome(RunState.LOST, error=lease.slot.lost_reason or str(exc))
                except SandboxError as exc:
                    return _Outcome(RunState.ERROR, error=f"the sandbox refused the run: {exc}")
            if lost_task in done:
                return _Outcome(RunState.LOST, error=lease.slot.lost_reason)
            pool.mark_lost(lease.slot.sandbox, f"run {run.id} outlived its timeout by "
                                               f"{EXEC_SLACK:g} s without the sandbox ending it")
            return _Outcome(RunState.TIMED_OUT, error="the sandbox did not stop the run in time")
        finally:
            for task in (exec_task, lost_task):
                task.cancel()
            await asyncio.gather(exec_task, lost_task, return_exceptions=True)

    async def _upload(self, run: Run, lease: Lease) -> None:
        for local, remote in run.spec.uploads:
            source = Path(local)
            files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
            if not files:
                raise FileNotFoundError(f"--upload {local}: no such file or folder here")
            for path in files:
                target = remote if path == source else f"{remote}/{path.relative_to(source).as_posix()}"
                await asyncio.wait_for(lease.sandbox.upload(lease.index, path, target), TRANSFER_TIMEOUT)

    async def _download(self, run: Run, lease: Lease) -> None:
        for remote, local in run.spec.downloads:
            try:
                await asyncio.wait_for(lease.sandbox.download(lease.index, remote, Path(local)),
                                       TRANSFER_TIMEOUT)
            except _TRANSFER_ERRORS as exc:
                run._notice(f"--download {remote}: not copied ({exc}).")

    async def _collect(self, run: Run, lease: Lease, profile: Profile) -> None:
        if run.started_at is None:
            return
        dest = self.kernel_folder("artifacts") / run.id
        try:
            run.artifacts = await asyncio.wait_for(
                artifacts.collect(lease.sandbox, lease.index, run.started_at, dest,
                                  profile.artifact_limit_mb), TRANSFER_TIMEOUT)
        except _TRANSFER_ERRORS as exc:
            run._notice(f"The run's artifacts could not be collected ({exc or type(exc).__name__}).")

    def kernel_folder(self, name: str) -> Path:
        """This kernel's folder for ``name`` ("logs", "artifacts"); dead kernels' are reaped."""
        if name not in self._folders:
            base = user_base(name)
            reap_dead_kernels(base)
            folder = kernel_dir(base)
            folder.mkdir(parents=True, exist_ok=True)
            self._folders[name] = folder
        return self._folders[name]

    async def _consume(self, run: Run, lease: Lease, request: ExecRequest) -> Exited:
        async for event in lease.sandbox.exec(lease.index, request):
            if isinstance(event, Output):
                run._output(event.stream, event.data)
            elif isinstance(event, Started):
                run.pgid = event.pgid
            elif isinstance(event, Exited):
                return event
        raise SandboxLostError(f"Sandbox {lease.sandbox_id} ended the stream without an exit status.")

    async def cancel(self, run: Run, grace: float = CANCEL_GRACE) -> str:
        """Stop ``run``; return what it took ("dequeued", "SIGINT", "SIGTERM", ...).

        A run between acquiring its slot and starting its process is stopped before it
        starts; one that is finishing (copying files out) is left to finish.
        """
        if run.done:
            return "already-finished"
        run.cancel_requested = True
        task = self._tasks.get(run.id)
        if run.state is RunState.QUEUED and task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return "dequeued"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace * 3 + 5
        step = "not-running"
        while not run.done and loop.time() < deadline:
            lease = self._leases.get(run.id)
            if lease is None:
                break
            try:
                step = await lease.sandbox.cancel(lease.index, run.id, grace)
            except SandboxError as exc:
                self.pools[run.profile].mark_lost(lease.slot.sandbox, f"cancel failed: {exc}")
                step = "sandbox-retired"
            if step != "not-running":
                break
            await asyncio.sleep(CANCEL_RETRY)
        if task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), max(0.1, deadline - loop.time()))
        return step

    async def scale(self, profile_name: str, sandboxes: int) -> None:
        if sandboxes < 0:
            raise ProfileError(f"Cannot scale profile {profile_name!r} to {sandboxes}; give 0 or more.")
        await self.pool(self.profile(profile_name)).scale(sandboxes)

    async def end_session(self, session: str) -> list[str]:
        """End ``session`` in every pool that has it; return those pools' profiles."""
        return [name for name, pool in self.pools.items() if await pool.end_session(session)]

    def status(self) -> list[dict[str, Any]]:
        return [pool.snapshot() for pool in self.pools.values()]

    async def shutdown(self, purge: bool = False) -> None:
        """Cancel every run, stop every sandbox, close every backend; ``purge`` also
        deletes the copies of artifacts and spilled logs."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(pool.aclose() for pool in self.pools.values()), return_exceptions=True)
        self.pools.clear()
        await asyncio.gather(*(b.aclose() for b in self.backends.values()), return_exceptions=True)
        self.backends.clear()
        if purge:
            for run in self.runs:
                run.log.close()
            for folder in self._folders.values():
                shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class _Outcome:
    """How a run ended, and whether its workspace was left empty (then nothing to collect)."""

    state: RunState
    exit_code: int | None = None
    error: str | None = None
    workspace_empty: bool | None = None

    @classmethod
    def of(cls, exited: Exited) -> _Outcome:
        state = _EXIT_STATES.get(exited.reason or "")
        if state is None:
            state = RunState.SUCCEEDED if exited.exit_code == 0 else RunState.FAILED
        error = exited.error
        if state is RunState.FAILED and exited.signal:
            error = f"killed by signal {exited.signal}"
        return cls(state, exited.exit_code, error, exited.workspace_empty)
