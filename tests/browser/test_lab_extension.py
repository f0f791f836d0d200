"""The JupyterLab extension: the `sandbox N/M` status-bar item and the "Sandboxes" sidebar,
fed by the comm that ``%load_ext sandbox_magics`` registers, in Chromium."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tests.browser.lab import JupyterLab, Notebook, write_notebook
from tests.browser.test_panels import wait_text


def status_text(page: Any) -> str:
    item = page.locator(".sbx-lab-status")
    return item.inner_text() if item.count() and item.is_visible() else ""


def wait_for(predicate: Any, timeout: float = 15, message: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(message or "condition never held")


def test_labextension_is_enabled(lab: JupyterLab) -> None:
    status, _, body = lab.fetch("/lab/api/extensions")
    names = {e["name"]: e for e in __import__("json").loads(body)}
    assert "sandbox-magics" in names and names["sandbox-magics"]["enabled"], list(names)


def test_status_bar_and_sidebar_follow_the_kernel_and_answer_while_busy(
        lab: JupyterLab, page: Any, screenshots: Path) -> None:
    plain = Notebook(lab, page, "without_extension.ipynb")
    plain.run("1 + 1")
    time.sleep(1.5)
    assert status_text(page) == "", "the status bar shows sandboxes for a kernel without them"

    nb = Notebook(lab, page, "with_extension.ipynb")
    nb.run("%load_ext sandbox_magics")
    wait_for(lambda: status_text(page) == "sandbox 0/0", 10, "no status-bar item after %load_ext")
    nb.run("%%sandbox bash --bg --name sidebar-a --no-raise-error\nsleep 60")
    nb.run("%%sandbox bash --bg --name sidebar-b --no-raise-error\nsleep 60")
    wait_for(lambda: re.fullmatch(r"sandbox 2/\d+", status_text(page)) is not None, 20,
             f"status bar says {status_text(page)!r}")

    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    panel = page.locator("#sandbox-magics-sidebar")
    wait_text(panel, "sidebar-b", 10)
    assert panel.locator('.sbx-lab-pool[data-profile="default"]').count() == 1
    assert panel.locator(".sbx-lab-slot-busy").count() == 2
    row = panel.locator('.sbx-lab-run[data-run]', has_text="sidebar-a")
    wait_for(lambda: re.search(r"\d+:\d\d", row.locator(".sbx-lab-elapsed").inner_text()) is not None,
             5, "no elapsed time")

    gate = lab.root / "sidebar.gate"
    blocking = nb.run(f"%%sandbox bash\nuntil [ -e {gate} ]; do sleep 0.05; done; echo woke",
                      wait=False)
    wait_for(lambda: status_text(page) == "sandbox 3/8" or "3/" in status_text(page), 15,
             f"status bar says {status_text(page)!r}")
    page.screenshot(path=str(screenshots / "sidebar.png"))
    started = time.monotonic()
    row.locator(".sbx-lab-cancel").click()
    wait_text(row.locator(".sbx-lab-state"), "cancelled", 5)
    assert time.monotonic() - started < 5
    assert page.evaluate("i => window.sbxTest.state(i).count", blocking) is None, \
        "the blocking cell had ended before the cancel"

    panel.locator(".sbx-lab-run-name", has_text="sidebar-a").click()
    log = page.locator(".sbx-lab-log")
    wait_text(log, "cancelled", 10)
    gate.touch()
    nb.wait_cell(blocking, 60)
    nb.run("%sandbox cancel sidebar-b")

    pool = panel.locator('.sbx-lab-pool[data-profile="default"]')
    pool.get_by_role("button", name="Scale…").click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input").fill("abc")
    dialog.get_by_role("button", name="Ok").click()
    wait_text(panel.locator(".sbx-lab-error"), "whole number", 5)
    assert pool.locator(".sbx-lab-box").count() >= 1, "a refused scale changed the pool"

    pool.get_by_role("button", name="Shut down").click()
    wait_text(dialog, "busy ones once their runs end", 5)
    assert panel.locator(".sbx-lab-box").count() >= 1, "Shut down acted before it was confirmed"
    dialog.get_by_role("button", name="Shut down").click()
    wait_for(lambda: panel.locator(".sbx-lab-box").count() == 0, 20, "the pool did not shut down")
    assert status_text(page) == "sandbox 0/0"
    refused = nb.run("%%sandbox bash\necho after")
    wait_text(nb.output(refused), "scaled to 0", 10)


HIGHLIGHTED = [
    "%%sandbox python --name hl-py\nimport os\ndone = [f for f in os.listdir()]",
    '%%sandbox bash --name hl-sh\nfor f in *.txt; do echo "$f"; done',
    "%%sandbox --profile default sh\nwhile true; do sleep 1; done",
    "import os\ndone = 1",
]


def token_classes(page: Any, index: int, word: str) -> list[str]:
    """The classes of the spans CodeMirror shows for ``word`` in cell ``index``."""
    return page.evaluate(
        "([i, w]) => [...window.sbxTest.nb().content.widgets[i].node"
        ".querySelectorAll('.cm-content span')].filter(s => s.textContent === w)"
        ".map(s => s.className)", [index, word])


def test_sandbox_cells_are_highlighted_in_their_language(lab: JupyterLab, page: Any) -> None:
    write_notebook(lab.root / "highlighted.ipynb", HIGHLIGHTED)
    nb = Notebook(lab, page, "highlighted.ipynb")
    wait_for(lambda: token_classes(page, 0, "import"), 10, "no Python tokens")
    keyword = token_classes(page, 0, "import")[0]
    assert token_classes(page, 3, "import") == [keyword]

    def keywords(index: int, word: str) -> bool:
        return keyword in token_classes(page, index, word)
    # `done` closes a loop in shell and is a plain name in Python.
    wait_for(lambda: keywords(1, "done") and keywords(2, "done"), 10,
             f"no shell keywords: {token_classes(page, 1, 'done')}")
    assert keywords(1, "do") and not keywords(1, "echo")
    assert not keywords(0, "done") and not keywords(3, "done")
    assert page.evaluate("() => window.sbxTest.nb().content.widgets.map(c => c.model.mimeType)") \
        == ["text/x-python", "text/x-sh", "text/x-sh", nb.page.evaluate(
            "() => window.sbxTest.nb().content.codeMimetype")]

    # Typing follows: a cell that becomes a bash cell, and one that stops being one.
    index = nb.add("%%sandbox bash\nuntil false; do :; done")
    wait_for(lambda: keywords(index, "until"), 10, "a new bash cell is not highlighted")
    page.evaluate("() => window.sbxTest.nb().content.widgets[1].model.sharedModel"
                  ".setSource('for f in x: pass\\ndone = 1')")
    wait_for(lambda: not keywords(1, "done"), 10, "a cell no longer %%sandbox bash stays shell")


def connection_patched(page: Any) -> bool:
    """Whether the notebook's kernel connection carries our sendShellMessage."""
    return page.evaluate("() => Object.prototype.hasOwnProperty.call("
                         "window.sbxTest.nb().sessionContext.session.kernel, 'sendShellMessage')")


