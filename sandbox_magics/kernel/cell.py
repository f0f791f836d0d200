"""Stream a run into the current cell: each chunk printed as it arrives, Ctrl-C cancels.

Output is written from the thread that runs the cell (so it lands in that cell), decoded
by incremental UTF-8 decoders so a character split across chunks prints whole.
"""

from __future__ import annotations

import codecs
import queue
import sys
import time
from typing import TYPE_CHECKING, TextIO

from ..runs import Run
from ..runs.run import Listener
from ..runs.words import stop_words

if TYPE_CHECKING:
    from .client import Client

POLL = 0.2
CELL_OUTPUT_LIMIT = 8 * 2**20
DRAIN_AFTER_CANCEL = 5.0


def stream_to_cell(client: Client, run: Run, chunks: queue.SimpleQueue[tuple[str, bytes]],
                   out: TextIO | None = None, err: TextIO | None = None) -> Run:
    """Print ``run``'s output from ``chunks`` (fed by `queue_listener`) until it ends.

    On KeyboardInterrupt the remote process group is stopped, the rest of the output is
    printed, a line says which signal did it, and KeyboardInterrupt is raised again.
    """
    out, err = out or sys.stdout, err or sys.stderr
    writer = TextWriter(out, err)
    try:
        writer.drain(chunks, run, deadline=None)
    except KeyboardInterrupt:
        step = client.cancel(run)
        writer.drain(chunks, run, deadline=DRAIN_AFTER_CANCEL)
        err.write(f"[sandbox] Run {run.id}: {stop_words(step)}; its slot is free.\n")
        err.flush()
        raise
    finally:
        writer.close()
    return run


def queue_listener(chunks: queue.SimpleQueue[tuple[str, bytes]],
                   limit_bytes: int = CELL_OUTPUT_LIMIT) -> Listener:
    """A run listener that forwards events to ``chunks``, output only up to ``limit_bytes``.

    Past the limit one ``("truncated", b"")`` event is sent and output is dropped here
    (the run's log keeps all of it), so a flood cannot fill the kernel or the browser.
    """
    sent = 0

    def listener(run: Run, stream: str, data: bytes) -> None:
        nonlocal sent
        if stream in ("stdout", "stderr"):
            if sent >= limit_bytes:
                return
            sent += len(data)
            if sent >= limit_bytes:
                chunks.put((stream, data[: len(data) - (sent - limit_bytes)]))
                chunks.put(("truncated", b""))
                return
        chunks.put((stream, data))
    return listener


class TextWriter:
    """A run's stdout and stderr bytes written to ``out`` and ``err`` as text, as they
    come: each stream decoded incrementally (a character split across chunks is written
    whole), the rest of a split character on `close`."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.files = {"stdout": out, "stderr": err}
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
                         for name in self.files}

    def write(self, stream: str, data: bytes) -> None:
        """Write ``data`` of ``stream`` ("stdout" or "stderr") and flush it."""
        if text := self.decoders[stream].decode(data):
            self.files[stream].write(text)
            self.files[stream].flush()

    def drain(self, chunks: queue.SimpleQueue[tuple[str, bytes]], run: Run,
              deadline: float | None) -> None:
        end = None if deadline is None else time.monotonic() + deadline
        while end is None or time.monotonic() < end:
            try:
                stream, data = chunks.get(timeout=POLL)
            except queue.Empty:
                if run.done and chunks.empty():
                    return
                continue
            if stream in self.files:
                self.write(stream, data)
            elif stream == "truncated":
                self.files["stderr"].write(
                    f"\n[sandbox] output shown in the cell stops here ({CELL_OUTPUT_LIMIT // 2**20} MB); "
                    f"the run goes on and keeps its full log: %sandbox logs {run.id}\n")
                self.files["stderr"].flush()
            elif stream == "notice":
                self.files["stderr"].write(f"[sandbox] {data.decode()}\n")
                self.files["stderr"].flush()
            elif stream == "state" and run.done:
                return

    def close(self) -> None:
        for name, decoder in self.decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                self.files[name].write(tail)
                self.files[name].flush()
