"""--bg runs and their views in a real kernel; widget state read from the kernel's comm messages."""

from __future__ import annotations

import re
from pathlib import Path

from tests.kernel_driver import Kernel


def sent_values(kernel: Kernel, needle: str) -> list[str]:
    """Every HTML value containing ``needle`` that the kernel sent, in order."""
    values = []
    for _, msg in kernel.messages:
        if msg["msg_type"] in ("comm_open", "comm_msg"):
            value = msg["content"]["data"].get("state", {}).get("value")
            if isinstance(value, str) and needle in value:
                values.append(value)
    return values


def html_values(kernel: Kernel, needle: str) -> list[tuple[str, str]]:
    return [(model, state["value"]) for model, state in kernel.widgets().items()
            if isinstance(state.get("value"), str) and needle in state["value"]]


def test_bg_cell_returns_at_once_and_its_live_log_tells_streams_apart(
        kernel: Kernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    reply = kernel.execute(
        "%%sandbox bash --bg --name live-1\n"
        f"while [ ! -e {go} ]; do sleep 0.05; done\n"
        "for i in 1 2 3; do echo tick $i; echo warn $i >&2; sleep 0.5; done")
    assert reply.status == "ok", reply.error
    bundle = reply.data[0]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("Run r") and "live-1" in bundle["text/plain"]
    kernel.execute("run = _")
    free = kernel.execute("print(1 + 1, run.done)")
    assert free.stdout == "2 False\n", "the kernel was not free while the --bg run waited"
    go.touch()
    assert kernel.execute("run.wait(30)").data[0]["text/plain"] == "0"

    def final_state_shown() -> bool:
        return (any(True for _ in html_values(kernel, "tick 3")) and
                any("succeeded" in v for _, v in html_values(kernel, "live-1</b>")))
    assert kernel.drain_until(final_state_shown)
    body = next(value for _, value in html_values(kernel, "tick 3"))
    assert '<span class="sbx-err">warn 2\n</span>tick 3' in body
    header = next(value for _, value in html_values(kernel, "live-1</b>") if "succeeded" in value)
    assert "exit code 0" in header


def test_twenty_bg_runs_on_two_by_four_slots_dashboard_and_history(
        kernel: Kernel, tmp_path: Path) -> None:
    kernel.execute("%sandbox shutdown")
    go = tmp_path / "go"
    dash = kernel.execute("%sandbox status")
    assert "application/vnd.jupyter.widget-view+json" in dash.data[0]
    for i in range(20):
        reply = kernel.execute(
            f"%%sandbox bash --bg --name sweep-{i}\n"
            f"while [ ! -e {go} ]; do sleep 0.05; done; echo {i} > metrics.csv")
        assert reply.status == "ok", reply.error

    def pool_tags() -> list[str]:
        return [re.search(r'<div class="sbx-pool"[^>]*>', v).group(0)  # type: ignore[union-attr]
                for v in sent_values(kernel, 'data-profile="default"')]
    assert kernel.drain_until(lambda: any('data-busy="8"' in tag for tag in pool_tags()), 60), \
        "the dashboard never showed all 8 slots of 2 sandboxes busy"
    go.touch()
    assert kernel.execute("%sandbox wait --timeout 60").stdout == "20 run(s) finished.\n"
    assert kernel.drain_until(lambda: 'data-succeeded="20"' in pool_tags()[-1])
    last = pool_tags()[-1]
    assert 'data-busy="0"' in last and 'data-sandboxes="2"' in last
    assert 'data-free="8"' in last and 'data-queued="0"' in last and 'data-failed="0"' in last
    assert max(int(m) for tag in pool_tags() for m in re.findall(r'data-busy="(\d+)"', tag)) == 8
    reply = kernel.execute("""
        runs = %sandbox runs
        sweep = runs[runs['name'].str.startswith('sweep-', na=False)]
        print(len(sweep), sorted(set(sweep['state'])), sweep[['sandbox', 'slot']].drop_duplicates().shape[0])
        print(sorted(runs.columns))
    """)
    first = reply.stdout.splitlines()[0]
    assert first == "20 ['succeeded'] 8", first
    for column in ("name", "profile", "backend", "sandbox", "slot", "state", "exit_code",
                   "queued", "started", "ended", "wait_s", "run_s", "output_bytes"):
        assert f"'{column}'" in reply.stdout.splitlines()[1]


def test_upload_and_download_flags_move_files(kernel: Kernel, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("input data\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("A")
    reply = kernel.execute(
        f"%%sandbox bash --upload {tmp_path}/data.txt:in/data.txt --upload {tmp_path}/folder "
        f"--download out.txt:{tmp_path}/result.txt\n"
        "cat in/data.txt folder/a.txt; echo; tr a-z A-Z < in/data.txt > out.txt")
    assert reply.status == "ok", reply.error
    assert reply.stdout == "input data\nA\n"
    assert (tmp_path / "result.txt").read_text() == "INPUT DATA\n"


def test_bad_transfer_flags_are_usage_errors(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash --upload /no/such/file\necho hi")
    assert reply.usage_error and "no file or folder '/no/such/file'" in reply.usage_error
    reply = kernel.execute("%%sandbox bash --download ../../etc/passwd\necho hi")
    assert reply.usage_error and "must be relative to the workspace" in reply.usage_error
    reply = kernel.execute("%%sandbox bash --download missing.txt:/tmp/never.txt\necho ran")
    assert reply.status == "ok" and "--download missing.txt: not copied" in reply.stderr


def test_artifacts_survive_slot_reuse_and_preview_csv_as_dataframe(kernel: Kernel, tmp_path: Path) -> None:
    reply = kernel.execute("""
        %%sandbox python --profile tiny --name art-1
        import csv, struct, zlib
        with open("metrics.csv", "w", newline="") as f:
            csv.writer(f).writerows([["step", "loss"], [1, 0.9], [2, 0.5]])
        open("notes.txt", "w").write("hello artifacts")
        open("big.bin", "wb").write(bytes(20_000))
    """)
    assert reply.status == "ok", reply.error
    kernel.execute("%%sandbox bash --profile tiny\nrm -f *; echo reused > other.txt")
    listing = kernel.execute("%sandbox artifacts art-1")
    text = listing.data[0]["text/plain"]
    assert "metrics.csv" in text and "notes.txt" in text and "other.txt" not in text
    big = next(line for line in text.splitlines() if "big.bin" in line)
    assert "False" in big and "over the profile's artifact limit of 0.01 MB" in big
    reply = kernel.execute(f"""
        import sandbox_magics.widgets.artifacts as art
        magics = get_ipython().find_line_magic("sandbox").__self__
        run = magics.client.get_run("art-1")
        metrics = next(a for a in run.artifacts if a.path == "metrics.csv")
        frame = art.preview(metrics)
        print(type(frame).__name__, list(frame.columns), frame.shape)
        print(art.download(metrics, __import__("pathlib").Path({str(tmp_path)!r})).read_text().splitlines()[0])
    """)
    assert reply.stdout.splitlines() == ["DataFrame ['step', 'loss'] (2, 2)", "step,loss"], reply.error


def test_cancel_by_name_and_by_handle(kernel: Kernel) -> None:
    kernel.execute("%%sandbox bash --bg --name to-cancel --no-raise-error\nsleep 60")
    reply = kernel.execute("%sandbox cancel to-cancel")
    assert re.match(r"Run r\d+ \(\S+\): its process group was \w+ \(SIG\w+\).*; its state is cancelled\.",
                    reply.stdout), reply.stdout
    reply = kernel.execute("%%sandbox bash --bg\nsleep 60")
    reply = kernel.execute("run = _\nrun.cancel()\nprint(run.state.value)\ntry:\n    run.wait()\nexcept Exception as e:\n    print(type(e).__name__, e)")
    lines = reply.stdout.splitlines()
    assert lines[0] == "cancelled" and lines[1].startswith("RunFailedError") and "was cancelled" in lines[1]


def test_failed_bg_run_raises_when_waited_on(kernel: Kernel) -> None:
    kernel.execute("%%sandbox bash --bg --name will-fail\nexit 9")
    reply = kernel.execute("%sandbox wait will-fail")
    assert reply.error is not None and reply.error["ename"] == "RunFailedError"
    assert "exited with code 9" in reply.error["evalue"]
    reply = kernel.execute("%sandbox logs will-fail")
    assert "will-fail" in reply.data[0]["text/plain"]


def test_concurrent_runs_logs_never_interleave_and_handles_are_awaitable(kernel: Kernel) -> None:
    kernel.execute("%%sandbox bash --bg --name left\nfor i in $(seq 40); do echo AAAA; sleep 0.01; done")
    kernel.execute("left = _")
    kernel.execute("%%sandbox bash --bg --name right\nfor i in $(seq 40); do echo BBBB >&2; sleep 0.01; done")
    reply = kernel.execute("right = await _\nawait left\nprint(left.stdout.count('AAAA'), right.stderr.count('BBBB'), left.stderr, right.stdout)")
    assert reply.stdout == "40 40  \n", reply.error

    def bodies() -> list[str]:
        return [v for v in sent_values(kernel, "sbx-log") if "AAAA" in v or "BBBB" in v]
    assert kernel.drain_until(lambda: any(v.count("AAAA") == 40 for v in bodies()) and
                              any(v.count("BBBB") == 40 for v in bodies()))
    assert all(("AAAA" in v) != ("BBBB" in v) for v in bodies())
