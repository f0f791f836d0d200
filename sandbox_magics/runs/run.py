"""`Run`: one command's life in a slot, shaped like `asyncio.subprocess.Process`.

The manager's loop thread drives a run through its states (`state.RunState`, every change
checked against the table there); any thread may read it, wait for it (``wait()``,
``await run``) or cancel it. Output goes to a bounded `LogBuffer` and to
listeners, which are called on the manager's loop and must not block.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Process
from ..exceptions import RunFailedError, SandboxError, WaitTimeoutError
from ..pool import cost as pricing
from .artifacts import Artifact
from .log import LogBuffer
from .state import RunState, Stage, check_stage, check_transition
from .words import exit_words, stop_words


@dataclass(frozen=True)
class RunSpec:
    """What to run: ``code`` fed on stdin to ``interpreter`` in a slot of ``profile``.

    ``uploads`` are (local, remote) pairs copied in before the run; ``downloads`` are
    (remote, local) pairs copied out after it. ``raise_error``: `Run.wait` and ``await run``
    raise `RunFailedError` if the run fails. ``detach``: the run goes on in its sandbox
    when this kernel goes (a ``--bg`` cell), for a later kernel to attach. ``files``
    (plain file name → text, small) are in the workspace while the command runs.
    """

    code: str
    interpreter: str = "bash"
    profile: str = "default"
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    session: str | None = None
    name: str | None = None
    uploads: tuple[tuple[str, str], ...] = ()
    downloads: tuple[tuple[str, str], ...] = ()
    raise_error: bool = True
    detach: bool = False
    files: Mapping[str, str] = field(default_factory=dict, repr=False)
    args: tuple[str, ...] = field(default=(), repr=False)
    interactive: bool = False


Decode = Callable[[str, bytes], list[tuple[str, bytes]]]
"""Turns a chunk of a process's output into what the run's log and listeners get."""


Listener = Callable[["Run", str, bytes], None]


class Run:
    """A submitted command. ``returncode`` is None until it ends."""

    def __init__(self, run_id: str, spec: RunSpec, backend: str,
                 log: LogBuffer | None = None, decode: Decode | None = None) -> None:
        self.id = run_id
        self.spec = spec
        self.backend = backend
        self.state = RunState.QUEUED
        self.stage = Stage.QUEUED
        self.stop_step: str | None = None
        self.sandbox: str | None = None
        self.engine_id: str | None = None
        self.slot: int | None = None
        self.rate: float | None = 0.0
        self.pgid: int | None = None
        self.exit_code: int | None = None
        self.error: str | None = None
        self.notices: list[str] = []
        self.artifacts: list[Artifact] = []
        self.timeout: float | None = spec.timeout
        self.queued_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.log = log or LogBuffer()
        self._listeners: list[Listener] = []
        self._future: concurrent.futures.Future[Run] = concurrent.futures.Future()
        self._cancel: Callable[[], Any] | None = None
        self._decode = decode
        self._process: Process | None = None

    def __repr__(self) -> str:
        where = f" {self.sandbox}/slot-{self.slot}" if self.sandbox else ""
        code = f" exit={self.exit_code}" if self.exit_code is not None else ""
        return f"<Run {self.id} {self.spec.interpreter} [{self.spec.profile}]{where} {self.state.value}{code}>"

    @property
    def name(self) -> str:
        return self.spec.name or self.id

    @property
    def profile(self) -> str:
        return self.spec.profile

    @property
    def returncode(self) -> int | None:
        """The exit code once the run has ended (None before, or when it had none)."""
        return self.exit_code

    @property
    def done(self) -> bool:
        return self._future.done()

    @property
    def cancelling(self) -> bool:
        """Whether a cancel was asked and the run has not ended yet."""
        return self.state is RunState.CANCELLING

    @property
    def cost(self) -> float | None:
        """Its share of its sandbox's cost while it held its slot, estimated (None:
        unknown; 0 before it had a slot)."""
        if self.started_at is None:
            return 0.0
        return pricing.cost(self.rate, (self.ended_at or time.time()) - self.started_at)

    @property
    def detaching(self) -> bool:
        """Whether this kernel is letting the run go on without it (it is shutting down)."""
        return self.state is RunState.DETACHING

    @property
    def stdout(self) -> str:
        return self.log.text("stdout")

    @property
    def stderr(self) -> str:
        return self.log.text("stderr")

    def poll(self) -> int | None:
        return self.exit_code if self.done else None

    def join(self, timeout: float | None = None) -> bool:
        """Block until the run ends or ``timeout`` passes; return whether it ended. Never raises."""
        try:
            self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the run ends; return its exit code. Not for the manager's loop.

        Raises:
            RunFailedError: the run failed and was submitted with ``raise_error``.
            WaitTimeoutError: it is still going after ``timeout`` seconds (a `TimeoutError`
                too); it goes on.
        """
        if not self.join(timeout):
            raise WaitTimeoutError(f"Run {self.id} is still {self.state.value} after "
                                   f"{timeout:g} s; it goes on: wait again, or cancel it.")
        if self.spec.raise_error:
            self.check()
        return self.exit_code

    def __await__(self) -> Generator[Any, None, Run]:
        return self._await().__await__()

    async def _await(self) -> Run:
        await asyncio.wrap_future(self._future)
        return self.check() if self.spec.raise_error else self

    def cancel(self) -> None:
        """Stop the run: dequeue it, or kill its remote process group."""
        if self._cancel is not None and not self.done:
            self._cancel()

    def check(self) -> Run:
        """Raise `RunFailedError` unless the run succeeded; return the run."""
        if self.state is RunState.SUCCEEDED:
            return self
        raise RunFailedError(self.failure_message(), self.id, self.exit_code)

    def failure_message(self) -> str:
        what = f"Run {self.id} ({self.spec.interpreter}, profile {self.spec.profile!r})"
        if self.state is RunState.FAILED:
            code = self.exit_code
            if code is not None and code < 0:  # ended by a signal, not by exiting
                return f"{what} was {exit_words(code)}."
            return f"{what} exited with code {code}."
        if self.state is RunState.TIMED_OUT:
            limit = f"{self.timeout:g} s" if self.timeout else "its time limit"
            return (f"{what} exceeded its timeout of {limit}; its process group "
                    "was killed and the slot freed. Raise --timeout to give it longer.")
        if self.state is RunState.CANCELLED:
            how = f": {stop_words(self.stop_step)}" if self.stop_step else ""
            return f"{what} was cancelled{how}."
        if self.state is RunState.LOST:
            return f"{what} failed: sandbox lost ({self.error}). Run it again: the pool replaces the sandbox."
        if self.state is RunState.ERROR:
            return f"{what} could not run: {self.error}"
        if self.state is RunState.DETACHED:
            return (f"{what} was left running in sandbox {self.sandbox} when this client shut "
                    f"down; a later kernel can follow it with %sandbox attach {self.id}.")
        return f"{what} is {self.state.value}."

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(run, stream, data)`` for each chunk; stream "state" on changes."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, stream: str, data: bytes) -> None:
        for listener in list(self._listeners):
            listener(self, stream, data)

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the stdin of an interactive run's process (on the manager's loop).

        Raises:
            SandboxError: the run is not running interactive now.
        """
        if self._process is None:
            raise SandboxError(f"Run {self.id} takes no input now: it is {self.state.value}.")
        await self._process.write(data)

    async def signal(self, sig: int) -> bool:
        """Send ``sig`` to the process group of a running interactive run; False if it is
        not running (on the manager's loop)."""
        return self._process is not None and await self._process.signal(sig)

    def _output(self, stream: str, data: bytes) -> None:
        for stream, data in self._decode(stream, data) if self._decode else ((stream, data),):
            self.log.append(stream, data)
            self._emit(stream, data)

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        self._emit("notice", text.encode())

    def _to(self, state: RunState) -> None:
        """Move to ``state``, as the table in `state` allows, and tell the listeners."""
        check_transition(self.id, self.state, state)
        self.state = state
        self._emit("state", b"")

    def _assign(self, sandbox: str, slot: int, engine_id: str,
                started_at: float | None = None, rate: float | None = None) -> None:
        """The run has slot ``slot`` of ``sandbox`` (the engine's ``engine_id``) from
        ``started_at`` (now, unless it is an attached run started earlier), at ``rate``
        dollars an hour (None: unknown)."""
        self.sandbox, self.slot, self.engine_id = sandbox, slot, engine_id
        self.rate = rate
        self.started_at = started_at or time.time()
        self._to(RunState.RUNNING)

    def _stage(self, stage: Stage) -> None:
        check_stage(self.id, self.stage, stage)
        self.stage = stage

    def _request_cancel(self) -> None:
        """A cancel was asked: the drive ends the run CANCELLED at its next step, unless
        it ends by itself first."""
        if self.state in (RunState.QUEUED, RunState.RUNNING):
            self._to(RunState.CANCELLING)

    def _request_detach(self) -> None:
        """This kernel goes away: the drive lets the run go on in its sandbox."""
        if self.state is RunState.RUNNING:
            self._to(RunState.DETACHING)

    def _requeue(self) -> None:
        """Back to the queue: the sandbox it was given was lost before it started (a run
        being cancelled stays so, and ends at the queue)."""
        self.sandbox, self.slot, self.engine_id = None, None, None
        self.pgid, self.started_at = None, None
        if self.state is RunState.RUNNING:
            self._to(RunState.QUEUED)

    def _finish(self, state: RunState, exit_code: int | None = None, error: str | None = None) -> None:
        if self.done:
            return
        check_transition(self.id, self.state, state)
        self.state, self.exit_code, self.error = state, exit_code, error
        self.ended_at = time.time()
        self.log.seal()
        self._future.set_result(self)
        self._emit("state", b"")

    def as_row(self) -> dict[str, Any]:
        """One row of the run history."""
        wait = (self.started_at or self.ended_at or time.time()) - self.queued_at
        run_seconds = None
        if self.started_at is not None:
            run_seconds = (self.ended_at or time.time()) - self.started_at
        return {
            "id": self.id, "name": self.spec.name, "profile": self.spec.profile,
            "backend": self.backend, "interpreter": self.spec.interpreter,
            "session": self.spec.session, "sandbox": self.sandbox, "slot": self.slot,
            "state": self.state.value, "exit_code": self.exit_code,
            "queued": self.queued_at, "started": self.started_at, "ended": self.ended_at,
            "wait_s": wait, "run_s": run_seconds, "output_bytes": self.log.total_bytes,
            "log_dropped_bytes": self.log.dropped_bytes,
            "cost": self.cost if self.rate else None, "error": self.error,
        }
