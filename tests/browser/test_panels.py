"""The panels as a researcher sees them in JupyterLab, in Chromium.

Each test is one defect found by trying the panels in a real browser; see the project's
issue 11. Cells run through JupyterLab's own commands; what is asserted is what the page
shows (text, links, scroll positions, sizes) or what a click does.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.browser.lab import Notebook

PNG_AND_FRIENDS = r'''%%sandbox python --name files
import struct, zlib
def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
raw = b"".join(b"\0" + bytes([200, 30, 30]) * 8 for _ in range(8))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
open("a.png", "wb").write(png)
open("b.csv", "w").write("step,loss\n1,0.9\n2,0.5\n")
open("c.txt", "w").write("plain notes\n")
open("d.csv", "w").write("1,0.25\n2,0.125\n3,0.0625\n")
'''


def wait_text(locator: Any, needle: str, timeout: float = 20) -> str:
    """Wait until ``locator``'s text contains ``needle``; return the text."""
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        text = locator.inner_text()
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared; the text is {text[-2000:]!r}")


def test_artifacts_previews_show_every_selection(notebook: Notebook, screenshots: Path) -> None:
    notebook.run(PNG_AND_FRIENDS)
    cell = notebook.cell(notebook.run("%sandbox artifacts files"))
    select = cell.locator(".widget-select select")
    select.wait_for()
    preview = cell.locator(".sbx-preview")
    labels = {name: next(o for o in select.locator("option").all_inner_texts() if o.startswith(name))
              for name in ("a.png", "b.csv", "c.txt", "d.csv")}
    for name in ("a.png", "b.csv", "c.txt", "a.png", "b.csv", "c.txt", "d.csv"):
        select.select_option(label=labels[name])
        if name == "a.png":
            preview.locator("img").wait_for(timeout=10_000)
        elif name == "b.csv":
            wait_text(preview, "loss", 10)
            assert preview.locator("tbody tr").count() == 2
        elif name == "c.txt":
            wait_text(preview, "plain notes", 10)
        else:
            wait_text(preview, "0.0625", 10)
            # A CSV without a header row keeps its first row as data.
            assert preview.locator("tbody tr").count() == 3, preview.inner_text()
            assert "0.25" in preview.locator("tbody").inner_text()
    notebook.screenshot(screenshots / "artifacts.png", cell)


def test_saved_links_download_the_file_itself(notebook: Notebook) -> None:
    notebook.run("%%sandbox bash --name saver\necho first line; echo second line; "
                 "echo 'a,b' > table.csv; echo '1,2' >> table.csv")
    cell = notebook.cell(notebook.run("%sandbox logs saver"))
    cell.get_by_role("button", name="Save full log").click()
    link = cell.locator("a", has_text="saver.log")
    link.wait_for()
    with notebook.page.expect_download() as info:
        link.click()
    path = info.value.path()
    assert Path(path).read_text() == "first line\nsecond line\n"

    cell = notebook.cell(notebook.run("%sandbox artifacts saver"))
    select = cell.locator(".widget-select select")
    select.select_option(label=next(o for o in select.locator("option").all_inner_texts()
                                    if o.startswith("table.csv")))
    cell.get_by_role("button", name="Download").click()
    link = cell.locator("a", has_text="table.csv")
    link.wait_for()
    with notebook.page.expect_download() as info:
        link.click()
    assert Path(info.value.path()).read_text() == "a,b\n1,2\n"


def body_text(cell: Any) -> str:
    return cell.locator(".sbx-log").inner_text()


def test_controls_answer_while_a_blocking_cell_runs(notebook: Notebook) -> None:
    index = notebook.run("%%sandbox bash --bg --name chatty --no-raise-error\n"
                         "for i in $(seq 2000); do echo line $i; sleep 0.05; done")
    cell = notebook.cell(index)
    wait_text(cell, "line 20")
    gate = notebook.lab.root / f"{notebook.name}.gate"
    blocking = notebook.run(f"%%sandbox bash\nuntil [ -e {gate} ]; do sleep 0.05; done; echo woke",
                            wait=False)
    notebook.page.wait_for_function("() => window.sbxTest.kernelStatus() === 'busy'")
    time.sleep(1.0)
    follow = cell.get_by_role("button", name=re.compile("Follow"))
    follow.click()
    time.sleep(1.5)
    frozen = body_text(cell)
    time.sleep(1.5)
    assert body_text(cell) == frozen, "Follow off did not stop the log while the kernel was busy"
    cell.get_by_role("button", name="Cancel run").click()
    head = wait_text(cell.locator(".sbx-head"), "cancelled", 3)
    assert not re.search(r"(?<![\w-])-\d", head), f"a raw exit code where words belong: {head}"
    # (The kernel's status is no guide: a subshell publishes idle after each message.)
    assert notebook.page.evaluate("i => window.sbxTest.state(i).count", blocking) is None, \
        "the blocking cell had already ended"
    gate.touch()
    notebook.wait_cell(blocking, 60)
    assert "woke" in notebook.cell(blocking).inner_text()


