"""Drive JupyterLab in Debian's Chromium with Playwright, as a user would.

`ensure_chromium` installs the ``chromium`` Debian package when it is missing (the tests
need nothing installed by hand); `JupyterLab` starts a server on 127.0.0.1 in a folder
of its own; `Notebook` opens a notebook there and runs cells through JupyterLab's own
commands (the page is started with ``expose_app_in_browser``, so ``window.jupyterapp`` is
the application), then reads what the page shows.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
APT_TIMEOUT = 900


def ensure_chromium() -> str:
    """The path of Debian's Chromium, installing the package first if it is missing."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(f"The browser tests need {CHROMIUM}: install Debian's chromium "
                           "package (apt-get install chromium) as root.")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                               f"{done.stderr.strip()[-2000:]}")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


USER_SETTINGS = {
    # No news or update checks (the machine has no network) and no first-run toasts.
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
}


class JupyterLab:
    """A JupyterLab server started for the tests, in ``root`` with its own settings."""

    def __init__(self, root: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        home = root.parent / "jupyter-home"
        settings = home / "settings"
        for name, value in USER_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        env = dict(env, JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"))
        self.log = open(root.parent / "jupyterlab.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=False", *args],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready(90)

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}: "
                                   f"{self.log_text()[-3000:]}")
            try:
                self.api("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer within {timeout} s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def fetch(self, path: str) -> tuple[int, str, bytes]:
        """GET ``path`` with the token; (status, content type, body)."""
        request = urllib.request.Request(self.url + path,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()

    def kernels(self) -> list[dict[str, Any]]:
        return self.api("GET", "/api/kernels")

    def stop(self) -> None:
        for kernel in self.kernels() if self.process.poll() is None else []:
            try:
                self.api("DELETE", f"/api/kernels/{kernel['id']}")
            except OSError:
                pass
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def write_notebook(path: Path, cells: list[str] = ()) -> None:  # type: ignore[assignment]
    path.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                   "outputs": [], "source": source} for i, source in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))


# JavaScript run in the page. `nb()` is the open notebook panel.
JS_HELPERS = """
window.sbxTest = {
  // The notebook opened last (other panels may take the main area's focus later).
  panel: window.jupyterapp.shell.currentWidget,
  nb() { return this.panel; },
  kernelStatus() { const k = this.nb().sessionContext.session?.kernel; return k ? k.status : 'none'; },
  cellCount() { return this.nb().content.widgets.length; },
  addCell(source) {
    const panel = this.nb();
    const model = panel.content.model;
    const index = model.cells.length;
    model.sharedModel.insertCell(index, {cell_type: 'code', source: source});
    panel.content.activeCellIndex = index;
    panel.content.deselectAll();
    return index;
  },
  run(index) {
    const panel = this.nb();
    panel.content.activeCellIndex = index;
    panel.content.deselectAll();
    // Not awaited: the command's promise ends when the cell has run.
    void window.jupyterapp.commands.execute('notebook:run-cell');
  },
  state(index) {
    const cell = this.nb().content.widgets[index];
    return {count: cell.model.executionCount, running: cell.model.executionState === 'running'
            || cell.promptNode?.textContent?.includes('*')};
  },
};
"""


class Notebook:
    """One notebook opened in a Playwright page of a `JupyterLab`."""

    def __init__(self, lab: JupyterLab, page: Any, name: str, reuse: bool = False) -> None:
        self.lab = lab
        self.page = page
        self.name = name
        self.path = lab.root / name
        if not self.path.exists():
            write_notebook(self.path)
        self.open(reuse=reuse)

    def open(self, wait_idle: bool = True, reuse: bool = False) -> None:
        """Load JupyterLab with this notebook open; with ``reuse``, open it in the
        JupyterLab the page has loaded already, if it has (half the time)."""
        page = self.page
        if reuse and page.evaluate("() => !!window.jupyterapp"):
            page.evaluate("async p => { await window.jupyterapp.commands.execute("
                          "'docmanager:open', {path: p}); }", self.name)
        else:
            page.goto(f"{self.lab.url}/lab/tree/{self.name}?reset&token={self.lab.token}")
        page.wait_for_function(
            "p => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " return w && w.sessionContext && w.context && w.context.path === p; }",
            arg=self.name, timeout=60_000)
        page.evaluate(f"() => {{ {JS_HELPERS} }}")
        page.wait_for_function("() => window.sbxTest.nb().sessionContext.isReady", timeout=60_000)
        if wait_idle:
            self.wait_idle(60)

    def reload(self) -> None:
        self.open()

    def wait_idle(self, timeout: float = 60) -> None:
        self.page.wait_for_function("() => window.sbxTest.kernelStatus() === 'idle'",
                                    timeout=timeout * 1000)

    def add(self, source: str) -> int:
        return int(self.page.evaluate("s => window.sbxTest.addCell(s)", source))

    def run(self, source: str, wait: bool = True, timeout: float = 60) -> int:
        """Add a code cell at the end and run it; wait until it has run unless ``wait`` is False."""
        index = self.add(source)
        self.page.evaluate("i => window.sbxTest.run(i)", index)
        if wait:
            self.wait_cell(index, timeout)
        return index

    def wait_cell(self, index: int, timeout: float = 60) -> None:
        self.page.wait_for_function(
            "i => { const s = window.sbxTest.state(i); return s.count !== null && !s.running; }",
            arg=index, timeout=timeout * 1000)

    def cell(self, index: int) -> Any:
        """The locator of cell ``index`` in the page."""
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def output(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea-output")

    def save(self) -> None:
        self.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        self.page.wait_for_function("() => !window.sbxTest.nb().context.model.dirty",
                                    timeout=30_000)

    def screenshot(self, path: Path, locator: Any = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        (locator or self.page).screenshot(path=str(path))
