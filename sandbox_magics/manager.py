"""`Manager`: the async core of one `Client` — its pools, backends and runs.

One cell's path: ``submit(spec)`` → a task running `runs.drive.drive` (acquire, upload,
exec, collect, release) → the run's log and listeners. Everything here runs on one event
loop (the kernel bridge's thread); other threads reach it through `sandbox_magics.kernel`.
The manager's lifecycle is a `ManagerState`; after `shutdown` every entry point raises
`ClosedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import shutil
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, Literal

from ._paths import client_dir
from .backends import Backend, make_backend, settings_of
from .exceptions import ClosedError, ProfileError, UnknownProfileError, UnknownSandboxError
from .identity import Identity
from .pool import Pool, PoolEvent, PoolStatus
from .profiles import Profile, shown_env_name
from .runs import LogBuffer, Run, RunRegistry, RunSpec, RunState
from .runs.drive import drive
from .runs.run import Listener

CANCEL_GRACE = 2.0
CLOSED = ("This sandbox client has been shut down; create a new Client "
          "(or run %reload_ext sandbox_magics).")


class ManagerState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Manager:
    """Pools, runs and backends of one client. Loop-bound: call from its loop only."""

    def __init__(self, load_profiles: Callable[[], dict[str, Profile]],
                 me: Identity | None = None, pool_options: dict[str, Any] | None = None,
                 grace: float = CANCEL_GRACE) -> None:
        self._load_profiles = load_profiles
        self.identity = me or Identity()
        self._pool_options = pool_options or {}
        self.grace = grace
        self.state = ManagerState.OPEN
        self.backends: dict[tuple[str, Hashable], Backend] = {}
        self.pools: dict[str, Pool] = {}
        self.runs = RunRegistry()
        self.listeners: list[Callable[[PoolEvent], None]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._folders: dict[str, Path] = {}
        self._noticed: set[str] = set()
        self._checked: dict[str, tuple[Profile, Hashable]] = {}

    def _check_open(self) -> None:
        if self.state is ManagerState.CLOSED:
            raise ClosedError(CLOSED)

    def profiles(self) -> dict[str, Profile]:
        return self._load_profiles()

    def profile(self, name: str) -> Profile:
        """The profile called ``name``, its engine settings checked.

        Raises:
            UnknownProfileError: no such profile (the sentence lists the valid names).
            ProfileError: its engine table has an unknown key or a bad value.
        """
        profiles = self.profiles()
        if name not in profiles:
            raise UnknownProfileError(
                f"Unknown profile {name!r}; valid profiles are: {', '.join(sorted(profiles))}.")
        self._settings(profiles[name])
        return profiles[name]

    def _settings(self, profile: Profile) -> Hashable:
        """``profile``'s checked engine settings, checked once per loaded profile (the
        profile cache hands out the same object until the file or environment changes)."""
        cached = self._checked.get(profile.name)
        if cached is None or cached[0] is not profile:
            cached = self._checked[profile.name] = (profile, settings_of(profile))
        return cached[1]

    def pool(self, profile: Profile) -> Pool:
        """The pool of ``profile``, started on first use; a changed profile is applied to it."""
        self._check_open()
        pool = self.pools.get(profile.name)
        if pool is not None and pool.profile.backend == profile.backend:
            if pool.profile != profile:
                pool.update_profile(profile)
            return pool
        if pool is not None:
            raise ProfileError(
                f"Profile {profile.name!r} moved from the {pool.profile.backend} backend to "
                f"{profile.backend} while its pool runs; run %sandbox shutdown first.")
        key = (profile.backend, self._settings(profile))
        if key not in self.backends:
            self.backends[key] = make_backend(profile, self.identity)
        pool = Pool(profile, self.backends[key], self.identity, on_event=self._on_event,
                    **self._pool_options)
        self.pools[profile.name] = pool
        pool.start()
        return pool

    def _on_event(self, event: PoolEvent) -> None:
        for listener in list(self.listeners):
            listener(event)

    def submit(self, spec: RunSpec, listener: Listener | None = None) -> Run:
        """Queue ``spec`` and return its `Run` at once; the run proceeds in a task.

        ``listener`` is attached before anything (notices included) is emitted.
        """
        self._check_open()
        profile = self.profile(spec.profile)
        pool = self.pool(profile)
        run = Run(self.runs.next_id(), spec, profile.backend,
                  LogBuffer(spill_dir=str(self.client_folder("logs")),
                            disk_limit=int(profile.log_limit_mb * 2**20)))
        if listener is not None:
            run.add_listener(listener)
        self.runs.add(run)
        if profile.name not in self._noticed:
            self._noticed.add(profile.name)
            for notice in pool.backend.notices(profile):
                run._notice(notice)
        if problem := env_problem({**profile.env, **spec.env}):
            run._finish(RunState.ERROR, error=problem)
            return run
        task = asyncio.ensure_future(
            drive(run, profile, pool, self.client_folder("artifacts"), self.grace))
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._ended(run, task))
        return run

    def _ended(self, run: Run, task: asyncio.Task[None]) -> None:
        """Forget a run's task; a run it left unfinished (its task was cancelled before it
        first ran, or failed) ends now, so nothing waits for it forever."""
        self._tasks.pop(run.id, None)
        if run.done:
            return
        if task.cancelled():
            run._finish(RunState.CANCELLED, error="cancelled while queued")
        else:
            exc = task.exception()
            run._finish(RunState.ERROR, error=f"the run's task failed ({type(exc).__name__}: {exc})")

    def client_folder(self, name: str) -> Path:
        """This client's folder for ``name`` ("logs", "artifacts")."""
        if name not in self._folders:
            folder = client_dir(name, self.identity.client_id)
            folder.mkdir(parents=True, exist_ok=True)
            self._folders[name] = folder
        return self._folders[name]

    async def cancel(self, run: Run) -> str:
        """Stop ``run`` at whatever stage it is; return what it took ("dequeued",
        "SIGINT", "SIGTERM", "SIGKILL", "stopped while uploading", ...)."""
        if run.done:
            return "already-finished"
        run._request_cancel()
        stage = run.stage.value
        task = self._tasks.get(run.id)
        if task is None:
            return "already-finished"
        task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), self.grace * 3 + 10)
        if not run.done:
            return f"still stopping (it was {stage})"
        if run.stop_step:
            return run.stop_step
        return "dequeued" if stage == "queued" else f"stopped while {stage}"

    async def scale(self, profile_name: str, sandboxes: int | Literal["auto"] | None) -> None:
        """Keep ``sandboxes`` sandboxes of the profile; None or "auto": autoscale between
        its bounds."""
        self._check_open()
        await self.pool(self.profile(profile_name)).scale(sandboxes)

    async def end_session(self, session: str) -> list[str]:
        """End ``session`` in every pool that has it; return those pools' profiles."""
        self._check_open()
        return [name for name, pool in self.pools.items() if await pool.end_session(session)]

    async def sandbox_log(self, name: str) -> str:
        """The engine's log of sandbox ``name`` (live or recently retired) in any pool.

        Raises:
            UnknownSandboxError: no pool has a sandbox of that name.
        """
        self._check_open()
        for pool in self.pools.values():
            with contextlib.suppress(UnknownSandboxError):
                return await pool.sandbox_log(name)
        raise UnknownSandboxError(
            f"No sandbox {name!r} in this client's pools; %sandbox status lists them.")

    def status(self) -> list[PoolStatus]:
        """Every pool now, as the views show it."""
        self._check_open()
        return [pool.status() for pool in self.pools.values()]

    async def shutdown(self, purge: bool = False) -> None:
        """Cancel every run, stop every sandbox, close every backend; ``purge`` also
        deletes the copies of artifacts and spilled logs. Safe to call twice."""
        if self.state is ManagerState.CLOSED:
            return
        self.state = ManagerState.CLOSED
        tasks = list(self._tasks.values())
        for run_id in self._tasks:
            self.runs.get(run_id)._request_cancel()  # kept if asyncio drops a cancel
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


def env_problem(env: Mapping[str, object]) -> str | None:
    """Why ``env`` cannot be given to a process, as a sentence that names the variable but
    never shows its value (it may be a secret, and a run's error is shown everywhere); None
    if it can."""
    for name, value in env.items():
        if not isinstance(name, str) or not name or "=" in name or "\x00" in name:
            return (f"environment variable name {shown_env_name(name)} cannot be given to a "
                    "process: a name must be non-empty text without '=' or a NUL character")
        if not isinstance(value, str):
            return (f"the value of environment variable {name!r} must be text, "
                    f"not {type(value).__name__}")
        if "\x00" in value:
            return (f"the value of environment variable {name!r} has a NUL character, which "
                    "no process can be given (the value is not shown); remove it")
        try:
            value.encode()
        except UnicodeEncodeError:
            return (f"the value of environment variable {name!r} is not valid Unicode text "
                    "(the value is not shown); pass text without lone surrogates")
    return None
