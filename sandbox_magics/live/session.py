"""A kernel session: a live IPython kernel in one session slot, serving many cells.

The kernel is a run (`RunSpec.interactive`): the bridge program (`bridge`) started in the
session's slot, sent requests on its stdin, read through the run's output, which the
session splits into frames (`frames`): text goes to the run's log, and every frame to the
cell waiting for it. One request at a time. A kernel that dies becomes one sentence
(`KernelSession.why`); the session's next cell starts a fresh kernel and says so. Its
life is a `KernelState`, checked at each change. Loop-bound: call from the manager's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import pickle
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import KernelError, SandboxError
from ..profiles import Profile
from ..runs import Run, RunSpec, RunState, Stage
from ..runs.run import Decode
from ..runs.words import exit_words
from . import bridge
from .frames import FrameReader, frame, json_frame

BRIDGE = Path(bridge.__file__).read_text()
READY_TIMEOUT = 120.0
"""Seconds a kernel has, once its slot is granted, to import IPython and say it is ready."""
READY_POLL = 1.0
PICKLE_PROTOCOL = 4
"""Readable by every Python 3 a sandbox may have, large objects included."""
TAIL = 2000
WRITE_GRACE = 5.0
"""Seconds a kernel whose request could not be sent has to end by itself before it is stopped."""
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

Sink = Callable[[str, Any], None]
"""Where a cell's output goes, as it comes: ("stdout" | "stderr", bytes), ("display" |
"result" | "error" | "clear", the frame's JSON), ("notice", a sentence)."""


class KernelState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"


TRANSITIONS = {
    KernelState.STOPPED: {KernelState.STARTING},
    KernelState.STARTING: {KernelState.IDLE, KernelState.STOPPED},
    KernelState.IDLE: {KernelState.BUSY, KernelState.STOPPED},
    KernelState.BUSY: {KernelState.IDLE, KernelState.STOPPED},
}


@dataclass
class Reply:
    """What one request gave back. ``status``: "ok", "error" (the cell raised:
    ``error``), "interrupted" (state kept) or "died" (``reason`` says why). ``failed``
    names the values that could not be pushed or pulled, with why; ``fresh`` says that a
    fresh kernel was started for this cell."""

    status: str = "ok"
    execution_count: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    fresh: str | None = None
    failed: dict[str, str] = field(default_factory=dict)
    pulled: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None


