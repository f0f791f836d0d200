"""`Client`: the Python API — the manager on its own loop thread, sync and async twins.

Each operation is written once as a coroutine on the manager's loop; the blocking form
waits for it with a bounded timeout, the ``a``-prefixed form awaits it from any loop::

    from sandbox_magics import Client
    client = Client()
    run = client.run("echo hi", "bash")          # blocks; run.stdout == "hi\\n"
    run = await client.arun("print(1)", "python")
    client.shutdown()
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import enum
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ..exceptions import ClosedError, UnknownRunError
from ..identity import Identity
from ..manager import CLOSED, Manager, Stopped
from ..pool import PoolStatus
from ..profiles import Profile, ProfileCache
from ..runs import Run, RunSpec
from ..runs.registry import history_frame
from ..runs.run import Listener
from ..sweeps import Sweep, from_rows, grid
from ..sweeps.sweep import ITEM_STATES
from .live_cell import Kernel
from .loop import LoopThread

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")
CALL_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 120.0
ATTACH_TIMEOUT = 120.0


class ClientState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Client:
    """Runs commands in pooled sandboxes.

    Every client has an id of its own (``client.id``) that names its sandboxes, workspaces
    and folders, so two clients never share one. After `shutdown` every method raises
    `ClosedError`.

    Args:
        profiles_file: a TOML profiles file (default: ``$SANDBOX_MAGICS_PROFILES`` or none).
        pool_options: keyword arguments for every `Pool` (``tick``, ``cooldown``).
    """

    def __init__(self, profiles_file: str | os.PathLike[str] | None = None, *,
                 pool_options: dict[str, Any] | None = None) -> None:
        self.profiles_file = profiles_file
        self.identity = Identity()
        self.state = ClientState.OPEN
        self._profile_cache = ProfileCache()
        self._loop = LoopThread()
        self._manager = Manager(self._profiles, self.identity, pool_options, on_run=self._wire,
                                on_sweep=self._wire_sweep)
        atexit.register(_shutdown_at_exit, weakref.ref(self))
        # Also before any atexit handler: Modal's SDK stops its event loop in one, registered
        # when a Modal pool first imports it (after this), and no sandbox could be terminated
        # after that. Threading's exit hooks run first (concurrent.futures uses them).
        try:
            threading._register_atexit(_shutdown_at_exit, weakref.ref(self))  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):
            pass

    def __repr__(self) -> str:
        detail = "closed" if self.state is ClientState.CLOSED else f"{len(self._manager.runs)} runs"
        return f"<sandbox_magics.Client {self.id} {detail}>"

    @property
    def id(self) -> str:
        return self.identity.client_id

    def _profiles(self) -> dict[str, Profile]:
        return self._profile_cache.get(self.profiles_file)

    @property
    def manager(self) -> Manager:
        """The async core; use it only from coroutines run by this client's loop."""
        return self._manager

    def profile(self, name: str) -> Profile:
        self._check_open()
        return self._manager.profile(name)

    def profiles(self) -> pd.DataFrame:
        """Every profile as a DataFrame, one row per profile (secret names only)."""
        self._check_open()
        import pandas as pd
        rows = [p.as_row() for p in self._profiles().values()]
        return pd.DataFrame(rows).set_index("name")

    def _spec(self, code: str, interpreter: str, profile: str, timeout: float | None,
              env: Mapping[str, str] | None, session: str | None, name: str | None,
              uploads: Sequence[tuple[str, str]], downloads: Sequence[tuple[str, str]],
              raise_error: bool, detach: bool) -> RunSpec:
        return RunSpec(code=code, interpreter=interpreter, profile=profile, timeout=timeout,
                       env=dict(env or {}), session=session, name=name,
                       uploads=tuple(uploads), downloads=tuple(downloads),
                       raise_error=raise_error, detach=detach)

    def _check_open(self) -> None:
        """Raise `ClosedError` once the client is shut down (before any coroutine is made)."""
        if self.state is ClientState.CLOSED:
            raise ClosedError(CLOSED)

    def _wire(self, run: Run) -> None:
        """Make ``run.cancel()`` reach the manager's loop from any thread."""
        run._cancel = lambda: self.cancel(run)

    def _wire_sweep(self, sweep: Sweep) -> None:
        """Make ``sweep.cancel()`` and ``sweep.retry_failed()`` reach the manager's loop."""
        sweep._cancel = lambda: self._loop.run(self._manager.cancel_sweep(sweep), CALL_TIMEOUT)
        sweep._retry = lambda: self._loop.run(
            self._call(self._manager.retry_sweep, sweep), CALL_TIMEOUT)

    def map(self, code: str, interpreter: str = "bash", *,
            params: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]] | pd.DataFrame,
            zip: bool = False, name: str | None = None, retries: int = 0,
            fail_fast: bool = False, max_parallel: int | None = None,
            **options: Any) -> Sweep:
        """Run ``code`` once per parameter set and return the `Sweep` at once.

        ``params`` is a grid (``{"lr": [1e-4, 3e-4], "seed": range(5)}``: every
        combination, or with ``zip`` the i-th values together) or rows (a list of dicts, a
        DataFrame). Each item gets its values as environment variables, ``SANDBOX_PARAMS``
        (JSON) and a ``params.json`` in its workspace; it is named ``name[k=v,...]``.
        ``retries``: runs again an item whose command failed; ``fail_fast``: cancels the rest
        at the first item that fails for good; ``max_parallel``: items in flight at most.
        The other options are `submit`'s, for each item.

        Raises:
            SweepError: the grid is empty, malformed or too large (nothing runs).
        """
        self._check_open()
        if isinstance(params, Mapping):
            sets = grid([(k, [_text(v) for v in values]) for k, values in params.items()], zip)
        else:
            sets = from_rows(params, "params")
        spec = self._spec(code, interpreter, options.pop("profile", "default"),
                          options.pop("timeout", None), options.pop("env", None),
                          options.pop("session", None), None, options.pop("uploads", ()),
                          options.pop("downloads", ()), options.pop("raise_error", True), False)
        if options:
            raise TypeError(f"Client.map() got unexpected options: {', '.join(options)}")
        return self._loop.run(self._call(self._manager.map, spec, sets, name, retries,
                                         fail_fast, max_parallel), CALL_TIMEOUT)

    def budget(self, dollars: float | None, hard: bool = False) -> None:
        """Spend at most ``dollars`` on this kernel's sandboxes (None: no limit). Once the
        estimated cost reaches it no new sandbox starts and runs waiting for one fail with
        a sentence saying so; runs going go on, unless ``hard`` (then they are cancelled
        and the sandboxes stopped)."""
        self._check_open()
        self._loop.run(self._call(self._manager.set_budget, dollars, hard), CALL_TIMEOUT)

    def keep_idle(self, profile: str) -> int:
        """Keep ``profile``'s idle sandboxes warm: their idle clock starts again, once;
        return how many."""
        self._check_open()
        return self._loop.run(self._call(self._manager.keep_idle, profile), CALL_TIMEOUT)

    def stop_idle(self, profile: str) -> int:
        """Stop now ``profile``'s idle sandboxes that the pool would stop for being idle;
        return how many."""
        self._check_open()
        return self._loop.run(self._call(self._manager.stop_idle, profile), CALL_TIMEOUT)

    @staticmethod
    async def _call(function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the manager's loop (the manager is loop-bound)."""
        return function(*args)

    def cost(self) -> float | None:
        """What this kernel's sandboxes cost so far, estimated (None: unknown)."""
        self._check_open()
        return self._loop.run(self._call(self._manager.cost), CALL_TIMEOUT)

    def kernel(self, session: str = "default", profile: str = "default",
               interpreter: str = "python") -> Kernel:
        """The live Python kernel of ``session`` in ``profile``'s pool (it starts with its
        first cell): ``k.run(code)``, ``k.push({...})``, ``k.pull([...])`` and their
        ``a``-twins. ``interpreter`` runs it (the local backend uses this kernel's own)."""
        self._check_open()
        return Kernel(self._loop, self._loop.run(
            self._call(self._manager.kernel, profile, session, interpreter), CALL_TIMEOUT))

    def kernels(self) -> pd.DataFrame:
        """Every kernel session of this client, one row each."""
        import pandas as pd
        rows = [k.row() for k in self._manager.kernels.values()]
        return pd.DataFrame(rows, columns=["session", "profile", "state", "since", "memory",
                                           "cells", "run", "sandbox", "ended"])

    def get_sweep(self, key: str | Sweep) -> Sweep:
        """A sweep by id or name (the latest of that name).

        Raises:
            UnknownRunError: no sweep has that id or name.
        """
        if isinstance(key, Sweep):
            return key
        sweeps = self._manager.sweeps
        found = sweeps.get(key) or next(
            (s for s in reversed(sweeps.values()) if s.name == key), None)
        if found is None:
            raise UnknownRunError(f"No sweep with id or name {key!r}; sweeps: "
                                  f"{', '.join(s.name for s in sweeps.values()) or 'none yet'}.")
        return found

    def sweeps(self) -> pd.DataFrame:
        """Every sweep of this client, one row each: its items in each state."""
        import pandas as pd
        rows = [{"id": s.id, "name": s.name, "items": len(s.items), **s.counts(),
                 "done": s.done} for s in self._manager.sweeps.values()]
        return pd.DataFrame(rows, columns=["id", "name", "items", *ITEM_STATES, "done"]
                            ).set_index("id")

    async def _submit(self, spec: RunSpec, listener: Listener | None) -> Run:
        return self._manager.submit(spec, listener)

    def submit(self, code: str, interpreter: str = "bash", *, profile: str = "default",
               timeout: float | None = None, env: Mapping[str, str] | None = None,
               session: str | None = None, name: str | None = None,
               uploads: Sequence[tuple[str, str]] = (), downloads: Sequence[tuple[str, str]] = (),
               raise_error: bool = True, listener: Listener | None = None,
               detach: bool = False) -> Run:
        """Start ``code`` under ``interpreter`` in a slot of ``profile``; return the Run at once.

        Args:
            timeout: seconds before the run's process group is killed.
            env: environment variables for this run.
            session: a sticky slot whose workspace later runs of the same name share.
            name: a name to find the run by (``%sandbox logs NAME``).
            uploads: (local, remote) files or folders copied in before the run.
            downloads: (remote, local) files copied out after it.
            raise_error: whether ``wait()`` and ``await run`` raise if it fails.
            listener: ``listener(run, stream, data)``, attached before any output arrives.
            detach: the run goes on in its sandbox when this kernel goes away (as a
                ``--bg`` cell's does), bounded by its timeout, the profile's lifetime and
                heartbeat window; a later kernel attaches it (`attach`).
        """
        self._check_open()
        spec = self._spec(code, interpreter, profile, timeout, env, session, name,
                          uploads, downloads, raise_error, detach)
        return self._loop.run(self._submit(spec, listener), CALL_TIMEOUT)

    async def asubmit(self, code: str, interpreter: str = "bash", *, profile: str = "default",
                      timeout: float | None = None, env: Mapping[str, str] | None = None,
                      session: str | None = None, name: str | None = None,
                      uploads: Sequence[tuple[str, str]] = (),
                      downloads: Sequence[tuple[str, str]] = (),
                      raise_error: bool = True, listener: Listener | None = None,
                      detach: bool = False) -> Run:
        """Await-able twin of `submit`."""
        self._check_open()
        spec = self._spec(code, interpreter, profile, timeout, env, session, name,
                          uploads, downloads, raise_error, detach)
        return await self._loop.arun(self._submit(spec, listener))

    def run(self, code: str, interpreter: str = "bash", *, check: bool = True,
            **options: Any) -> Run:
        """Run ``code`` and wait for it; raise `RunFailedError` if it fails and ``check``.

        Ctrl-C cancels the remote run before KeyboardInterrupt propagates.
        """
        run = self.submit(code, interpreter, raise_error=check, **options)
        try:
            run.join()
        except KeyboardInterrupt:
            self.cancel(run)
            raise
        return run.check() if check else run

    async def arun(self, code: str, interpreter: str = "bash", *, check: bool = True,
                   **options: Any) -> Run:
        """Await-able twin of `run`."""
        return await (await self.asubmit(code, interpreter, raise_error=check, **options))

    def get_run(self, key: str | Run) -> Run:
        """A run by id or name (the latest of that name).

        Raises:
            UnknownRunError: no run has that id or name (a `KeyError` too).
        """
        return key if isinstance(key, Run) else self._manager.runs.get(key)

    def cancel(self, run: str | Run) -> str:
        """Stop a run at whatever stage it is; return what did it ("dequeued", "SIGINT",
        "SIGTERM", "SIGKILL", "stopped while uploading", "already-finished").

        Raises:
            UnknownRunError: no run has that id or name.
        """
        self._check_open()
        run = self.get_run(run)
        return self._loop.run(self._manager.cancel(run), CALL_TIMEOUT)

    async def acancel(self, run: str | Run) -> str:
        self._check_open()
        return await self._loop.arun(self._manager.cancel(self.get_run(run)))

    def runs(self, all_kernels: bool = False) -> pd.DataFrame:
        """The history of this client's runs, one row each (readable after shutdown too),
        then those the kernel this one restarted recorded (a detached one still going
        shows as "running (started by the previous kernel at 14:02)"); ``all_kernels``:
        those of every earlier kernel of this user."""
        return history_frame(self._manager.history(all_kernels))

    def attach(self, run: str) -> Run:
        """The detached run ``run`` (id or name) the kernel this one restarted started
        (same kernel id: the same notebook), attached here:
        its log replayed from the first byte, then followed; ``wait``, ``cancel``, its
        exit code and artifacts work as for a run started here. A run of this kernel is
        returned as it is.

        Raises:
            UnknownRunError: no such run, it ended with its kernel, or no sandbox keeps it.
        """
        self._check_open()
        return self._loop.run(self._manager.attach(run), ATTACH_TIMEOUT)

    async def aattach(self, run: str) -> Run:
        self._check_open()
        return await self._loop.arun(self._manager.attach(run))

    async def _pool_status(self) -> list[PoolStatus]:
        return self._manager.status()

    def pool_status(self) -> list[PoolStatus]:
        """Every pool as immutable, typed data (`PoolStatus`), as the views show it."""
        self._check_open()
        return self._loop.run(self._pool_status(), CALL_TIMEOUT)

    def status(self) -> list[dict[str, Any]]:
        """Every pool as plain data: sandboxes, slot states, queue, recent events."""
        return [pool.as_dict() for pool in self.pool_status()]

    def sandbox_log(self, name: str) -> str:
        """The engine's own log of sandbox ``name`` (as in `status`), also for one that died
        lately: what its agent printed before it went.

        Raises:
            UnknownSandboxError: no such sandbox (a `KeyError` too); SandboxError: the
                engine could not be asked.
        """
        self._check_open()
        return self._loop.run(self._manager.sandbox_log(name), CALL_TIMEOUT)

    def scale(self, profile: str, sandboxes: int | Literal["auto"] | None) -> None:
        """Keep exactly ``sandboxes`` sandboxes of ``profile`` running (at most its
        ``max_sandboxes``); "auto" or None: autoscale between the profile's bounds again,
        as ``%sandbox scale PROFILE auto`` does.

        Raises:
            UnknownProfileError: no such profile.
            ProfileError: ``sandboxes`` is not a whole number or "auto", or it is negative
                or above ``max_sandboxes`` (a `ValueError` too, as every refusal of a
                profile's bounds is).
        """
        self._check_open()
        self._loop.run(self._manager.scale(profile, sandboxes), CALL_TIMEOUT)

    async def ascale(self, profile: str, sandboxes: int | Literal["auto"] | None) -> None:
        self._check_open()
        await self._loop.arun(self._manager.scale(profile, sandboxes))

    def every(self, interval: Callable[[], float],
              callback: Callable[[], bool]) -> concurrent.futures.Future[None]:
        """Call ``callback()`` on the manager's loop every ``interval()`` seconds until it
        returns False or the client shuts down; cancel the returned future to stop it.

        Views poll this way (at 2 Hz or less) instead of reacting to every chunk.
        """
        self._check_open()
        return self._loop.submit_detached(_every(interval, callback))

    def end_session(self, session: str) -> list[str]:
        """Free the slot of ``session`` (its files are deleted); return the profiles it was in."""
        self._check_open()
        return self._loop.run(self._manager.end_session(session), CALL_TIMEOUT)

    async def aend_session(self, session: str) -> list[str]:
        self._check_open()
        return await self._loop.arun(self._manager.end_session(session))

    def shutdown(self, purge: bool = False, leave_detached: bool = False) -> Stopped:
        """Cancel every run (detached ones too, those of the kernel this one restarted
        included) and stop every sandbox; say how many runs that stopped. The client
        cannot be used afterwards.

        ``purge`` also deletes the local copies of artifacts and spilled logs.
        ``leave_detached`` lets detached runs go on for a later kernel (what happens when
        the kernel exits).
        """
        if self.state is ClientState.CLOSED:
            return Stopped()
        self.state = ClientState.CLOSED
        try:
            return self._loop.run(self._manager.shutdown(purge, leave_detached), SHUTDOWN_TIMEOUT)
        finally:
            self._loop.stop()

    async def ashutdown(self, purge: bool = False, leave_detached: bool = False) -> Stopped:
        if self.state is ClientState.CLOSED:
            return Stopped()
        self.state = ClientState.CLOSED
        try:
            return await self._loop.arun(self._manager.shutdown(purge, leave_detached))
        finally:
            self._loop.stop()


def _text(value: Any) -> str:
    """A grid value as a command sees it: text as is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value.item() if hasattr(value, "item") else value)


async def _every(interval: Callable[[], float], callback: Callable[[], bool]) -> None:
    while True:
        try:
            if callback() is False:
                return
        except Exception:
            logging.getLogger(__name__).exception("a periodic view update failed; it stops")
            return
        await asyncio.sleep(interval())


def _shutdown_at_exit(ref: weakref.ref[Client]) -> None:
    client = ref()
    if client is not None:
        client.shutdown(leave_detached=True)
