"""A kernel session's cell, in the notebook: its output shown as it comes, its end as errors.

`run_in_cell` blocks the cell's thread while the manager's loop runs the request: text
is written to the cell's stdout and stderr, displays are published as MIME bundles (as a
local ``display`` would), and the cell's last value comes back as a `RemoteResult`, which
IPython shows as the cell's ``execute_result``. Ctrl-C interrupts the remote kernel.
`outcome` turns a `Reply` into what the cell raises: the remote traceback once, a
sentence for a kernel that died or was interrupted, the values that could not move.
"""

from __future__ import annotations

import queue
import sys
from typing import Any

from ..exceptions import KernelError, KernelInterruptedError, RemoteError, VariableError
from ..live import KernelSession, Reply
from .cell import TextWriter
from .loop import LoopThread

POLL = 0.2
INTERRUPT_WINDOW = 5.0
"""Seconds the remote kernel has to answer an interrupt before it is stopped."""
CALL_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 600.0
"""Seconds a push, pull or restart may take (a large DataFrame, a kernel to start)."""


class RemoteResult:
    """A cell's last value as the sandbox's kernel formatted it (every MIME type it gave)."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.data: dict[str, Any] = dict(message.get("data") or {})
        self.metadata: dict[str, Any] = dict(message.get("metadata") or {})

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<RemoteResult>"))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
        return self.data, self.metadata


class CellView:
    """Shows a cell's output from the thread that runs the cell (so it lands in that cell)."""

    def __init__(self) -> None:
        self.text = TextWriter(sys.stdout, sys.stderr)

    def show(self, kind: str, data: Any) -> None:
        from IPython.display import clear_output, publish_display_data
        if kind in self.text.files:
            self.text.write(kind, data)
        elif kind == "display":
            sys.stdout.flush()
            sys.stderr.flush()
            publish_display_data(data.get("data") or {}, data.get("metadata") or {},
                                 transient=data.get("transient") or None,
                                 update=bool(data.get("update")))
        elif kind == "clear":
            clear_output(wait=bool(data.get("wait")))
        elif kind == "notice":
            print(f"[sandbox] {data}", file=sys.stderr, flush=True)


def run_in_cell(loop: LoopThread, kernel: KernelSession, code: str,
                push: dict[str, Any] | None = None, pull: tuple[str, ...] = ()) -> Reply:
    """Run ``code`` in ``kernel``, showing its output in the current cell as it comes.

    Raises:
        KernelError: no kernel could be started.
    """
    items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    future = loop.submit(kernel.execute(code, lambda kind, data: items.put((kind, data)),
                                        push, pull))
    future.add_done_callback(lambda _: items.put(("end", None)))
    view = CellView()
    try:
        _drain(items, view)
    except KeyboardInterrupt:
        loop.run(kernel.interrupt(INTERRUPT_WINDOW), INTERRUPT_WINDOW + CALL_TIMEOUT)
        _drain(items, view)
    finally:
        view.text.close()
    return future.result()


def _drain(items: queue.SimpleQueue[tuple[str, Any]], view: CellView) -> None:
    while True:
        try:
            kind, data = items.get(timeout=POLL)
        except queue.Empty:
            continue
        if kind == "end":
            return
        view.show(kind, data)


def outcome(kernel: KernelSession, reply: Reply, raise_error: bool = True) -> RemoteResult | None:
    """What the cell gives for ``reply``: its last value, or the error it raises
    (``raise_error`` off: printed instead, but for a kernel that died or was interrupted)."""
    where = f"the kernel of session {kernel.session!r} ({kernel.profile.name})"
    if reply.status == "interrupted":
        raise KernelInterruptedError(f"Interrupted: {where} keeps its state.")
    if reply.status == "died":
        raise KernelError(f"{where[0].upper()}{where[1:]} ended: {reply.reason}; its state is "
                          "lost, and the session's next cell starts a fresh kernel.")
    if reply.failed:
        missing = "; ".join(f"{name}: {why}" for name, why in reply.failed.items())
        raise VariableError(f"Not moved ({missing}); every other value was.")
    if reply.status == "error" and reply.error is not None:
        error = RemoteError(reply.error.get("ename", "Error"), reply.error.get("evalue", ""),
                            reply.error.get("traceback") or [])
        if raise_error:
            raise error
        print("\n".join(error._render_traceback_()), file=sys.stderr)
    return RemoteResult(reply.result) if reply.result is not None else None


