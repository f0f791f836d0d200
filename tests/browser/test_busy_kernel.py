"""A kernel running a blocking ``%%sandbox`` cell looks busy in JupyterLab and to the
server, so an idle culler (``cull_busy=False``) leaves it alone until the cell ends.

The server here culls kernels idle for over CULL_AFTER seconds, checking every second, and
logs each check (debug level): the test waits until the culler has looked at the kernel
while it had been quiet longer than that, with its tab closed, then checks that it is still
there and busy, then releases the cell and sees the culler take the now idle kernel.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import start_lab
from tests.browser.lab import JupyterLab, Notebook
from tests.browser.test_lab_extension import wait_for
from tests.browser.test_panels import wait_text

CULL_AFTER = 4
CHECK = re.compile(r"^\[D (\S+ \S+) ServerApp\] kernel_id=(\S+), kernel_name=\S+, "
                   r"last_activity=(.+)$", re.M)


@pytest.fixture(scope="module")
def culling_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterLab]:
    server = start_lab(tmp_path_factory.mktemp("culling"), (
        f"--MappingKernelManager.cull_idle_timeout={CULL_AFTER}",
        "--MappingKernelManager.cull_interval=1", "--MappingKernelManager.cull_busy=False",
        "--ServerApp.log_level=DEBUG"))
    yield server
    server.stop()


def quiet_checks(lab: JupyterLab, kernel_id: str) -> int:
    """How many culler checks found the kernel quiet for longer than CULL_AFTER seconds."""
    count = 0
    for logged, kid, last in CHECK.findall(lab.log_text()):
        if kid != kernel_id:
            continue
        now = datetime.strptime(logged, "%Y-%m-%d %H:%M:%S.%f").astimezone(timezone.utc)
        if (now - datetime.fromisoformat(last)).total_seconds() > CULL_AFTER + 0.5:
            count += 1
    return count


def kernel(lab: JupyterLab, kernel_id: str) -> dict[str, Any] | None:
    return next((k for k in lab.kernels() if k["id"] == kernel_id), None)


def release(gate: Path) -> None:
    """Let the cell's `cat` read a line; fails at once if nothing reads the FIFO any more."""
    try:
        fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        assert e.errno != errno.ENXIO, "the blocking run was gone before it was released"
        raise
    os.write(fd, b"go\n")
    os.close(fd)


def test_a_blocking_cell_keeps_the_kernel_busy_and_the_culler_away(
        culling_lab: JupyterLab, browser: Any, tmp_path: Path) -> None:
    gate, done = tmp_path / "gate", tmp_path / "done"
    os.mkfifo(gate)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    nb = Notebook(culling_lab, page, "culled.ipynb")
    nb.run("%load_ext sandbox_magics")
    kernel_id = page.evaluate("() => window.sbxTest.nb().sessionContext.session.kernel.id")
    cell = nb.run(f"%%sandbox bash --name held\necho started\ncat {gate}\ntouch {done}",
                  wait=False)
    wait_text(nb.output(cell), "started", 30)
    # A reload finds or creates this tab's subshell over the control channel, and the
    # sidebar's comm is answered on it, while the cell blocks.
    nb.save()
    nb.open(wait_idle=False)
    page.evaluate("() => window.jupyterapp.shell.activateById('sandbox-magics-sidebar')")
    wait_text(page.locator("#sandbox-magics-sidebar"), "held", 15)
    wait_for(lambda: page.evaluate("() => window.sbxTest.kernelStatus()") == "busy", 10,
             "JupyterLab shows the kernel of a blocking cell as idle")
    assert kernel(culling_lab, kernel_id)["execution_state"] == "busy"

    context.close()  # the tab is closed: only the execution state keeps the culler away
    wait_for(lambda: kernel(culling_lab, kernel_id)["connections"] == 0, 15, "tab still connected")
    wait_for(lambda: quiet_checks(culling_lab, kernel_id) >= 2 or kernel(culling_lab, kernel_id)
             is None, 60, "the culler never looked at the quiet kernel")
    state = kernel(culling_lab, kernel_id)
    assert state is not None, "the server culled a kernel running a blocking cell"
    assert state["execution_state"] == "busy"

    release(gate)
    wait_for(done.exists, 30, "the run did not finish after it was released")
    wait_for(lambda: kernel(culling_lab, kernel_id) is None, 60,
             "the culler did not take the kernel once its cell had ended")