def saved_widget_state(nb: Notebook) -> bool:
    nb.save()
    return "widgets" in json.loads(nb.path.read_text())["metadata"]


def test_only_notebooks_with_sandbox_magics_are_touched(lab: JupyterLab, page: Any) -> None:
    plain = Notebook(lab, page, "plain_widgets.ipynb")
    slider = plain.run("import ipywidgets; ipywidgets.IntSlider(value=3)")
    wait_for(lambda: plain.output(slider).locator(".widget-slider").count() == 1, 15, "no slider")
    assert not connection_patched(page), "a kernel without sandbox_magics had its connection patched"
    assert not saved_widget_state(plain), "widget state was saved in a notebook without sandbox_magics"

    ours = Notebook(lab, page, "ours_widgets.ipynb")
    ours.run("%load_ext sandbox_magics")
    wait_for(lambda: status_text(page) == "sandbox 0/0", 10, "no status-bar item after %load_ext")
    wait_for(lambda: connection_patched(page), 10, "the kernel with sandbox_magics is not routed")
    panel = ours.run("%%sandbox bash --bg --name saved\necho saved-line")
    wait_text(ours.output(panel), "saved-line")
    assert saved_widget_state(ours), "the panels' state was not saved with the notebook"


# Records every text the sidebar's empty-state line shows, from the page's first moment.
RECORD_EMPTY_TEXTS = """
window.sbxEmptyTexts = [];
new MutationObserver(() => {
  for (const e of document.querySelectorAll('#sandbox-magics-sidebar .sbx-lab-empty')) {
    if (window.sbxEmptyTexts[window.sbxEmptyTexts.length - 1] !== e.textContent) {
      window.sbxEmptyTexts.push(e.textContent);
    }
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_sidebar_and_log_panel_say_what_happened_to_the_kernel(lab: JupyterLab, page: Any) -> None:
    nb = Notebook(lab, page, "kernel_changes.ipynb")
    nb.run("%load_ext sandbox_magics")
    nb.run("%%sandbox bash --name before-restart\necho from-before")
    nb.save()
    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    panel = page.locator("#sandbox-magics-sidebar")
    wait_text(panel, "before-restart", 10)

    # A reload never says "run %load_ext" to a kernel that has it.
    page.add_init_script(RECORD_EMPTY_TEXTS)
    nb.open()
    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    wait_text(panel, "before-restart", 10)
    shown = page.evaluate("() => window.sbxEmptyTexts")
    assert not any("%load_ext" in text for text in shown), shown

    # A log panel from the sidebar says when its kernel restarted.
    panel.locator(".sbx-lab-run-name", has_text="before-restart").click()
    head = page.locator(".sbx-lab-log-head")
    wait_text(head, "succeeded", 10)
    page.evaluate("() => window.sbxTest.nb().sessionContext.session.kernel.restart()")
    wait_text(head, "before its restart", 15)

    # A shut-down kernel, with its notebook open, is said to be not running.
    nb.wait_idle(60)
    page.evaluate("() => window.sbxTest.nb().sessionContext.shutdown()")
    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    wait_text(panel, "is not running", 15)


def test_a_bg_run_outlives_a_kernel_restart_and_its_attached_log_and_sidebar_row_show_it_whole(
        lab: JupyterLab, page: Any) -> None:
    nb = Notebook(lab, page, "attach_after_restart.ipynb")
    nb.run("%load_ext sandbox_magics")
    started = nb.run("%%sandbox bash --bg --name outlives\n"
                     "for i in $(seq 1 200); do echo \"tick $i.\"; sleep 0.04; done")
    wait_text(nb.output(started), "tick 3.", 20)
    page.evaluate("() => window.sbxTest.nb().sessionContext.session.kernel.restart()")
    nb.wait_idle(60)
    nb.run("%load_ext sandbox_magics")
    runs = nb.run("%sandbox runs")
    wait_text(nb.output(runs), "running (started by the previous kernel at", 20)

    attached = nb.run("%sandbox attach outlives")
    wait_text(nb.output(attached), "tick 200.", 60)
    wait_text(nb.output(attached), "succeeded, exit code 0", 15)  # the state follows the log
    head = nb.output(attached).inner_text().splitlines()[0]
    assert "succeeded, exit code 0" in head and "1.8 KB of output" in head, head
    lines = nb.run("run = get_ipython().magics_manager.registry['SandboxMagics'].client"
                   ".get_run('outlives')\nprint(run.stdout.splitlines()[:2], "
                   "len(run.stdout.splitlines()))")
    wait_text(nb.output(lines), "['tick 1.', 'tick 2.'] 200", 10)
    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    row = page.locator("#sandbox-magics-sidebar .sbx-lab-run[data-run]", has_text="outlives")
    wait_text(row.locator(".sbx-lab-state"), "succeeded", 15)


def test_a_sweeps_view_and_sidebar_move_while_items_run_and_a_clicked_row_opens_its_log(
        lab: JupyterLab, page: Any, screenshots: Path) -> None:
    gate = lab.root / "sweep-gate"
    nb = Notebook(lab, page, "sweep_view.ipynb")
    nb.run("%load_ext sandbox_magics")
    cell = nb.run("%%sandbox bash --name grid --map i=0..11 --max-parallel 4\n"
                  f"echo \"item $i starts\"; until [ -e {gate} ]; do sleep 0.05; done; "
                  "echo \"item $i done\"")
    view = nb.output(cell)
    wait_text(view, "running 4", 30)
    bar = view.locator(".progress-bar")
    assert bar.get_attribute("style") and "width: 0%" in bar.get_attribute("style")
    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    sweep_row = page.locator("#sandbox-magics-sidebar .sbx-lab-sweep[data-sweep]", has_text="grid")
    wait_text(sweep_row, "0/12 ended", 15)
    assert "4 running" in sweep_row.inner_text()
    gate.touch()
    wait_text(view, "succeeded 12", 60)
    wait_for(lambda: "width: 100%" in (bar.get_attribute("style") or ""), 10, "the bar never filled")
    wait_text(sweep_row, "12/12 ended", 15)
    assert sweep_row.locator(".sbx-lab-cancel").count() == 0
    assert page.locator("#sandbox-magics-sidebar .sbx-lab-run[data-run]",
                        has_text="grid[i=").count() == 0, "sweep items listed one by one"
    view.locator(".sbx-sweep-table select").select_option(index=3)
    wait_text(view, "item 3 done", 10)
    page.screenshot(path=str(screenshots / "sweep.png"))


def test_the_money_shows_in_the_status_bar_and_sidebar_and_the_idle_warning_answers_while_busy(
        lab: JupyterLab, page: Any, screenshots: Path) -> None:
    nb = Notebook(lab, page, "money.ipynb")
    nb.run("%load_ext sandbox_magics")
    nb.run("%%sandbox bash --profile priced\necho warm")
    wait_for(lambda: re.fullmatch(r"sandbox 0/1 · \$0\.\d{4}", status_text(page)) is not None,
             20, f"status bar says {status_text(page)!r}")
    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    pool = page.locator('#sandbox-magics-sidebar .sbx-lab-pool[data-profile="priced"]')
    wait_text(pool.locator(".sbx-lab-pool-head"), "so far ($3.60/h a sandbox)", 15)
    warning = pool.locator(".sbx-lab-idle")
    wait_text(warning, "1 priced sandbox(es) idle", 15)
    assert re.search(r"stopping in \d+ s", warning.inner_text()), warning.inner_text()

    gate = lab.root / "money.gate"
    blocking = nb.run(f"%%sandbox bash\nuntil [ -e {gate} ]; do sleep 0.05; done; echo woke",
                      wait=False)
    wait_for(lambda: page.evaluate("i => window.sbxTest.state(i).running", blocking), 15,
             "the blocking cell never started")
    before = int(re.search(r"stopping in (\d+) s", warning.inner_text())[1])
    wait_for(lambda: int(re.search(r"stopping in (\d+) s", warning.inner_text())[1]) < before,
             10, "the idle clock does not move")
    warning.locator(".sbx-lab-keep").click()
    wait_text(page.locator("#sandbox-magics-sidebar .sbx-lab-notice").first, "kept warm", 10)
    wait_for(lambda: int(re.search(r"stopping in (\d+) s", warning.inner_text())[1]) >= 58, 10,
             f"Keep did not start the idle clock again: {warning.inner_text()!r}")
    assert page.evaluate("i => window.sbxTest.state(i).running", blocking), \
        "the blocking cell had ended before Keep answered"
    page.screenshot(path=str(screenshots / "money.png"))
    warning.locator(".sbx-lab-stop-idle").click()
    wait_for(lambda: pool.locator(".sbx-lab-idle").count() == 0, 15, "the warning stayed")
    wait_text(pool.locator(".sbx-lab-pool-head"), "0/0 busy", 15)
    gate.touch()
    nb.wait_cell(blocking, 60)


def test_a_kernel_session_shows_its_plot_and_table_and_its_buttons_answer_while_a_cell_blocks(
        lab: JupyterLab, page: Any, screenshots: Path) -> None:
    nb = Notebook(lab, page, "live.ipynb")
    nb.run("%load_ext sandbox_magics")
    plot = nb.run("%%sandbox python --kernel --session lab\n"
                  "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()", timeout=90)
    img = nb.output(plot).locator("img")
    wait_for(lambda: img.count() == 1, 15, "the plot is not an <img> in the cell")
    assert img.get_attribute("src").startswith("data:image/png;base64,")
    table = nb.run("%%sandbox python --kernel --session lab\nimport pandas as pd\n"
                   "pd.DataFrame({'lr': [0.1, 0.01], 'loss': [1.5, 0.7]})")
    wait_text(nb.output(table).locator("table"), "loss", 10)

    blocking = nb.run("%%sandbox python --kernel --session lab\nimport time\nmarker = 7\n"
                      "print('sleeping', flush=True)\ntime.sleep(60)", wait=False)
    wait_text(nb.output(blocking).first, "sleeping", 20)
    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    row = page.locator('#sandbox-magics-sidebar .sbx-lab-kernel[data-session="lab"]')
    wait_for(lambda: row.count() == 1 and row.get_attribute("data-state") == "busy", 15,
             "the sidebar does not list the busy kernel session")
    page.screenshot(path=str(screenshots / "kernel-session.png"))
    row.locator(".sbx-lab-kernel-interrupt").click()
    nb.wait_cell(blocking, 30)
    wait_text(nb.cell(blocking), "keeps its state", 10)
    kept = nb.run("%%sandbox python --kernel --session lab\nprint(marker)")
    wait_text(nb.output(kept).first, "7", 10)

    status = nb.run("%sandbox status")
    dashboard_row = nb.cell(status).locator('.sbx-kernel[data-session="lab"]')
    wait_for(lambda: dashboard_row.count() == 1, 15, "the dashboard does not list the kernel")
    nb.cell(status).locator(".sbx-kernel-stop").click()
    wait_for(lambda: dashboard_row.get_attribute("data-state") == "stopped", 20,
             "the dashboard's Stop did not stop the kernel")
    wait_for(lambda: row.get_attribute("data-state") == "stopped", 15,
             "the sidebar does not show the stopped kernel")
