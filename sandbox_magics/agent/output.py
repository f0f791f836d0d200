"""A run's output kept as it comes, to be replayed from any offset and followed (stdlib only).

A `RunLog` holds the frames of `protocol` that a run's output makes (STDOUT and STDERR as
the run wrote them, in order, then its EXIT frame) in segment files below its folder,
``<root>/output/slot-<k>/``: beside the slot workspaces and outside all of them, so no
file route reaches them and a reset leaves them alone. A segment is named by the output
offset of its first byte (offsets as `protocol` counts them). `RunLog.follow` streams the
frames from any offset, cutting the frame it falls in, then the new ones as they come.

Bounds: a log keeps at most ``limit`` bytes (``--max-output-mb``) in segments of an eighth
of that (a frame is cut where a segment fills); past it, the oldest segments but the first
are dropped, so the head and the latest output stay, and a stream across the hole gets a
DROPPED frame. Where the disk refuses a write (full, over quota), output goes on in
memory, the latest `MEMORY_KEPT` bytes of it. A slot keeps the log of its last run only: the next exec in the slot removes
it, and so does the agent's exit.

A reader never holds the run up: it takes its own descriptor of the segment it reads, so
the log may drop the segment meanwhile, and one that falls further behind than ``limit``
meets a DROPPED frame where the output it missed was let go. Segments are read through the descriptors the
log made them with, never opened again by path, and removed only while their path still
names them: a run, which can write beside its workspace, cannot make the agent serve or
remove another file.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol

SEGMENTS = 8
MIN_SEGMENT = 64 * 1024
MEMORY_SEGMENT = 1024 * 1024
MEMORY_KEPT = 4 * MEMORY_SEGMENT
MARK_EVERY = 64 * 1024
SCAN_READ = 64 * 1024
READ_SIZE = 1024 * 1024
_OUTPUT = (protocol.STDOUT, protocol.STDERR)


@dataclass(eq=False)
class _Segment:
    """Consecutive frames of a log from output offset ``start`` to ``end``: ``size`` bytes
    in a file (``fd``) or in memory (``data``). ``marks`` are (output offset, position) of
    frame starts, one every `MARK_EVERY` bytes, to find an offset without reading it all."""

    number: int
    start: int
    path: Path | None = None
    fd: int | None = None
    data: bytearray | None = None
    size: int = 0
    end: int = 0
    marks: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.end = self.start
        self.marks.append((self.start, 0))

    @property
    def in_memory(self) -> bool:
        return self.data is not None

    def mark_before(self, offset: int) -> tuple[int, int]:
        """The last mark at or before output ``offset``."""
        return self.marks[bisect.bisect_right(self.marks, (offset, float("inf"))) - 1]

    def write(self, frames: bytes) -> None:
        """Add ``frames`` at the end; an `OSError` if the disk refused them (then none of
        them is kept)."""
        if self.data is not None:
            self.data += frames
        else:
            assert self.fd is not None
            try:
                _pwrite_all(self.fd, frames, self.size)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, self.size)
                raise
        self.size += len(frames)

    def close(self) -> None:
        """Close and remove the segment's file (readers keep their own descriptors), if
        its path still names that file: a run may have put another in its place."""
        if self.fd is not None:
            assert self.path is not None
            ours = os.fstat(self.fd)
            with contextlib.suppress(OSError):
                there = os.stat(self.path, follow_symlinks=False)
                if (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino):
                    os.unlink(self.path)
            os.close(self.fd)
            self.fd = None


def _pwrite_all(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


class _Reader:
    """One follower's hold on one segment: a descriptor of its own, or its memory."""

    def __init__(self, segment: _Segment) -> None:
        self.segment = segment
        self._fd = None if segment.fd is None else os.dup(segment.fd)

    async def read(self, position: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``position``; a read past `SCAN_READ` bytes goes to a
        thread (a smaller one, as a live follower's, is served from the page cache)."""
        if self._fd is None:
            assert self.segment.data is not None
            return bytes(self.segment.data[position:position + size])
        if size <= SCAN_READ:
            return os.pread(self._fd, size, position)
        return await asyncio.get_running_loop().run_in_executor(
            None, os.pread, self._fd, size, position)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RunLog:
    """The frames of one run's output, kept in ``folder`` (at most ``limit`` bytes).

    ``size`` is the run's output so far in bytes, ``dropped`` how much of it is no longer
    kept, ``exit`` its EXIT payload once it ended.
    """

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.segment_size = max(MIN_SEGMENT, limit // SEGMENTS)
        self.size = 0
        self.dropped = 0
        self.exit: dict[str, Any] | None = None
        self.removed = False
        self._segments: list[_Segment] = []
        self._count = 0
        self._grew = asyncio.Event()
        self._new_segment()

    @property
    def ended(self) -> bool:
        return self.exit is not None

    def append(self, groups: list[tuple[int, list[bytes]]]) -> None:
        """Keep output: (STDOUT or STDERR, chunks) groups in the order written, a frame
        each, cut where a segment fills."""
        if self.removed:
            return
        for kind, chunks in groups:
            data = memoryview(b"".join(chunks))
            while data:
                room = self._room(self._writable()) - protocol.HEADER.size
                part, data = data[:room], data[room:]
                self._write(protocol.frame(kind, part), len(part))
        self._trim()
        self._grew.set()

    def end(self, exit_info: dict[str, Any]) -> None:
        """Keep the EXIT frame: the run has ended as ``exit_info`` says."""
        if self.removed or self.ended:
            return
        self.exit = dict(exit_info)
        self._writable()
        self._write(protocol.json_frame(protocol.EXIT, self.exit), 0)
        self._grew.set()

    def remove(self) -> None:
        """Drop everything kept; followers end without EXIT."""
        self.removed = True
        for segment in self._segments:
            segment.close()
        self._segments = []
        self._grew.set()

    async def follow(self, offset: int, tick: float) -> AsyncIterator[bytes]:
        """The frames from output ``offset`` (at most `size`) on, those kept and then the
        new ones as they come, up to EXIT; the frame ``offset`` falls in is cut to begin
        there. Yields ``b""`` after ``tick`` seconds without news, so the caller can look
        after its client. Ends without EXIT if the log is removed."""
        segment = self._first_ending_after(offset)
        if segment is None:
            return
        reader = _Reader(segment)
        try:
            if segment.start > offset:
                yield _dropped(offset, segment.start)
                offset = segment.start
            position, header = await _locate(reader, offset)
            if header:
                yield header
            while not self.removed:
                segment = reader.segment
                if position < segment.size:
                    data = await reader.read(position, min(READ_SIZE, segment.size - position))
                    if not data:  # a run cut the file short (it may write where the agent does)
                        return
                    position += len(data)
                    yield data
                elif (after := self._after(segment)) is not None:
                    reader.close()
                    reader, position = _Reader(after), 0
                    if after.start > segment.end:
                        yield _dropped(segment.end, after.start)
                elif self.ended:
                    return
                elif not await self._wait(tick):
                    yield b""
        finally:
            reader.close()

    async def _wait(self, timeout: float) -> bool:
        """Wait for the log to change; False if ``timeout`` seconds passed first."""
        self._grew.clear()
        try:
            await asyncio.wait_for(self._grew.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _first_ending_after(self, offset: int) -> _Segment | None:
        """The first kept segment with output past ``offset``, else the last one."""
        for segment in self._segments:
            if segment.end > offset:
                return segment
        return self._segments[-1] if self._segments else None

    def _after(self, segment: _Segment) -> _Segment | None:
        """The kept segment that comes next after ``segment``, if any yet."""
        return next((s for s in self._segments if s.number > segment.number), None)

    def _room(self, segment: _Segment) -> int:
        return (MEMORY_SEGMENT if segment.in_memory else self.segment_size) - segment.size

    def _writable(self) -> _Segment:
        """The segment to write the next frame to: the last one, or a new one once it has
        no room for a frame with some output; marked every `MARK_EVERY` bytes."""
        segment = self._segments[-1]
        if self._room(segment) <= protocol.HEADER.size:
            return self._new_segment()
        if segment.size - segment.marks[-1][1] >= MARK_EVERY:
            segment.marks.append((self.size, segment.size))
        return segment

    def _write(self, frame: bytes, size: int) -> None:
        """Add ``frame``, holding ``size`` bytes of output, to the last segment, or to a new
        one in memory if the disk refuses it."""
        segment = self._segments[-1]
        try:
            segment.write(frame)
        except OSError:
            segment = self._new_segment(in_memory=True)
            segment.write(frame)
        self.size += size
        segment.end = self.size

    def _new_segment(self, in_memory: bool = False) -> _Segment:
        """Start the next segment: a file, or memory if asked or if the file cannot be made."""
        segment = _Segment(self._count, self.size)
        self._count += 1
        if not in_memory:
            path = self.folder / f"{self.size:016d}.frames"
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with contextlib.suppress(OSError):
                self.folder.mkdir(parents=True, exist_ok=True)
                segment.fd, segment.path = os.open(path, flags, 0o600), path
        if segment.fd is None:
            segment.data = bytearray()
        self._segments.append(segment)
        return segment

    def _trim(self) -> None:
        """Drop the oldest segments but the first and the last while more than ``limit``
        bytes are kept, or more than `MEMORY_KEPT` bytes in memory."""
        for segment in self._segments[1:-1]:
            kept = sum(s.size for s in self._segments)
            in_memory = sum(s.size for s in self._segments if s.in_memory)
            if kept > self.limit or (segment.in_memory and in_memory > MEMORY_KEPT):
                self._segments.remove(segment)
                self.dropped += segment.end - segment.start
                segment.close()


def _dropped(offset: int, resume: int) -> bytes:
    return protocol.json_frame(protocol.DROPPED, {"offset": resume, "dropped": resume - offset})


async def _locate(reader: _Reader, offset: int) -> tuple[int, bytes]:
    """Where output ``offset`` is in the reader's segment: the position to read on from,
    and the header to send first if the offset falls inside a frame (else ``b""``)."""
    done, position = reader.segment.mark_before(offset)
    end = reader.segment.size
    block, at = b"", position
    while position < end and done < offset:
        if position + protocol.HEADER.size > at + len(block):
            block, at = await reader.read(position, SCAN_READ), position
        kind, length = protocol.HEADER.unpack_from(block, position - at)
        if kind not in _OUTPUT:
            break
        if done + length > offset:
            cut = offset - done
            return position + protocol.HEADER.size + cut, protocol.HEADER.pack(kind, length - cut)
        done += length
        position += protocol.HEADER.size + length
    return position, b""
