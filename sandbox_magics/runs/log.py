"""`LogBuffer`: a run's stdout and stderr, in order, in bounded memory and bounded disk.

Chunks stay in memory up to ``memory_limit`` bytes; past that, the log moves to spill files
and only the most recent ``memory_limit`` bytes stay in memory as a tail. When the run ends
(`seal`) the tail shrinks further, so a long history of runs stays small.

On disk one log takes at most ``disk_limit`` bytes (the profile's ``log_limit_mb``), record
headers included. Its first half holds the head of the log. Once the head is full, the log
goes on into a ring of two files of a quarter of the limit each: when the newer one is full
the older one is deleted, so the last quarter to half of the limit stays. The bytes in
between are dropped.

Every log of the kernel (the process) also draws on one `SpillBudget`: `DEFAULT_BUDGET`, or
half the space free where the first log spills if that is less. When the budget is spent, or
when writing fails (the disk is full), a log stops spilling for good: the disk keeps its head,
its ring files are deleted, and its tail is the one in memory. Nothing is raised to the writer.

Reading the full log gives, in order and with each chunk's stream: the head; then, if bytes
were dropped, one stderr line saying how many and why; then the tail. `total_bytes` counts
everything the run produced, `dropped_bytes` what the full log is missing.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO, ClassVar

STREAMS = ("stdout", "stderr")
_HEADER = struct.Struct(">BI")
MB = 2**20
DEFAULT_MEMORY_LIMIT = 4 * MB
DEFAULT_DISK_LIMIT = 1024 * MB
MIN_DISK_LIMIT = 1024
DEFAULT_BUDGET = 8 * 1024 * MB
SEALED_TAIL = 256 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

Chunk = tuple[str, bytes]


def _size(n: int) -> str:
    if n < MB:
        return f"{n:,} bytes"
    return f"{n / MB:,.1f}".removesuffix(".0") + " MB"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_records(fh: BinaryIO, end: int) -> Iterator[Chunk]:
    while fh.tell() < end:
        kind, length = _HEADER.unpack(fh.read(_HEADER.size))
        yield STREAMS[kind], fh.read(length)


class SpillBudget:
    """Bytes that the spill files of all logs drawing on it may hold together; thread-safe."""

    _kernel: ClassVar[SpillBudget | None] = None
    _kernel_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._used = 0
        self._lock = threading.Lock()

    @classmethod
    def for_kernel(cls, folder: str) -> SpillBudget:
        """The budget of every log in this process, made on the first call: `DEFAULT_BUDGET`,
        or half the space then free in ``folder`` if that is less."""
        with cls._kernel_lock:
            if cls._kernel is None:
                limit = DEFAULT_BUDGET
                with contextlib.suppress(OSError):
                    limit = min(limit, shutil.disk_usage(folder).free // 2)
                cls._kernel = cls(limit)
            return cls._kernel

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes if they fit under the limit; False, taking nothing, if not."""
        with self._lock:
            if self._used + size > self.limit_bytes:
                return False
            self._used += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._used -= size

    def describe(self) -> str:
        return f"this kernel's logs on disk reached their {_size(self.limit_bytes)} in all"