def test_follow_scrolls_shows_its_state_and_tail_lines_apply_when_off(notebook: Notebook) -> None:
    index = notebook.run("%%sandbox bash --bg --name scroller\n"
                         "for i in $(seq 400); do echo row $i; done; sleep 30")
    cell = notebook.cell(index)
    wait_text(cell.locator(".sbx-log"), "row 400")
    gap = cell.locator(".sbx-log").evaluate(
        "e => { const r = document.createRange(); r.selectNodeContents(e);"
        " const box = e.parentElement.getBoundingClientRect();"
        " return r.getBoundingClientRect().bottom - box.bottom; }")
    assert gap < 8, f"the newest lines are not in view ({gap} px below)"
    follow = cell.get_by_role("button", name=re.compile("Follow"))
    assert "on" in follow.inner_text().lower()
    follow.click()
    wait_text(follow, "off", 5)
    cell.locator(".widget-dropdown select").select_option("50")
    end = time.monotonic() + 5
    while body_text(cell).count("\n") > 51 and time.monotonic() < end:
        time.sleep(0.2)
    lines = body_text(cell).strip().splitlines()
    assert len(lines) == 50 and lines[-1] == "row 400", lines[:3]
    notebook.run("%sandbox cancel scroller")


def test_dashboard_is_readable(notebook: Notebook, screenshots: Path) -> None:
    cell = notebook.cell(notebook.run("%sandbox status"))
    notebook.run("%%sandbox bash --bg --name hold-1 --no-raise-error\nsleep 30")
    notebook.run("%%sandbox bash --bg --name hold-2 --no-raise-error\nsleep 30")
    busy = cell.locator(".sbx-grid i.sbx-s-busy")
    expect(busy).to_have_count(2, timeout=20_000)
    box = busy.first.bounding_box()
    assert box["width"] >= 14 and box["height"] >= 14, box
    titles = [busy.nth(i).get_attribute("title") or "" for i in range(busy.count())]
    assert any("hold-1" in t for t in titles) and any("hold-2" in t for t in titles), titles
    legend = cell.locator(".sbx-legend")
    for state in ("free", "busy", "session", "starting", "dead"):
        assert state in legend.inner_text()
    free = cell.locator(".sbx-grid i.sbx-s-free").first
    border = free.evaluate("e => getComputedStyle(e).borderTopColor")
    assert border == "rgb(5, 150, 105)", f"the free slot's border is {border}, not its state's"
    assert contrast_with_white(border) >= 3, border
    assert not re.search(r"https?://", cell.inner_text()), cell.inner_text()
    notebook.screenshot(screenshots / "dashboard.png", cell)
    notebook.run("%sandbox cancel hold-1\n%sandbox cancel hold-2")


def channels(css: str) -> list[float]:
    """Red, green, blue and alpha of a computed colour ("rgb(…)" or "rgba(…)")."""
    values = [float(v) for v in re.findall(r"[\d.]+", css)]
    return values[:3] + [values[3] if len(values) > 3 else 1.0]


def luminance(rgb: list[float]) -> float:
    def lin(c: float) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    return 0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2])


