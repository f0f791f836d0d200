"""LogBuffer: order and streams kept, memory bounded, the whole log readable after a spill."""

from __future__ import annotations

from sandbox_magics.runs import LogBuffer


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
