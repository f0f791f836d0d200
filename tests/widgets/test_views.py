"""Views without a kernel: tail rendering, the dashboard grid at scale, text fallbacks."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from sandbox_magics.pool import PoolStatus, SandboxState, SandboxStatus, SlotState
from sandbox_magics.runs import Run, RunSpec, RunState
from sandbox_magics.runs.registry import history_frame
from sandbox_magics.widgets import RunLogView
from sandbox_magics.widgets._html import LEGEND_STATES
from sandbox_magics.widgets.dashboard import render
from sandbox_magics.widgets.run_log import tail_lines


def no_poll(interval: float, callback: Any) -> Any:
    class Handle:
        def cancel(self) -> None:
            pass
    return Handle()


def make_run() -> Run:
    run = Run("r7", RunSpec("echo", name="demo"), "local")
    for i in range(300):
        run._output("stderr" if i % 10 == 0 else "stdout", f"line {i}\n".encode())
    return run


def test_tail_keeps_the_last_lines_and_their_streams() -> None:
    pieces = tail_lines(make_run(), 3)
    assert pieces == [("stdout", "line 297\n"), ("stdout", "line 298\n"), ("stdout", "line 299\n")]
    pieces = tail_lines(make_run(), 11)
    assert pieces[0] == ("stdout", "line 289\n") and ("stderr", "line 290\n") in pieces


def test_dashboard_renders_ten_thousand_slots_as_one_compact_string() -> None:
    slots = tuple(SlotState.BUSY if j % 2 else SlotState.FREE for j in range(10))
    status = [PoolStatus("big", "local", 10, 1000, None, 3, tuple(
        SandboxStatus(f"big-{i}", SandboxState.READY, slots, (None,) * 10) for i in range(1000)))]
    html = render(status, {})
    assert html.count("<i ") == 10_000 + len(LEGEND_STATES)  # the slots and the legend
    assert len(html) < 400_000 and "title=" not in html
    assert 'data-busy="5000"' in html and 'data-free="5000"' in html and 'data-queued="3"' in html


def test_views_fall_back_to_text_without_ipywidgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    run = make_run()
    run._assign("default-1", 0, "default-1")
    run._finish(RunState.FAILED, 2)
    view = RunLogView(run, no_poll)
    assert view.widget is None
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert bundle["text/plain"].startswith("Run r7 (demo, profile default): failed, exit code 2")
    assert "line 299" in bundle["text/plain"]


def test_log_view_escapes_output_html() -> None:
    run = Run("r8", RunSpec("echo"), "local")
    run._output("stdout", b"<script>alert(1)</script>\n")
    view = RunLogView(run, no_poll)
    view.widget
    assert "<script>" not in view._body.value and "&lt;script&gt;" in view._body.value


def test_runs_table_html_leaves_a_running_runs_exit_code_blank() -> None:
    from sandbox_magics.runs import RunRegistry
    from sandbox_magics.widgets.runs_table import tidy
    registry = RunRegistry()
    going, ended = Run("r1", RunSpec("sleep 9"), "local"), Run("r2", RunSpec("exit 3"), "local")
    for run in (going, ended):
        run._assign("default-1", 0, "default-1")
        registry.add(run)
    ended._finish(RunState.FAILED, 3)
    html = tidy(history_frame([run.as_row() for run in registry]))._repr_html_()
    assert "NA" not in html and "<td>3</td>" in html


@pytest.mark.parametrize(("csv_text", "header"), [
    (b"city,country\nParis,France\nLima,Peru\n", True),    # all text, with its names
    (b"loss,acc\n0.5,0.9\n0.25,0.95\n", True),
    (b"0.5,0.9\n0.25,0.95\n", False),                      # numbers only: no names
    (b"run-1,0.5\nrun-2,0.25\n", False),                    # a number in the first row
    (b'"a, b",c\n1,2\n', True),
    (b",loss\n0,0.5\n1,0.25\n", True),                   # pandas' to_csv: an unnamed index
    (b"split,status\ntrain,ok\ntest,ok\n", True),
    (b"train,ok\ntest,ok\ntrain,failed\n", False),         # all text, its values recur
    (b"ok,ok\nok,failed\n", False)])                       # names are distinct
def test_csv_header_is_told_apart_for_text_and_number_columns(csv_text: bytes, header: bool) -> None:
    from sandbox_magics.widgets.artifacts import has_header
    assert has_header(csv_text, ",") is header


@pytest.mark.parametrize(("count", "rows"), [(0, 2), (1, 2), (3, 3), (8, 8), (50, 8)])
def test_file_list_has_a_row_a_file_and_is_never_a_drop_down(count: int, rows: int) -> None:
    from sandbox_magics.widgets.artifacts import list_rows
    assert list_rows(count) == rows


def test_file_list_is_as_wide_as_its_longest_label_up_to_a_limit() -> None:
    from sandbox_magics.widgets.artifacts import MAX_WIDTH_CH, list_width
    assert list_width(["a.png  (74 B)", "out.txt  (2 B)"]) == "18ch"
    assert list_width(["x" * 500]) == f"{MAX_WIDTH_CH}ch"
