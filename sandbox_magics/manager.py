"""`Manager`: the async core of one `Client` — its pools, backends and runs.

One cell's path: ``submit(spec)`` → a task running `runs.drive.drive` (acquire, upload,
exec, collect, release) → the run's log and listeners. Every change of a run is appended
to this kernel's `Ledger`. A detached (``--bg``) run outlives a kernel that goes away
(``shutdown(leave_detached=True)``); when a later kernel's pool adopts the sandbox that
keeps it, the run is attached (`runs.drive.attached`) and its log replayed from the first
byte. Everything here runs on one event loop (the kernel bridge's thread); other threads
reach it through `sandbox_magics.kernel`. The manager's lifecycle is a `ManagerState`;
after `shutdown` every entry point raises `ClosedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import shutil
import sys
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._paths import client_dir
from .backends import Backend, make_backend, settings_of
from .exceptions import (ClosedError, ProfileError, SandboxError, UnknownProfileError,
                         UnknownRunError, UnknownSandboxError)
from .identity import Identity
from .live import KernelSession, KernelState
from .pool import EventKind, Pool, PoolEvent, PoolStatus
from .pool import cost as pricing
from .profiles import Profile, shown_env_name
from .runs import LogBuffer, Run, RunRegistry, RunSpec, RunState, Stage
from .runs.drive import attached, drive
from .runs.ledger import Ledger, RunRecord, every_kernel
from .runs.run import Decode, Listener
from .sweeps import Sweep
from .sweeps.grid import Params
from .sweeps.sweep import Item
from .sweeps.sweep import drive as drive_sweep

CANCEL_GRACE = 2.0
SETTLE_TIMEOUT = 45.0
BUDGET_CHECK = 1.0
STAGE_SHOWN_AFTER = 2.0
"""Seconds a sandbox's start must wait for the same thing before the waiting cells say so."""
"""Seconds to wait for a pool to adopt what an earlier kernel left, before attaching."""
CLOSED = ("This sandbox client has been shut down; create a new Client "
          "(or run %reload_ext sandbox_magics).")


class ManagerState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Stopped:
    """What a shutdown stopped: ``sandboxes``, and ``runs`` unfinished runs, ``detached``
    of them ``--bg`` runs that would have outlived the kernel; ``left``: sandboxes left
    running for a later kernel (a kernel going away lets its detached runs go on); ``cost``:
    what this kernel's sandboxes cost, estimated (None: unknown)."""

    sandboxes: int = 0
    runs: int = 0
    detached: int = 0
    left: int = 0
    cost: float | None = 0.0


