"""`LogBuffer`: a run's stdout and stderr, in order, in bounded memory.

Chunks stay in memory up to ``memory_limit`` bytes; past that, the whole log moves to a
spill file and only the most recent ``memory_limit`` bytes stay in memory as a tail. When
the run ends (`seal`) the tail shrinks further, so a long history of runs stays small. The
full log is always readable, in order, with each chunk's stream kept.
"""

from __future__ import annotations

import collections
import os
import struct
import tempfile
import threading
from collections.abc import Iterator

STREAMS = ("stdout", "stderr")
_HEADER = struct.Struct(">BI")
DEFAULT_MEMORY_LIMIT = 4 * 1024 * 1024
SEALED_TAIL = 256 * 1024


class LogBuffer:
    """Append-only log of (stream, bytes) chunks; thread-safe for one writer and many readers."""

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT, spill_dir: str | None = None) -> None:
        self.memory_limit = memory_limit
        self._spill_dir = spill_dir
        self._tail: collections.deque[tuple[str, bytes]] = collections.deque()
        self._tail_bytes = 0
        self._spill: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._lock = threading.Lock()
        self.bytes = {"stdout": 0, "stderr": 0}
        self.chunks = 0

    @property
    def total_bytes(self) -> int:
        return self.bytes["stdout"] + self.bytes["stderr"]

    @property
    def spilled(self) -> bool:
        return self._spill is not None

    def append(self, stream: str, data: bytes) -> None:
        with self._lock:
            self.bytes[stream] += len(data)
            self.chunks += 1
            if self._spill is None and self._tail_bytes + len(data) > self.memory_limit:
                self._start_spill()
            if self._spill is not None:
                self._write(stream, data)
            self._tail.append((stream, data))
            self._tail_bytes += len(data)
            while self._tail_bytes > self.memory_limit and len(self._tail) > 1:
                self._tail_bytes -= len(self._tail.popleft()[1])

    def _start_spill(self) -> None:
        """Move the log to a file (called with the lock held)."""
        self._spill = tempfile.NamedTemporaryFile(
            prefix="sandbox-log-", suffix=".bin", dir=self._spill_dir, delete=False)
        for stream, data in self._tail:
            self._write(stream, data)

    def _write(self, stream: str, data: bytes) -> None:
        assert self._spill is not None
        self._spill.write(_HEADER.pack(STREAMS.index(stream), len(data)))
        self._spill.write(data)

    def chunks_iter(self) -> Iterator[tuple[str, bytes]]:
        """Every chunk from the start, in order (from the spill file once spilled).

        While the run still writes, this reads up to what was written when it was called.
        """
        with self._lock:
            if self._spill is None:
                yield from list(self._tail)
                return
            self._spill.flush()
            path, end = self._spill.name, self._spill.tell()
        with open(path, "rb") as fh:
            while fh.tell() < end:
                kind, length = _HEADER.unpack(fh.read(_HEADER.size))
                yield STREAMS[kind], fh.read(length)

    def seal(self, keep: int = SEALED_TAIL) -> None:
        """The run has ended: keep at most ``keep`` bytes in memory, the rest on disk."""
        with self._lock:
            if self._spill is None and self._tail_bytes > keep:
                self._start_spill()
            if self._spill is not None:
                self._spill.flush()
            while self._tail_bytes > keep and len(self._tail) > 1:
                self._tail_bytes -= len(self._tail.popleft()[1])

    def read(self, stream: str | None = None) -> bytes:
        """The full bytes of one stream, or of both interleaved as produced."""
        return b"".join(data for s, data in self.chunks_iter() if stream in (None, s))

    def text(self, stream: str | None = None) -> str:
        return self.read(stream).decode("utf-8", errors="replace")

    def tail(self, max_bytes: int) -> list[tuple[str, bytes]]:
        """The most recent chunks, at most ``max_bytes`` in all (from memory)."""
        with self._lock:
            out: list[tuple[str, bytes]] = []
            size = 0
            for stream, data in reversed(self._tail):
                if size + len(data) > max_bytes:
                    out.append((stream, data[len(data) - (max_bytes - size):]))
                    break
                out.append((stream, data))
                size += len(data)
            return out[::-1]

    def close(self) -> None:
        """Delete the spill file; the log is gone after this."""
        with self._lock:
            if self._spill is not None:
                self._spill.close()
                os.unlink(self._spill.name)
                self._spill = None
            self._tail.clear()
            self._tail_bytes = 0
