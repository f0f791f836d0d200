"""A run printing 200 MB: bounded kernel memory (measured from outside), throttled widget
updates, and the whole log still downloadable."""

from __future__ import annotations

from pathlib import Path

from tests.kernel_driver import Kernel, peak_rss, rss

MB = 2**20
FLOOD = ("%%sandbox python {flags}\n"
         "import sys\nline = b'x' * 1023 + b'\\n'\nwrite = sys.stdout.buffer.write\n"
         "for _ in range(200 * 1024):\n    write(line)\n")


def warm_up(k: Kernel) -> None:
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    k.execute(FLOOD.replace("200 * 1024", "1024").format(flags="--bg --name warm"))
    k.execute("_.wait(60)\n%sandbox logs warm")
    k.execute(FLOOD.replace("200 * 1024", "9 * 1024").format(flags=""))


def test_bg_run_printing_200mb_keeps_kernel_memory_and_widget_traffic_bounded(
        fresh_kernel: Kernel, tmp_path: Path) -> None:
    k = fresh_kernel
    warm_up(k)
    before = rss(k.pid)
    first = len(k.messages)
    with peak_rss(k.pid) as peak:
        reply = k.execute(FLOOD.format(flags="--bg --name flood"))
        assert reply.status == "ok"
        k.execute("run = _")
        done = k.execute("run.wait(600); print(run.log.total_bytes, run.log.spilled)", timeout=600)
    assert done.stdout == f"{200 * MB} True\n", done.error
    growth = peak[0] - before
    print(f"kernel RSS growth {growth / MB:.1f} MB")
    assert growth < 64 * MB, f"kernel RSS grew by {growth / MB:.1f} MB"
    k.drain(1.5)
    updates: dict[str, list[float]] = {}
    for _, msg in k.messages[first:]:
        if msg["msg_type"] == "comm_msg" and msg["content"]["data"].get("method") == "update":
            sent_at = msg["header"]["date"].timestamp()
            updates.setdefault(msg["content"]["comm_id"], []).append(sent_at)
    busiest = max(updates.values(), key=len)
    per_second = max(sum(1 for t in busiest if start <= t < start + 1) for start in busiest)
    print(f"busiest widget: {per_second} updates in one second, {len(busiest)} in all")
    assert per_second <= 10, f"{per_second} updates in one second (kernel clock) for one widget"
    saved = k.execute(f"""
        magics = get_ipython().find_line_magic("sandbox").__self__
        view = magics.log_view(run)
        view.directory = __import__("pathlib").Path({str(tmp_path)!r})
        print(view.save().stat().st_size)
    """)
    assert saved.stdout == f"{200 * MB}\n", saved.error


def test_blocking_cell_printing_200mb_shows_a_bounded_part_and_keeps_memory_bounded(
        fresh_kernel: Kernel) -> None:
    k = fresh_kernel
    warm_up(k)
    before = rss(k.pid)
    with peak_rss(k.pid) as peak:
        reply = k.execute(FLOOD.format(flags=""), timeout=600)
    assert reply.status == "ok", reply.error
    assert len(reply.stdout) <= 8 * MB
    assert "output shown in the cell stops here" in reply.stderr
    growth = peak[0] - before
    print(f"kernel RSS growth {growth / MB:.1f} MB")
    assert growth < 64 * MB, f"kernel RSS grew by {growth / MB:.1f} MB"
    assert k.execute("print(_ is None)").status == "ok"