class _SpillFile:
    """One append-only file of (stream, bytes) records of at most ``limit`` bytes, charged
    to a budget. Records are only appended, and the file only deleted, never rewritten, so
    a reader that opened it keeps a consistent view."""

    def __init__(self, directory: str | None, budget: SpillBudget, limit: int) -> None:
        fd, self.path = tempfile.mkstemp(prefix="sandbox-log-", suffix=".bin", dir=directory)
        self._fd: int | None = fd
        self._budget = budget
        self.limit = limit
        self.size = 0
        self.payload = 0

    def fits(self, length: int) -> bool:
        return self.size + _HEADER.size + length <= self.limit

    def append(self, stream: str, data: bytes) -> bool:
        """Write one record; False if the budget has no room for it.

        Raises:
            OSError: the write failed; the file is cut back to its whole records.
        """
        record = _HEADER.pack(STREAMS.index(stream), len(data)) + data
        if not self._budget.reserve(len(record)):
            return False
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            _write_all(self._fd, record)
        except OSError:
            self._budget.release(len(record))
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
            raise
        self.size += len(record)
        self.payload += len(data)
        return True

    def records(self, files: contextlib.ExitStack) -> Iterator[Chunk]:
        """The records written so far; the file is opened now, into ``files``."""
        return _read_records(files.enter_context(open(self.path, "rb")), self.size)

    def close_writer(self) -> None:
        """Let go of the write descriptor (a sealed log writes no more); the file stays,
        readers open it by path, and a later `append` opens it again."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def remove(self) -> None:
        """Close and delete the file and give its bytes back to the budget; never raises."""
        self.close_writer()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._budget.release(self.size)


class LogBuffer:
    """Append-only log of (stream, bytes) chunks; thread-safe for one writer and many readers.

    ``disk_limit``: bytes the log may take on disk (at least `MIN_DISK_LIMIT`). ``budget``:
    shared by the logs it is given to; by default the kernel's (`SpillBudget.for_kernel`).
    """

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT, spill_dir: str | None = None,
                 disk_limit: int = DEFAULT_DISK_LIMIT, budget: SpillBudget | None = None) -> None:
        if disk_limit < MIN_DISK_LIMIT:
            raise ValueError(f"A log's disk limit must be at least {MIN_DISK_LIMIT} bytes, "
                             f"not {disk_limit}.")
        self.memory_limit = memory_limit
        self.disk_limit = disk_limit
        self._spill_dir = spill_dir
        self._budget = budget or SpillBudget.for_kernel(spill_dir or tempfile.gettempdir())
        self._tail: collections.deque[Chunk] = collections.deque()
        self._tail_bytes = 0
        self._spilled = False
        self._head: _SpillFile | None = None
        self._ring: list[_SpillFile] = []
        self._head_full = False
        self._stopped = False
        self._closed = False
        self._reasons: list[str] = []
        self._lock = threading.Lock()
        self.bytes = {"stdout": 0, "stderr": 0}
        self.chunks = 0

    @property
    def total_bytes(self) -> int:
        return self.bytes["stdout"] + self.bytes["stderr"]

    @property
    def spilled(self) -> bool:
        """Whether the log outgrew memory (its full form is, or was, on disk)."""
        return self._spilled

    @property
    def dropped_bytes(self) -> int:
        """Bytes the run produced that the full log no longer holds."""
        with self._lock:
            return self._layout()[3]

    def append(self, stream: str, data: bytes) -> None:
        with self._lock:
            self.bytes[stream] += len(data)
            self.chunks += 1
            if not self._spilled and self._tail_bytes + len(data) > self.memory_limit:
                self._start_spill()
            if self._spilled:
                self._spill(stream, data)
            self._tail.append((stream, data))
            self._tail_bytes += len(data)
            self._trim_tail(self.memory_limit)

    def _trim_tail(self, keep: int) -> None:
        while self._tail_bytes > keep and len(self._tail) > 1:
            self._tail_bytes -= len(self._tail.popleft()[1])

    def _start_spill(self) -> None:
        """Move the log to disk (called with the lock held, as are the methods below)."""
        self._spilled = True
        for stream, data in self._tail:
            self._spill(stream, data)

    def _spill(self, stream: str, data: bytes) -> None:
        """Write one chunk to the head while it has room, else to the ring; on a refusal
        of the budget or a failed write, stop spilling."""
        if self._stopped:
            return
        try:
            if self._head is None:
                self._head = _SpillFile(self._spill_dir, self._budget, self.disk_limit // 2)
            if not self._head_full and self._head.fits(len(data)):
                written = self._head.append(stream, data)
            else:
                written = self._ring_append(stream, data)
        except OSError as exc:
            self._stop("the disk was full" if exc.errno in _DISK_FULL
                       else f"writing it to disk failed: {exc.strerror or exc}")
        else:
            if not written:
                self._stop(self._budget.describe())

    def _ring_append(self, stream: str, data: bytes) -> bool:
        if not self._head_full:
            self._head_full = True
            self._reasons.append(f"the run's log is capped at {_size(self.disk_limit)}: log_limit_mb")
        limit = (self.disk_limit - self.disk_limit // 2) // 2
        data = data[max(len(data) - (limit - _HEADER.size), 0):]
        if not self._ring or not self._ring[-1].fits(len(data)):
            if len(self._ring) == 2:
                self._ring.pop(0).remove()
            self._ring.append(_SpillFile(self._spill_dir, self._budget, limit))
        return self._ring[-1].append(stream, data)

    def _stop(self, reason: str) -> None:
        """Spill no more: keep the head on disk, the tail only in memory."""
        self._stopped = True
        self._reasons.append(reason)
        for spill in self._ring:
            spill.remove()
        self._ring.clear()

    def _memory_from(self, offset: int) -> list[Chunk]:
        """The chunks in memory from byte ``offset`` of the log on, the first one cut there."""
        out: list[Chunk] = []
        start = self.total_bytes
        for stream, data in reversed(self._tail):
            start -= len(data)
            if start + len(data) <= offset:
                break
            out.append((stream, data[max(offset - start, 0):]))
        return out[::-1]

    def _layout(self) -> tuple[list[_SpillFile], list[_SpillFile], list[Chunk], int]:
        """Where the full log is now: (head files, tail files, tail chunks in memory,
        bytes dropped between head and tail)."""
        head = [self._head] if self._head else []
        kept = sum(spill.payload for spill in head + self._ring)
        memory: list[Chunk] = []
        if self._stopped or not self._spilled:
            memory = self._memory_from(kept)
            kept += sum(len(data) for _, data in memory)
        return head, list(self._ring), memory, self.total_bytes - kept

    def chunks_iter(self) -> Iterator[tuple[str, bytes]]:
        """Every chunk from the start, in order: the head, the line saying what was dropped,
        the tail.

        While the run still writes, this reads up to what was written when it was called.
        """
        with contextlib.ExitStack() as files:
            with self._lock:
                head, ring, memory, dropped = self._layout()
                parts: list[Iterable[Chunk]] = [spill.records(files) for spill in head]
                if dropped and not self._closed:
                    parts.append([("stderr", f"\n[sandbox] {dropped:,} bytes of output dropped here "
                                             f"({'; '.join(self._reasons)})\n".encode())])
                parts += [spill.records(files) for spill in ring]
                parts.append(memory)
            for part in parts:
                yield from part

    def seal(self, keep: int = SEALED_TAIL) -> None:
        """The run has ended: keep at most ``keep`` bytes in memory, the rest on disk, and
        hold no open descriptor for it (readers open its spill files by path)."""
        with self._lock:
            if not self._spilled and self._tail_bytes > keep:
                self._start_spill()
            self._trim_tail(keep)
            for spill in ([self._head] if self._head else []) + self._ring:
                spill.close_writer()

    def read(self, stream: str | None = None) -> bytes:
        """The full bytes of one stream, or of both interleaved as produced."""
        return b"".join(data for s, data in self.chunks_iter() if stream in (None, s))

    def text(self, stream: str | None = None) -> str:
        return self.read(stream).decode("utf-8", errors="replace")

    def tail(self, max_bytes: int) -> list[tuple[str, bytes]]:
        """The most recent chunks, at most ``max_bytes`` in all (from memory)."""
        with self._lock:
            return self._memory_from(self.total_bytes - max_bytes)

    def close(self) -> None:
        """Delete the spill files; the log is gone after this."""
        with self._lock:
            self._closed = True
            for spill in ([self._head] if self._head else []) + self._ring:
                spill.remove()
            self._head = None
            self._ring.clear()
            self._tail.clear()
            self._tail_bytes = 0
