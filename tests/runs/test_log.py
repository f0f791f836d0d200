"""LogBuffer: order and streams kept, memory bounded, the whole log readable after a spill,
the disk bounded per log and per kernel, a full disk survived."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from sandbox_magics.runs import LogBuffer, log as log_module
from sandbox_magics.runs.log import Chunk, SpillBudget

UNLIMITED = 10**12


def chunk(i: int, size: int = 495) -> Chunk:
    """The ``i``-th chunk of a flood, ``size`` bytes starting with its number; every 7th on stderr."""
    return ("stderr" if i % 7 == 0 else "stdout", f"{i:06d} ".encode().ljust(size - 1, b"x") + b"\n")


def marker(dropped: int, why: str) -> Chunk:
    return ("stderr", f"\n[sandbox] {dropped:,} bytes of output dropped here ({why})\n".encode())


def disk_usage(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def test_small_log_stays_in_memory_in_order() -> None:
    log = LogBuffer(memory_limit=1024)
    log.append("stdout", b"a\n")
    log.append("stderr", b"b\n")
    log.append("stdout", b"c\n")
    assert not log.spilled
    assert log.read() == b"a\nb\nc\n" and log.read("stdout") == b"a\nc\n" and log.text("stderr") == "b\n"
    assert log.bytes == {"stdout": 4, "stderr": 2}


def test_large_log_spills_to_disk_keeps_everything_and_bounds_memory() -> None:
    log = LogBuffer(memory_limit=10_000)
    chunks = [(("stdout", "stderr")[i % 3 == 0], bytes([65 + i % 26]) * 999 + b"\n") for i in range(500)]
    for stream, data in chunks:
        log.append(stream, data)
    assert log.spilled and log.total_bytes == 500_000
    assert list(log.chunks_iter()) == chunks
    assert sum(len(d) for _, d in log.tail(10**9)) <= 10_000
    assert log.tail(1500) == [(chunks[-2][0], chunks[-2][1][-500:]), chunks[-1]]
    log.close()
    assert list(log.chunks_iter()) == []


def test_flood_past_the_disk_limit_keeps_head_marker_and_tail_exactly(tmp_path: Path) -> None:
    log = LogBuffer(memory_limit=2_000, spill_dir=str(tmp_path), disk_limit=10_000,
                    budget=SpillBudget(UNLIMITED))
    chunks = [chunk(i) for i in range(1000)]  # records of 500 bytes: 10 fill the head, 5 a ring file
    for stream, data in chunks:
        log.append(stream, data)
    capped = "the run's log is capped at 10,000 bytes: log_limit_mb"
    assert list(log.chunks_iter()) == chunks[:10] + [marker(980 * 495, capped)] + chunks[-10:]
    assert log.total_bytes == 495_000 and log.dropped_bytes == 980 * 495
    assert disk_usage(tmp_path) <= 10_000
    assert log.read("stdout") == b"".join(d for s, d in chunks[:10] + chunks[-10:] if s == "stdout")

    chunks += [chunk(i) for i in range(1000, 1003)]  # the older ring file goes, the newer holds 3
    for stream, data in chunks[-3:]:
        log.append(stream, data)
    log.seal()
    assert list(log.chunks_iter()) == chunks[:10] + [marker(985 * 495, capped)] + chunks[-8:]
    assert disk_usage(tmp_path) <= 10_000
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_a_chunk_longer_than_a_ring_file_keeps_its_end(tmp_path: Path) -> None:
    log = LogBuffer(memory_limit=2_000, spill_dir=str(tmp_path), disk_limit=10_000,
                    budget=SpillBudget(UNLIMITED))
    chunks = [chunk(i) for i in range(10)] + [chunk(10, 6_000)]
    for stream, data in chunks:
        log.append(stream, data)
    kept = chunks[-1][1][-2_495:]  # a ring file is 2,500 bytes, 5 of them the record's header
    assert list(log.chunks_iter()) == chunks[:10] + [
        marker(6_000 - 2_495, "the run's log is capped at 10,000 bytes: log_limit_mb"), ("stdout", kept)]
    assert disk_usage(tmp_path) <= 10_000


def test_spent_kernel_budget_stops_spilling_of_a_second_log_which_keeps_its_memory_tail(
        tmp_path: Path) -> None:
    budget = SpillBudget(30_000)
    first, second = (LogBuffer(memory_limit=2_000, spill_dir=str(tmp_path), disk_limit=10**6,
                               budget=budget) for _ in range(2))
    chunks = [chunk(i, 995) for i in range(25)]  # records of 1,000 bytes; 2 chunks stay in memory
    for stream, data in chunks:
        first.append(stream, data)
    assert budget.used == 25_000 and first.dropped_bytes == 0
    for stream, data in chunks[:20]:
        second.append(stream, data)
    spent = "this kernel's logs on disk reached their 30,000 bytes in all"
    assert list(second.chunks_iter()) == chunks[:5] + [marker(13 * 995, spent)] + chunks[18:20]
    assert second.dropped_bytes == 13 * 995 and budget.used == 30_000 == disk_usage(tmp_path)

    first.close()
    second.append(*chunks[20])
    assert budget.used == 5_000 and second.dropped_bytes == 14 * 995, "a stopped log stays stopped"
    assert list(second.chunks_iter())[-2:] == chunks[19:21]


@pytest.mark.parametrize(("code", "why"), [(errno.ENOSPC, "the disk was full"),
                                           (errno.EIO, "writing it to disk failed: Input/output error")])
def test_failed_spill_write_stops_spilling_without_raising_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, why: str) -> None:
    room = 3_200
    write_all = log_module._write_all

    def write_until_full(fd: int, data: bytes) -> None:
        nonlocal room
        written = min(room, len(data))
        write_all(fd, data[:written])
        room -= written
        if written < len(data):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(log_module, "_write_all", write_until_full)
    budget = SpillBudget(UNLIMITED)
    log = LogBuffer(memory_limit=2_000, spill_dir=str(tmp_path), disk_limit=10**6, budget=budget)
    chunks = [chunk(i, 995) for i in range(10)]  # records of 1,000 bytes: the 4th is torn
    for stream, data in chunks:
        log.append(stream, data)
    assert list(log.chunks_iter()) == chunks[:3] + [marker(5 * 995, why)] + chunks[-2:]
    assert log.dropped_bytes == 5 * 995 and log.total_bytes == 10 * 995
    assert disk_usage(tmp_path) == 3_000 == budget.used, "the torn record is cut off"
    log.seal(keep=995)
    assert list(log.chunks_iter()) == chunks[:3] + [marker(6 * 995, why)] + chunks[-1:]


def test_readers_on_other_threads_see_head_marker_then_consecutive_chunks_while_the_ring_turns(
        tmp_path: Path) -> None:
    log = LogBuffer(memory_limit=2_000, spill_dir=str(tmp_path), disk_limit=10_000,
                    budget=SpillBudget(UNLIMITED))
    chunks = [chunk(i) for i in range(5_000)]
    writing = True
    reads: list[int] = []
    failures: list[str] = []

    def read_while_writing() -> None:
        while writing or not reads:
            try:
                got = list(log.chunks_iter())
            except OSError as exc:
                failures.append(repr(exc))
                return
            reads.append(len(got))
            head, marked, tail = got[:10], got[10:11], got[11:]
            if not (marked and marked[0][1].startswith(b"\n[sandbox]")):
                marked, tail = [], got[10:]
            first = int(tail[0][1][:6]) if tail else 10
            if head + tail != chunks[:len(head)] + chunks[first:first + len(tail)]:
                failures.append(f"{len(head)} head chunks, then tail not consecutive from chunk {first}")
            if bool(marked) != (first > 10):
                failures.append(f"marker {'with' if marked else 'without'} a gap before chunk {first}")

    readers = [threading.Thread(target=read_while_writing) for _ in range(2)]
    for reader in readers:
        reader.start()
    for stream, data in chunks:
        log.append(stream, data)
    writing = False
    for reader in readers:
        reader.join()
    assert not failures and reads


def open_descriptors(folder: Path) -> int:
    """This process's descriptors open on files in ``folder`` (other tests' threads may open
    and close descriptors of their own meanwhile)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(f"{folder}/")
        except OSError:
            continue
    return count


def test_sealed_spilled_logs_hold_no_descriptor_and_stay_readable_and_writable(
        tmp_path: Path) -> None:
    logs = []
    for i in range(50):
        log = LogBuffer(memory_limit=1_000, spill_dir=str(tmp_path), disk_limit=4_000,
                        budget=SpillBudget(UNLIMITED))
        for j in range(20):
            log.append(*chunk(i * 20 + j, 300))
        log.seal(keep=500)
        logs.append(log)
    assert all(log.spilled for log in logs) and len(list(tmp_path.iterdir())) >= 100
    assert open_descriptors(tmp_path) == 0
    whole = [chunk(j, 300) for j in range(20)]
    first = list(logs[0].chunks_iter())
    assert first[:6] == whole[:6] and first[-1] == whole[-1]
    logs[0].append("stdout", b"after the seal\n")
    assert logs[0].read().endswith(b"after the seal\n")
    for log in logs:
        log.close()
    assert open_descriptors(tmp_path) == 0 and list(tmp_path.iterdir()) == []