def contrast(text: str, background: str) -> float:
    """WCAG contrast of ``text`` over an opaque ``background``, the text's alpha blended in
    (JupyterLab's secondary text colours are translucent)."""
    *color, alpha = channels(text)
    under = channels(background)[:3]
    seen = [alpha * c + (1 - alpha) * b for c, b in zip(color, under)]
    light, dark = sorted((luminance(seen), luminance(under)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def contrast_with_white(css: str) -> float:
    return contrast(css, "rgb(255, 255, 255)")


# The text colour of an element and the colour of the first opaque background behind it.
TEXT_ON_BACKGROUND = """e => { let b = e;
  while (b && ['rgba(0, 0, 0, 0)', 'transparent'].includes(getComputedStyle(b).backgroundColor))
    b = b.parentElement;
  return [getComputedStyle(e).color, b ? getComputedStyle(b).backgroundColor : 'rgb(255, 255, 255)']; }"""


def set_theme(page: Any, theme: str) -> None:
    """Switch JupyterLab's theme and wait until it applies (its splash screen has gone)."""
    page.evaluate("t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})",
                  theme)
    light = "false" if "Dark" in theme else "true"
    page.wait_for_function("l => document.body.dataset.jpThemeLight === l"
                           " && !document.querySelector('#jupyterlab-splash')", arg=light)


def test_panels_are_readable_in_the_dark_theme(notebook: Notebook, screenshots: Path) -> None:
    dashboard = notebook.output(notebook.run("%sandbox status"))
    ended = notebook.output(notebook.run(
        "%%sandbox bash --bg --name dark\necho in-the-dark | tee notes.txt"))
    going = notebook.output(notebook.run(
        "%%sandbox bash --bg --name dark-going --no-raise-error\necho going; sleep 60"))
    wait_text(ended.locator(".sbx-log"), "in-the-dark")
    wait_text(ended.locator(".sbx-head"), "succeeded")
    wait_text(going.locator(".sbx-log"), "going")
    files = notebook.output(notebook.run("%sandbox artifacts dark"))
    wait_text(files, "notes.txt")
    runs = notebook.output(notebook.run("%sandbox runs"))
    set_theme(notebook.page, "JupyterLab Dark")
    try:
        for output, selector in (
                (dashboard, ".sbx-id"), (dashboard, ".sbx-legend span"),
                (dashboard, ".sbx-pool .sbx-muted"), (dashboard, ".sbx-events"),
                (ended, ".sbx-head .sbx-muted"), (ended, ".sbx-head b[style]"),
                (ended, ".sbx-log"), (going, ".sbx-head b[style]"),
                (files, ".widget-html b"), (files, "select"), (runs, "td"), (runs, "th")):
            text, background = output.locator(selector).first.evaluate(TEXT_ON_BACKGROUND)
            assert contrast(text, background) >= 4.5, (selector, text, background)
        notebook.screenshot(screenshots / "dark-theme.png", notebook.page.locator(".jp-Notebook"))
    finally:
        set_theme(notebook.page, "JupyterLab Light")
        notebook.run("%sandbox cancel dark-going")


# The nearest box between a table and its cell that scrolls sideways: its class, the room
# its horizontal scrollbar takes, its height, the window's, and where its head is.
SIDEWAYS_SCROLLER = """t => { for (let e = t.parentElement; e && !e.classList.contains('jp-Cell');
     e = e.parentElement) { const s = getComputedStyle(e);
  if (['auto', 'scroll'].includes(s.overflowX) && e.scrollWidth > e.clientWidth) {
    const bar = e.offsetHeight - e.clientHeight - parseFloat(s.borderTopWidth)
                - parseFloat(s.borderBottomWidth);
    return {name: e.className, bar, height: e.getBoundingClientRect().height,
            window: window.innerHeight}; } }
  return null; }"""
MANY_RUNS = ("client = get_ipython().find_magic('sandbox').__self__.client\n"
             "for run in [client.submit('true', name=f'many-{i}') for i in range(40)]:\n"
             "    run.join()")


def test_runs_table_is_clean(notebook: Notebook, screenshots: Path) -> None:
    notebook.run("%%sandbox bash\necho unnamed")
    notebook.run(MANY_RUNS)
    notebook.run("%%sandbox bash --bg --name still-going --no-raise-error\nsleep 60")
    cell = notebook.cell(notebook.run("%sandbox runs"))
    table = cell.locator("table")
    table.wait_for()
    text = table.inner_text()
    assert "NaN" not in text and "None" not in text and "NA>" not in text, text
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", text), text
    rows = table.locator("tbody tr")
    heights = {round(rows.nth(i).bounding_box()["height"]) for i in range(rows.count())}
    assert max(heights) < 30, f"rows wrap: {heights}"
    names = table.locator("thead tr").first.locator("th").all_inner_texts()
    going = rows.filter(has_text="still-going").locator("th, td").all_inner_texts()
    assert going[names.index("exit_code")].strip() == "", going
    # Wider than the notebook: it scrolls sideways in a box of its own, whose scrollbar is
    # in view with the table's head (not 40 rows below it).
    box = table.evaluate(SIDEWAYS_SCROLLER)
    assert box is not None and "sbx-runs" in box["name"], f"the table is cut off: {box}"
    assert box["bar"] > 0, f"no visible scrollbar: {box}"
    assert box["height"] < box["window"], f"the scrollbar is below the window: {box}"
    scroller = cell.locator(".sbx-runs")
    scroller.evaluate("e => { e.scrollTop = e.scrollHeight; }")
    head, top = (scroller.locator("thead").bounding_box()["y"], scroller.bounding_box()["y"])
    assert abs(head - top) < 2, "the column names scrolled away with the rows"
    notebook.screenshot(screenshots / "runs.png", cell)
    notebook.run("%sandbox cancel still-going")


def kept_run(notebook: Notebook) -> int:
    index = notebook.run("%%sandbox bash --bg --name kept\necho kept-line-1; echo kept-line-2")
    wait_text(notebook.output(index), "succeeded")
    wait_text(notebook.output(index), "kept-line-2")
    notebook.save()
    return index


def test_reopen_after_a_kernel_restart_shows_the_last_state(notebook: Notebook) -> None:
    index = kept_run(notebook)
    notebook.page.evaluate("() => window.sbxTest.nb().sessionContext.session.kernel.restart()")
    notebook.wait_idle(60)
    notebook.open()
    text = wait_text(notebook.output(index), "kept-line-2", 10)
    assert "Error displaying widget" not in text and "succeeded" in text


def test_reload_while_the_kernel_is_busy_shows_the_last_state(notebook: Notebook) -> None:
    index = kept_run(notebook)
    started = time.monotonic()
    notebook.run("%%sandbox bash\nsleep 25", wait=False)
    notebook.page.wait_for_function("() => window.sbxTest.kernelStatus() === 'busy'")
    notebook.save()
    notebook.open(wait_idle=False)
    # The panel comes from the kernel (the saved state is read only after it answers), and
    # the status bar's comm is live too, while the blocking cell still runs.
    text = wait_text(notebook.output(index), "kept-line-2", 8)
    assert "Loading widget" not in text
    wait_text(notebook.page.locator(".sbx-lab-status"), "sandbox ", 5)
    assert time.monotonic() - started < 20, "the blocking cell (25 s) may have ended first"


def visible_controls(cell: Any) -> int:
    return cell.evaluate("""el => [...el.querySelectorAll('button, select, input')]
        .filter(b => b.offsetParent !== null).length""")


def broken_link_icons(cell: Any) -> int:
    return cell.evaluate("""el => [...el.querySelectorAll(
        '.jupyter-widgets-disconnected:not(.sbx-panel)')]
        .filter(e => !['none', '""', 'normal'].includes(getComputedStyle(e, '::before').content)
                     && getComputedStyle(e, '::before').display !== 'none').length""")


def test_a_panel_restored_after_a_restart_is_a_clear_static_snapshot(
        notebook: Notebook, screenshots: Path) -> None:
    index = notebook.run("%%sandbox bash --bg --name restored\necho restored-line; sleep 300")
    wait_text(notebook.output(index), "restored-line")
    notebook.save()
    notebook.page.evaluate("() => window.sbxTest.nb().sessionContext.session.kernel.restart()")
    notebook.wait_idle(60)
    notebook.open()
    output = notebook.output(index)
    assert "restored-line" in wait_text(output, "restored-line", 15)
    notice = output.evaluate("""el => [...el.querySelectorAll('.sbx-panel')]
        .map(p => getComputedStyle(p, '::before').content + getComputedStyle(
                  p.querySelector('.sbx-live'), '::after').content).join()""")
    assert "before the restart" in notice and "when the notebook was saved" in notice, notice
    assert visible_controls(output) == 0, "a restored panel offers controls that do nothing"
    assert broken_link_icons(output) == 0
    notebook.screenshot(screenshots / "restored-panel.png", output)


# A file list's box, the height of its first row (0 in a drop-down, whose options are not
# laid out) and the width of that row's text in the list's font.
LIST_BOX = """s => { const pen = document.createElement('canvas').getContext('2d');
  pen.font = getComputedStyle(s).font; const box = s.getBoundingClientRect();
  return [{width: box.width, height: box.height}, s.options[0].getBoundingClientRect().height,
          pen.measureText(s.options[0].text).width]; }"""


def test_artifacts_of_a_running_run_say_when_they_come_then_list_them(
        notebook: Notebook, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    notebook.run(f"%%sandbox bash --bg --name later\necho x > out.txt\n"
                 f"while [ ! -e {gate} ]; do sleep 0.1; done")
    cell = notebook.cell(notebook.run("%sandbox artifacts later"))
    wait_text(cell, "collected when it ends", 15)
    assert visible_controls(cell) == 0, "an empty file list and a Download button before the end"
    gate.touch()
    select = cell.locator(".widget-select select")
    select.wait_for(state="visible", timeout=20_000)
    wait_text(cell, "1 file(s)", 10)
    assert select.locator("option").all_inner_texts()[0].startswith("out.txt")
    box, row, text = select.evaluate(LIST_BOX)
    assert row > 0, "the one file is hidden in a drop-down, not shown in a list"
    assert box["height"] <= 2 * row + 12, f"the list is taller than its one file: {box}, {row}"
    assert text <= box["width"] <= text + 80, f"the list is not as wide as its file: {box}, {text}"