class Manager:
    """Pools, runs and backends of one client. Loop-bound: call from its loop only.

    ``on_run`` is called with each new `Run` (submitted or attached), ``on_sweep`` with
    each new `Sweep`, before it is used."""

    def __init__(self, load_profiles: Callable[[], dict[str, Profile]],
                 me: Identity | None = None, pool_options: dict[str, Any] | None = None,
                 grace: float = CANCEL_GRACE, on_run: Callable[[Run], None] | None = None,
                 state_root: Path | None = None,
                 on_sweep: Callable[[Sweep], None] | None = None) -> None:
        self._load_profiles = load_profiles
        self.identity = me or Identity()
        self._pool_options = pool_options or {}
        self.grace = grace
        self.state = ManagerState.OPEN
        self.backends: dict[tuple[str, Hashable], Backend] = {}
        self.pools: dict[str, Pool] = {}
        self._state_root = state_root
        self.ledger = Ledger(self.identity.kernel_id, state_root)
        recorded = self.ledger.compact()
        self.previous = {i: r for i, r in recorded.items() if r.process != self.identity.process}
        self.runs = RunRegistry(first=1 + max(map(_number, recorded), default=0))
        self._on_run = on_run
        self._on_sweep = on_sweep
        self.listeners: list[Callable[[PoolEvent], None]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self.sweeps: dict[str, Sweep] = {}
        self._sweep_tasks: dict[str, set[asyncio.Task[None]]] = {}
        self.budget: float | None = None
        self._hard: asyncio.Task[None] | None = None
        self._folders: dict[str, Path] = {}
        self._noticed: set[str] = set()
        self._ledger_failed = False
        self._checked: dict[str, tuple[Profile, Hashable]] = {}
        self.kernels: dict[tuple[str, str], KernelSession] = {}
        self._stage_timers: dict[tuple[str, str | None], asyncio.TimerHandle] = {}
        """Per start (profile, sandbox): the timer that tells the waiting cells its stage
        once that has lasted; it leaves when it fires or a newer stage replaces it."""

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
                    budget=lambda: self.budget_spent(profile.name), **self._pool_options)
        self.pools[profile.name] = pool
        pool.start()
        watcher = asyncio.ensure_future(self._attach_when_settled(pool))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return pool

    async def _attach_when_settled(self, pool: Pool) -> None:
        await pool.settled(SETTLE_TIMEOUT)
        if self.state is ManagerState.OPEN:
            self._attach_kept(pool)

    def _attach_kept(self, pool: Pool) -> None:
        """Attach every detached run ``pool``'s adopted sandboxes keep: each goes on as a
        `Run` of this kernel, its log replayed from the first byte."""
        for run_id in pool.kept():
            if run_id in self.runs:
                continue
            lease = pool.claim(run_id)
            record = self.previous.get(run_id)
            spec = RunSpec(code="", interpreter=record.interpreter if record else "unknown",
                           profile=pool.profile.name, timeout=record.timeout if record else None,
                           name=record.name if record else None, detach=True,
                           raise_error=record.raise_error if record else True)
            run = self._new_run(run_id, spec, pool.profile)
            run.timeout = spec.timeout
            run._assign(lease.sandbox_id, lease.index, lease.sandbox.id,
                        started_at=record.started if record else None, rate=lease.rate)
            if record is not None:
                run.queued_at = record.queued
            run._notice(f"Run {run_id} was {_started_by(record, self.identity)}; attached: its "
                        "output follows from the first byte.")
            self._start(run, attached(run, pool.profile, lease,
                                      self.client_folder("artifacts"), self.grace))

    def _new_run(self, run_id: str, spec: RunSpec, profile: Profile,
                 listener: Listener | None = None, decode: Decode | None = None) -> Run:
        """A `Run` of this kernel, registered and recorded in the ledger at each change."""
        run = Run(run_id, spec, profile.backend,
                  LogBuffer(spill_dir=str(self.client_folder("logs")),
                            disk_limit=int(profile.log_limit_mb * 2**20)), decode)
        if listener is not None:
            run.add_listener(listener)
        run.add_listener(self._record)
        if self._on_run is not None:
            self._on_run(run)
        self.runs.add(run)
        return run

    def _record(self, run: Run, stream: str, _data: bytes) -> None:
        if stream == "state":
            try:
                self.ledger.append(RunRecord.of(run, self.identity))
            except OSError as exc:
                if not self._ledger_failed:
                    self._ledger_failed = True
                    run._notice(f"Runs cannot be recorded for a later kernel ({exc}); they "
                                "still run, but a restarted kernel will not find them.")

    def _start(self, run: Run, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks[run.id] = task
        task.add_done_callback(lambda _: self._ended(run, task))

    def _on_event(self, event: PoolEvent) -> None:
        if event.kind is EventKind.STAGE:  # a new stage of a start supersedes its last
            key = (event.profile, event.sandbox)
            if (superseded := self._stage_timers.pop(key, None)) is not None:
                superseded.cancel()
            self._stage_timers[key] = asyncio.get_running_loop().call_later(
                STAGE_SHOWN_AFTER, self._stage_lasted, event)
        elif event.kind is EventKind.DRAINING:  # a kernel holds its slot: it must let go
            for kernel in self.kernels.values():
                if kernel.run is not None and not kernel.run.done and \
                        kernel.run.sandbox == event.sandbox and kernel.profile.name == event.profile:
                    kernel.release(f"its sandbox {event.sandbox} was scaled down")
        for listener in list(self.listeners):
            listener(event)

    def _stage_lasted(self, event: PoolEvent) -> None:
        """Tell the cells waiting for a sandbox of the profile what its start waits for,
        if it still waits for that (a stage shorter than `STAGE_SHOWN_AFTER` is not news)."""
        self._stage_timers.pop((event.profile, event.sandbox), None)
        pool = self.pools.get(event.profile)
        if pool is None or not any(box.id == event.sandbox and box.stage == event.detail
                                   for box in pool.status().sandboxes):
            return
        for run in self.runs:
            if run.state is RunState.QUEUED and run.profile == event.profile:
                run._notice(f"Waiting for sandbox {event.sandbox} to start: {event.detail}.")

    def submit(self, spec: RunSpec, listener: Listener | None = None,
               decode: Decode | None = None) -> Run:
        """Queue ``spec`` and return its `Run` at once; the run proceeds in a task.

        ``listener`` is attached before anything (notices included) is emitted; ``decode``
        turns the process's output into the run's (a kernel session's frames).

        Raises:
            SandboxError: ``spec``'s session holds a live kernel (it takes Python cells only).
        """
        self._check_open()
        profile = self.profile(spec.profile)
        kernel = self.kernels.get((profile.name, spec.session or ""))
        if not spec.interactive and kernel is not None and kernel.state is not KernelState.STOPPED:
            raise SandboxError(
                f"Session {spec.session!r} holds a live Python kernel, which takes its cells "
                f"(%%sandbox python --kernel --session {spec.session}); end it first with "
                f"%sandbox end-session {spec.session}.")
        pool = self.pool(profile)
        run = self._new_run(self.runs.next_id(), spec, profile, listener, decode)
        if profile.name not in self._noticed:
            self._noticed.add(profile.name)
            for notice in pool.backend.notices(profile):
                run._notice(notice)
        if problem := env_problem({**profile.env, **spec.env}):
            run._finish(RunState.ERROR, error=problem)
            return run
        self._start(run, drive(run, profile, pool, self.client_folder("artifacts"), self.grace))
        return run

    def kernel(self, profile_name: str, session: str, python: str) -> KernelSession:
        """The kernel session ``session`` of profile ``profile_name``, made on first use
        (its kernel starts with its first cell). ``python`` runs it; on the local backend
        the sandbox uses this kernel's own Python."""
        self._check_open()
        profile = self.profile(profile_name)
        if profile.backend == "local":
            python = sys.executable
        kernel = self.kernels.get((profile.name, session))
        if kernel is None or (kernel.python != python and kernel.state is KernelState.STOPPED):
            kernel = self.kernels[(profile.name, session)] = KernelSession(
                session, profile, python, lambda spec, decode: self.submit(spec, decode=decode),
                self.cancel)
        kernel.profile = profile
        return kernel

    def cost(self) -> float | None:
        """What this kernel's sandboxes cost so far, estimated, over the pools whose price
        is known (None if no pool's is)."""
        known = [c for c in (pool.cost() for pool in self.pools.values()) if c is not None]
        return sum(known) if known or not self.pools else None

    def budget_spent(self, profile: str) -> str | None:
        """Why no new sandbox of ``profile`` may start (the kernel's budget or the
        profile's ``max_cost`` is spent), as the sentence its waiting runs fail with;
        None while money is left."""
        pool = self.pools.get(profile)
        if pool is not None and pricing.over_budget(pool.cost(), pool.profile.max_cost):
            return (f"Profile {profile!r} has spent its max_cost of "
                    f"{pricing.money(pool.profile.max_cost)} ({pricing.money(pool.cost())} so "
                    "far); no new sandbox of it starts. Raise max_cost in the profiles file.")
        spent = self.cost()
        if not pricing.over_budget(spent, self.budget):
            return None
        parts = ", ".join(f"{name} {pricing.money(p.cost())}" for name, p in self.pools.items()
                          if p.cost())
        return (f"The budget of {pricing.money(self.budget)} for this kernel is spent "
                f"({pricing.money(spent)} so far: {parts}); no new sandbox starts. Raise it "
                "with %sandbox budget DOLLARS.")

    def set_budget(self, dollars: float | None, hard: bool = False) -> None:
        """Spend at most ``dollars`` on this kernel's sandboxes (None: no limit): once
        reached no new sandbox starts; with ``hard`` the runs going are cancelled too."""
        self._check_open()
        if dollars is not None and not dollars >= 0:
            raise ProfileError(f"A budget is a number of dollars, 0 or more; got {dollars!r}.")
        self.budget = dollars
        if self._hard is not None:
            self._hard.cancel()
            self._hard = None
        if hard and dollars is not None:
            self._hard = asyncio.ensure_future(self._enforce_hard())
            self._watchers.add(self._hard)
            self._hard.add_done_callback(self._watchers.discard)

    async def _enforce_hard(self) -> None:
        """Once the budget is spent, cancel every run still going and stop every sandbox."""
        while not pricing.over_budget(self.cost(), self.budget):
            await asyncio.sleep(BUDGET_CHECK)
        for run in [r for r in self.runs if not r.done]:
            run._notice(f"The budget of {pricing.money(self.budget)} is spent and it is hard: "
                        f"run {run.id} is cancelled.")
            await self.cancel(run)
        await asyncio.gather(*(pool.scale(0) for pool in self.pools.values()),
                             return_exceptions=True)

    def map(self, spec: RunSpec, params: list[Params], name: str | None = None,
            retries: int = 0, fail_fast: bool = False,
            max_parallel: int | None = None) -> Sweep:
        """Run ``spec`` once per parameter set (each one's values as environment variables,
        ``SANDBOX_PARAMS`` and a ``params.json``); return the `Sweep` at once."""
        self._check_open()
        self.profile(spec.profile)
        sweep_id = f"s{len(self.sweeps) + 1}"
        sweep = Sweep(sweep_id, name or spec.name or sweep_id, spec, params, retries,
                      fail_fast, max_parallel)
        if self._on_sweep is not None:
            self._on_sweep(sweep)
        self.sweeps[sweep_id] = sweep
        self._drive_sweep(sweep, sweep.items)
        return sweep

    def _drive_sweep(self, sweep: Sweep, items: list[Item]) -> None:
        task = asyncio.ensure_future(drive_sweep(sweep, items, self.submit, self.cancel))
        tasks = self._sweep_tasks.setdefault(sweep.id, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def cancel_sweep(self, sweep: Sweep) -> None:
        """Cancel every item of ``sweep`` not ended yet."""
        tasks = list(self._sweep_tasks.get(sweep.id, ()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sweep._finish()

    def retry_sweep(self, sweep: Sweep) -> list[Item]:
        """Run again the items of ``sweep`` that ended without succeeding; return them."""
        self._check_open()
        items = sweep.failed
        for item in items:
            item.cancelled = False
        if items:
            sweep._reopen()
            self._drive_sweep(sweep, items)
        return items

    async def attach(self, key: str) -> Run:
        """The run ``key`` (id or name) of the kernel this one restarted, attached: its
        sandbox adopted, its log replayed from the first byte, then followed; a run of
        this kernel as it is.

        Raises:
            UnknownRunError: no such run, it ended with its kernel, or no sandbox keeps it.
        """
        self._check_open()
        with contextlib.suppress(UnknownRunError):
            return self.runs.get(key)
        record = self._find_record(key)
        if not record.going or not record.detach:
            raise UnknownRunError(
                f"Run {record.id} cannot be attached: it is {record.shown_state(self.identity)}"
                ", and nothing keeps it (only a --bg run outlives its kernel).")
        pool = self.pool(self.profile(record.profile))
        await pool.settled(SETTLE_TIMEOUT)
        self._attach_kept(pool)
        if record.id in self.runs:
            return self.runs.get(record.id)
        raise UnknownRunError(
            f"Run {record.id} is no longer kept by a sandbox of profile {record.profile!r} "
            f"(sandbox {record.sandbox}): it was stopped, or it ended and its sandbox went "
            "when no kernel had come for the profile's heartbeat_window.")

    def _find_record(self, key: str) -> RunRecord:
        for record in reversed(self.previous.values()):
            if record.id == key or record.name == key:
                return record
        raise UnknownRunError(f"No run with id or name {key!r} in this kernel or the one it "
                              "restarted; %sandbox runs lists them (--all: those of your "
                              "other kernels, which only they can attach).")

    def history(self, all_kernels: bool = False) -> list[dict[str, Any]]:
        """Rows of the run history: this kernel's runs, then those of the kernel this one
        restarted that are not here; ``all_kernels`` adds the live ``--bg`` runs of every
        other kernel of this user."""
        here = {run.id for run in self.runs}
        rows = [run.as_row() for run in self.runs]
        rows += [_row(r, self.identity) for r in self.previous.values() if r.id not in here]
        if all_kernels:
            rows += [_row(r, self.identity) for r in every_kernel(self._state_root)
                     if r.kernel != self.identity.kernel_id and r.going and r.detach]
        return rows

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

    def keep_idle(self, profile: str) -> int:
        """Reset the idle clock of ``profile``'s idle sandboxes once; return how many."""
        self._check_open()
        return self.pool(self.profile(profile)).keep_idle()

    def stop_idle(self, profile: str) -> int:
        """Stop now the idle sandboxes of ``profile`` due to stop; return how many."""
        self._check_open()
        return self.pool(self.profile(profile)).stop_idle()

    async def end_session(self, session: str) -> list[str]:
        """End ``session`` in every pool that has it; return those pools' profiles."""
        self._check_open()
        for (_, name), kernel in self.kernels.items():
            if name == session:
                await kernel.stop("its session was ended (%sandbox end-session)")
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

    async def shutdown(self, purge: bool = False, leave_detached: bool = False) -> Stopped:
        """Cancel every run, stop every sandbox, close every backend; ``purge`` also
        deletes the copies of artifacts and spilled logs. Detached runs are stopped too
        (those an earlier kernel left included), unless ``leave_detached`` (the kernel is
        going away): then they go on, and their sandboxes with them, for a later kernel to
        attach. Safe to call twice."""
        if self.state is ManagerState.CLOSED:
            return Stopped()
        if not leave_detached:
            await self._adopt_left_runs()
        self.state = ManagerState.CLOSED
        await asyncio.gather(*(k.stop("its client was shut down") for k in self.kernels.values()),
                             return_exceptions=True)
        for kernel in self.kernels.values():
            kernel.close()
        for timer in self._stage_timers.values():
            timer.cancel()
        sweeps = [task for tasks in self._sweep_tasks.values() for task in tasks]
        for task in sweeps:  # first, so that no item starts a run meanwhile
            task.cancel()
        await asyncio.gather(*sweeps, return_exceptions=True)
        sandboxes = sum(len(pool.status().sandboxes) for pool in self.pools.values())
        going = [self.runs.get(run_id) for run_id in self._tasks]
        left = [run for run in going if leave_detached and run.spec.detach
                and run.state is RunState.RUNNING and run.stage is Stage.RUNNING]
        for run in going:  # states kept if asyncio drops a cancel
            if run in left:
                run._request_detach()
            else:
                run._request_cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*tasks, *self._watchers, return_exceptions=True)
        leave = {run.id for run in left}
        if leave_detached:
            leave.update(run_id for pool in self.pools.values() for run_id in pool.kept())
        closed = await asyncio.gather(*(pool.aclose(leave) for pool in self.pools.values()),
                                      return_exceptions=True)
        spent = self.cost()
        self.pools.clear()
        await asyncio.gather(*(b.aclose() for b in self.backends.values()), return_exceptions=True)
        self.backends.clear()
        if purge:
            for run in self.runs:
                run.log.close()
            for folder in self._folders.values():
                shutil.rmtree(folder, ignore_errors=True)
        kept = sum(len(c) for c in closed if isinstance(c, list))
        return Stopped(sandboxes=sandboxes - kept, runs=len(going) - len(left),
                       detached=sum(run.spec.detach for run in going if run not in left),
                       left=kept, cost=spent)

    async def _adopt_left_runs(self) -> None:
        """Start the pools of the profiles the previous kernel used (they adopt what it
        left: sandboxes, and detached runs going, which are attached), so that a shutdown
        stops those too."""
        profiles = {r.profile for r in self.previous.values()} - set(self.pools)
        for name in profiles:
            with contextlib.suppress(SandboxError):
                pool = self.pool(self.profile(name))
                await pool.settled(SETTLE_TIMEOUT)
                self._attach_kept(pool)


def _number(run_id: str) -> int:
    """The number of a run id ``r<n>`` (0 for another id)."""
    return int(run_id[1:]) if run_id[:1] == "r" and run_id[1:].isdigit() else 0


def _started_by(record: RunRecord | None, me: Identity) -> str:
    if record is None:
        return "started by an earlier kernel"
    return record.shown_state(me).removeprefix("running (").rstrip(")")


def _row(record: RunRecord, me: Identity) -> dict[str, Any]:
    """A history row of a run an earlier kernel recorded."""
    return {
        "id": record.id, "name": record.name, "profile": record.profile,
        "backend": record.backend, "interpreter": record.interpreter,
        "session": record.session, "sandbox": record.sandbox, "slot": record.slot,
        "state": record.shown_state(me), "exit_code": record.exit_code,
        "queued": record.queued, "started": record.started, "ended": record.ended,
        "wait_s": (record.started or record.ended or record.queued) - record.queued,
        "run_s": (record.ended - record.started) if record.ended and record.started else None,
        "output_bytes": None, "log_dropped_bytes": None, "cost": None, "error": record.error,
    }


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
