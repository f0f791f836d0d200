"""Case 3: a command printing 200 MB — through a blocking cell and a --bg run with its live
log view — vs reading the same command's pipe directly: MB/s, kernel RSS growth, widget
messages per second."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.kernel_driver import Kernel, peak_rss, rss

from ._harness import Row, kernel

MB = 2**20
PRINT = ("import sys\nline = b'x' * 1023 + b'\\n'\nwrite = sys.stdout.buffer.write\n"
         "for _ in range({kb}):\n    write(line)\n")


def pipe_rate(size_mb: int) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", PRINT.format(kb=size_mb * 1024)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    total = 0
    while chunk := proc.stdout.read(65536):
        total += len(chunk)
    proc.wait()
    assert total == size_mb * MB
    return size_mb / (time.perf_counter() - start)


def widget_rate(k: Kernel, first: int) -> float:
    """The most update messages any one widget got in one second, from message ``first`` on."""
    times: dict[str, list[float]] = {}
    for t, msg in k.messages[first:]:
        if msg["msg_type"] == "comm_msg" and msg["content"]["data"].get("method") == "update":
            times.setdefault(msg["content"]["comm_id"], []).append(t)
    return max((sum(1 for t in ts if s <= t < s + 1) for ts in times.values() for s in ts), default=0)


def run(quick: bool) -> list[Row]:
    size = 10 if quick else 200
    flood = "%%sandbox python --profile bench {flags}\n" + PRINT.format(kb=size * 1024)
    pipe = pipe_rate(size)
    with kernel(slots=2, sandboxes=1) as k:
        k.execute(flood.replace(str(size * 1024), "1024").format(flags="--bg --name warm"))
        k.execute("_.wait(60)\n%sandbox logs warm")
        k.execute(flood.replace(str(size * 1024), "9216").format(flags=""))
        before = rss(k.pid)
        with peak_rss(k.pid) as peak:
            reply = k.execute(flood.format(flags=""), timeout=900)
        blocking_rate = size / (reply.replied - reply.sent)
        blocking_growth = (peak[0] - before) / MB
        before, first = rss(k.pid), len(k.messages)
        with peak_rss(k.pid) as peak:
            reply = k.execute(flood.format(flags="--bg --name flood"))
            k.execute("_.wait(900)", timeout=900)
            bg_rate = size / (time.monotonic() - reply.sent)
        bg_growth = (peak[0] - before) / MB
        k.drain(1.5)
        updates = widget_rate(k, first)
    rows = []
    for form, rate, growth in (("blocking cell", blocking_rate, blocking_growth),
                               ("--bg run + live log", bg_rate, bg_growth)):
        rows.append(Row("3 streaming", f"{size} MB through a {form} vs the pipe, MB/s",
                        f"{rate:.0f} MB/s", f"{pipe:.0f} MB/s", rate / pipe, "≥ 0.5×", rate / pipe >= 0.5))
        rows.append(Row("3 streaming", f"{form}: kernel RSS growth", f"{growth:.1f} MB", "–", None,
                        "< 64 MB", growth < 64))
    rows.append(Row("3 streaming", "--bg run: widget updates per second (busiest widget)",
                    f"{updates}/s", "–", None, "≤ 10/s", updates <= 10))
    return rows