class Kernel:
    """A kernel session from Python, as ipyparallel's views are: sync methods block this
    thread (``run`` shows the output in the current cell), their ``a``-twins are awaited
    and collect it instead. Get one with `Client.kernel`."""

    def __init__(self, loop: LoopThread, session: KernelSession) -> None:
        self._loop, self.session = loop, session

    def __repr__(self) -> str:
        return (f"<Kernel session {self.session.session!r} [{self.session.profile.name}] "
                f"{self.session.state.value}>")

    @property
    def state(self) -> str:
        return self.session.state.value

    def run(self, code: str, raise_error: bool = True) -> RemoteResult | None:
        """Run ``code``; its output shows in the current cell; return its last value."""
        return outcome(self.session, run_in_cell(self._loop, self.session, code), raise_error)

    async def arun(self, code: str, raise_error: bool = True) -> Collected:
        """Run ``code``; return its output, collected (`Collected`)."""
        collected = Collected()
        reply = await self._loop.arun(self.session.execute(code, collected.add))
        collected.result = outcome(self.session, reply, raise_error)
        return collected

    def push(self, values: dict[str, Any]) -> None:
        """Bind ``values`` (name → value) in the kernel's namespace."""
        outcome(self.session, self._loop.run(self.session.push(dict(values)), TRANSFER_TIMEOUT))

    async def apush(self, values: dict[str, Any]) -> None:
        outcome(self.session, await self._loop.arun(self.session.push(dict(values))))

    def pull(self, names: str | list[str]) -> dict[str, Any]:
        """The values of ``names`` in the kernel's namespace (name → value)."""
        reply = self._loop.run(self.session.pull(_names(names)), TRANSFER_TIMEOUT)
        outcome(self.session, reply)
        return reply.pulled

    async def apull(self, names: str | list[str]) -> dict[str, Any]:
        reply = await self._loop.arun(self.session.pull(_names(names)))
        outcome(self.session, reply)
        return reply.pulled

    def interrupt(self) -> str:
        """Interrupt the running cell: "kept" (state stays), "lost" or "idle"."""
        return self._loop.run(self.session.interrupt(INTERRUPT_WINDOW),
                              INTERRUPT_WINDOW + CALL_TIMEOUT)

    def restart(self) -> None:
        """Stop the kernel and start a fresh one."""
        self._loop.run(self.session.restart(), TRANSFER_TIMEOUT)

    def stop(self) -> None:
        """Stop the kernel; the session's next cell starts a fresh one."""
        self._loop.run(self.session.stop("it was stopped by you"), CALL_TIMEOUT)


class Collected:
    """A cell's output, collected: ``stdout``, ``stderr``, ``displays`` (MIME bundles),
    ``notices`` (what sandbox_magics said of it, e.g. that a fresh kernel was started) and
    ``result`` (its last value, a `RemoteResult`, or None)."""

    def __init__(self) -> None:
        self.stdout, self.stderr = "", ""
        self.displays: list[dict[str, Any]] = []
        self.notices: list[str] = []
        self.result: RemoteResult | None = None

    def add(self, kind: str, data: Any) -> None:
        if kind == "stdout":
            self.stdout += data.decode(errors="replace")
        elif kind == "stderr":
            self.stderr += data.decode(errors="replace")
        elif kind == "display":
            self.displays.append(data.get("data") or {})
        elif kind == "notice":
            self.notices.append(data)


def _names(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` as a tuple of names."""
    if isinstance(names, str):
        names = names.split(",")
    return tuple(name.strip() for name in names if name.strip())