class KernelSession:
    """The live kernel of session ``session`` in ``profile``'s pool, started on first use.

    ``submit`` queues the kernel's run (with the decoder of its output); ``cancel`` stops
    a run (the core's escalation) and returns the step that did."""

    def __init__(self, session: str, profile: Profile, python: str,
                 submit: Callable[[RunSpec, Decode], Run],
                 cancel: Callable[[Run], Awaitable[str]]) -> None:
        self.session, self.profile, self.python = session, profile, python
        self.state = KernelState.STOPPED
        self.since = time.time()
        self.run: Run | None = None
        self.cells = 0
        self.memory: int | None = None
        self.info: dict[str, Any] = {}
        self.ended: str | None = None
        """Why the last kernel ended (None while none has)."""
        self._submit, self._cancel = submit, cancel
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reply: Reply | None = None
        self._sink: Sink | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._gone = asyncio.Event()
        """Set once the kernel's run has ended (waiting on it never touches the run)."""
        self._stop_reason: str | None = None
        self._tail = b""
        self._idle: asyncio.TimerHandle | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._release: str | None = None

    def __repr__(self) -> str:
        return f"<KernelSession {self.session!r} [{self.profile.name}] {self.state.value}>"

    def row(self) -> dict[str, Any]:
        """The session as the panels list it."""
        return {"session": self.session, "profile": self.profile.name, "state": self.state.value,
                "since": self.since, "memory": self.memory, "cells": self.cells,
                "run": self.run.id if self.run else None,
                "sandbox": self.run.sandbox if self.run else None, "ended": self.ended}

    def _to(self, state: KernelState) -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            raise KernelError(f"Kernel session {self.session!r} cannot go from "
                              f"{self.state.value} to {state.value}.")
        self.state, self.since = state, time.time()

    async def execute(self, code: str, sink: Sink, push: dict[str, Any] | None = None,
                      pull: tuple[str, ...] = ()) -> Reply:
        """Run ``code`` in the kernel (started first if it is not running), after pushing
        ``push`` into its namespace and before pulling ``pull`` out (into ``pulled``).

        Raises:
            KernelError: no kernel could be started (the sentence says why).
        """
        async with self._lock:
            fresh = await self._ensure()
            if fresh:
                sink("notice", fresh)
            failed: dict[str, str] = {}
            if push:
                pushed = await self._push(push, sink)
                failed.update(pushed.failed)
                if pushed.status == "died":
                    return pushed
            self.cells += 1
            reply = await self._call(lambda rid: json_frame(bridge.EXECUTE, {"id": rid, "code": code}),
                                     sink)
            reply.fresh = fresh
            if pull and reply.status == "ok":
                pulled = await self._pull(pull, sink)
                reply.pulled, reply.status, reply.reason = pulled.pulled, pulled.status, pulled.reason
                failed.update(pulled.failed)
            reply.failed = failed
            return reply

    async def push(self, values: dict[str, Any]) -> Reply:
        """Bind ``values`` in the kernel's namespace (started first if needed)."""
        async with self._lock:
            await self._ensure()
            return await self._push(values, None)

    async def pull(self, names: tuple[str, ...]) -> Reply:
        """The values of ``names`` in the kernel's namespace, in ``pulled``."""
        async with self._lock:
            await self._ensure()
            return await self._pull(names, None)

    async def interrupt(self, window: float) -> str:
        """Interrupt the running cell: "kept" if the kernel answered within ``window``
        seconds (its state stays), else it is stopped: "lost"; "idle" if nothing ran."""
        run = self.run
        if self.state is not KernelState.BUSY or run is None:
            return "idle"
        pending = list(self._pending.values())
        try:
            await run.signal(signal.SIGINT)
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*pending)), window)
            return "kept"
        except (SandboxError, asyncio.TimeoutError):
            await self.stop(f"it did not answer an interrupt within {window:g} s, so it was "
                            "stopped")
            return "lost"

    async def restart(self) -> None:
        """Stop the kernel (a running cell ends "died") and start a fresh one."""
        await self.stop("it was restarted")
        async with self._lock:
            await self._ensure()

    async def stop(self, reason: str) -> None:
        """Stop the kernel, if one runs; ``reason`` is how a later cell explains it."""
        self._cancel_idle()
        run = self.run
        if run is not None and not run.done:
            self._stop_reason = self._stop_reason or reason
            with contextlib.suppress(SandboxError):
                await run.signal(signal.SIGTERM)  # an idle kernel ignores the SIGINT a cancel starts with
            await self._cancel(run)
        self._ended(self._stop_reason or reason)

    def release(self, reason: str) -> None:
        """Its sandbox is being scaled down: stop the kernel now if idle, else once the
        running request ends (the sandbox stops when its runs end)."""
        self._release = reason
        if self.state is KernelState.IDLE:
            self._stopping = asyncio.ensure_future(self.stop(reason))

    def close(self) -> None:
        """Forget timers and tasks (the manager stops the kernel's run itself)."""
        self._cancel_idle()
        if self._stopping is not None:
            self._stopping.cancel()

    def why(self, run: Run) -> str:
        """Why ``run``, a kernel of this session that ended, ended: a clause."""
        if self._stop_reason:
            return self._stop_reason
        if run.state is RunState.TIMED_OUT:
            return f"it reached the profile's lifetime of {run.timeout:g} s"
        if run.state is RunState.LOST:
            return f"its sandbox was lost ({run.error})"
        if run.state is RunState.ERROR:
            return str(run.error)
        if run.state is RunState.CANCELLED:
            return "it was stopped"
        code = run.exit_code
        if code in (-signal.SIGKILL, 128 + signal.SIGKILL):
            return (f"it was killed by SIGKILL (exit 137), probably out of memory: the "
                    f"sandbox's limit is {self.profile.memory_mb} MB")
        if code is not None and code < 0:
            return f"it was {exit_words(code)}"
        tail = self._tail.decode(errors="replace").strip().splitlines()
        return f"its process exited with code {code}" + (f": {tail[-1]}" if tail else "")

    async def _ensure(self) -> str | None:
        """A running kernel; a sentence if a fresh one had to replace one that ended."""
        if self.run is not None and not self.run.done and self.state is KernelState.IDLE:
            return None
        before = self.ended
        await self._start()
        if before is None:
            return None
        return (f"The kernel of session {self.session!r} had ended ({before}); this cell "
                "runs in a fresh kernel: the variables from before are gone.")

    async def _start(self) -> None:
        self._to(KernelState.STARTING)
        self._stop_reason, self._tail, self._release = None, b"", None
        loop = asyncio.get_running_loop()
        ready = self._ready = loop.create_future()
        reader = FrameReader()
        spec = RunSpec(code="", interpreter=self.python, args=("-u", "-c", BRIDGE),
                       profile=self.profile.name, session=self.session,
                       name=f"kernel {self.session}", timeout=self.profile.lifetime,
                       raise_error=False, interactive=True)
        self._gone = asyncio.Event()
        run = self.run = self._submit(spec, lambda stream, data: self._decode(reader, stream, data))
        run.add_listener(self._watch)
        if run.done:
            self._gone.set()
        ended = asyncio.ensure_future(self._gone.wait())
        granted: float | None = None
        try:
            while not ready.done() and not ended.done():
                await asyncio.wait({ready, ended}, timeout=READY_POLL,
                                   return_when=asyncio.FIRST_COMPLETED)
                if run.stage is Stage.RUNNING and granted is None:
                    granted = loop.time()
                if (granted is not None and loop.time() - granted > READY_TIMEOUT
                        and not ready.done() and not ended.done()):
                    await self.stop(f"it did not start within {READY_TIMEOUT:g} s of getting "
                                    "its slot")
        finally:
            ended.cancel()
        if ready.done() and "reason" not in ready.result():
            self.info = ready.result()
            self.memory = self.info.get("memory")
            self._to(KernelState.IDLE)
            self._arm_idle()
            return
        if ready.done():
            info = ready.result()
            self._ended("its Python has no IPython")
            raise KernelError(
                f"The sandbox's Python ({info.get('executable')}, {info.get('python')}) has no "
                "IPython, which a kernel session needs: add it to the image (on Modal: "
                f"pip = [\"ipython\"] in [profiles.{self.profile.name}.modal]), or pick "
                "another interpreter.")
        await self._gone.wait()
        self._ended(self.why(run))
        raise KernelError(f"The kernel of session {self.session!r} could not start: "
                          f"{self.why(run)}.")

    def _watch(self, run: Run, stream: str, _data: bytes) -> None:
        """A kernel's run that ends (killed, lost, timed out) ends the session's kernel."""
        if stream == "state" and run.done and run is self.run:
            self._gone.set()
            self._ended(self.why(run))

    def _ended(self, reason: str) -> None:
        self._cancel_idle()
        if self.state is not KernelState.STOPPED:
            self.ended = reason
            self._to(KernelState.STOPPED)

    async def _call(self, make: Callable[[int], bytes], sink: Sink | None) -> Reply:
        """Send the request ``make(id)`` and wait for its answer or the kernel's end."""
        run = self.run
        assert run is not None
        rid = next(self._ids)
        reply = self._reply = Reply()
        self._sink = sink
        answer = self._pending[rid] = asyncio.get_running_loop().create_future()
        self._cancel_idle()
        self._to(KernelState.BUSY)
        ended = asyncio.ensure_future(self._gone.wait())
        try:
            try:
                await run.write(make(rid))
                await asyncio.wait({answer, ended}, return_when=asyncio.FIRST_COMPLETED)
            except SandboxError as exc:  # it ended meanwhile, or cannot be reached
                await asyncio.wait({ended}, timeout=WRITE_GRACE)
                if not ended.done():
                    await self.stop(f"a request could not be sent to it ({exc})")
            if answer.done():
                done = answer.result()
                reply.status = done["status"]
                reply.execution_count = done.get("execution_count")
                reply.failed = done.get("failed") or {}
                self.memory = done.get("memory", self.memory)
            else:
                reply.status, reply.reason = "died", self.why(run)
        finally:
            ended.cancel()
            self._pending.pop(rid, None)
            self._sink = self._reply = None
            if self.state is KernelState.BUSY:
                if run.done:
                    self._ended(self.why(run))
                else:
                    self._to(KernelState.IDLE)
                    self._arm_idle()
                    if self._release is not None:
                        self.release(self._release)
        return reply

    async def _push(self, values: dict[str, Any], sink: Sink | None) -> Reply:
        pickled, failed = {}, {}
        for name, value in values.items():
            try:
                pickled[name] = pickle.dumps(value, PICKLE_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - named to the user
                failed[name] = f"it cannot be pickled ({type(exc).__name__}: {exc})"
        reply = await self._call(lambda rid: frame(bridge.PUSH, pickle.dumps(
            {"id": rid, "values": pickled}, PICKLE_PROTOCOL)), sink)
        reply.failed = {**failed, **reply.failed}
        return reply

    async def _pull(self, names: tuple[str, ...], sink: Sink | None) -> Reply:
        reply = await self._call(lambda rid: json_frame(bridge.PULL, {
            "id": rid, "names": list(names), "protocol": PICKLE_PROTOCOL}), sink)
        if reply.data is not None:
            for name, data in pickle.loads(reply.data).items():
                try:
                    reply.pulled[name] = pickle.loads(data)
                except Exception as exc:  # noqa: BLE001 - named to the user
                    reply.failed[name] = (f"it cannot be unpickled here ({type(exc).__name__}: "
                                          f"{exc})")
        return reply

    def _decode(self, reader: FrameReader, stream: str, data: bytes) -> list[tuple[str, bytes]]:
        """Turn the kernel run's output into its log's text, handing frames to the cell."""
        if stream != "stdout":  # the bridge's own stderr: a crash before it took fd 2 over
            self._tail = (self._tail + data)[-TAIL:]
            self._send(stream, data)
            return [(stream, data)]
        logged: list[tuple[str, bytes]] = []
        for kind, payload in reader.feed(data):
            logged.extend(self._on_frame(kind, payload))
        return logged

    def _on_frame(self, kind: bytes, payload: bytes) -> list[tuple[str, bytes]]:
        if kind in (bridge.STDOUT, bridge.STDERR):
            name = "stdout" if kind == bridge.STDOUT else "stderr"
            self._send(name, payload)
            return [(name, payload)]
        if kind == bridge.DATA:
            if self._reply is not None:
                self._reply.data = payload
            return []
        message = json.loads(payload)
        if kind in (bridge.READY, bridge.FATAL):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
        elif kind == bridge.DONE:
            if (answer := self._pending.get(message["id"])) is not None and not answer.done():
                answer.set_result(message)
        elif kind == bridge.DISPLAY:
            self._send("display", message)
            return _plain(message)
        elif kind == bridge.RESULT:
            if self._reply is not None:
                self._reply.result = message
            self._send("result", message)
            return _plain(message)
        elif kind == bridge.ERROR:
            if self._reply is not None:
                self._reply.error = message
            self._send("error", message)
            text = ANSI.sub("", "\n".join(message.get("traceback") or ()))
            return [("stderr", (text + "\n").encode())]
        elif kind == bridge.CLEAR:
            self._send("clear", message)
        return []

    def _send(self, kind: str, data: Any) -> None:
        if self._sink is not None:
            self._sink(kind, data)

    def _arm_idle(self) -> None:
        self._cancel_idle()
        limit = self.profile.idle_timeout
        self._idle = asyncio.get_running_loop().call_later(limit, self._idle_stop, limit)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_stop(self, limit: float) -> None:
        if self.state is KernelState.IDLE:
            self._stopping = asyncio.ensure_future(self.stop(
                f"it was idle for {limit:g} s, the profile's idle_timeout"))


def _plain(message: dict[str, Any]) -> list[tuple[str, bytes]]:
    """A display's text for the run's log (its text/plain form, if it has one)."""
    text = (message.get("data") or {}).get("text/plain")
    return [("stdout", (text + "\n").encode())] if isinstance(text, str) else []
