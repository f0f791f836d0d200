"""Keep the kernel's published status busy while any of its shells runs a request.

ipykernel 7 handles a subshell's messages (JEP 91: the panels' and the sidebar's clicks, a
widget's sync) and the control channel's (create_subshell, usage) on threads of their own,
and publishes busy, then idle, for each. Jupyter Server and JupyterLab take the kernel's
state from the last status whose request type they track (``comm_msg``, ``comm_open`` and
``create_subshell_request`` are tracked), so that idle made a kernel running a blocking
cell look idle, and an idle culler shut it down mid-cell, losing the run.

`keep_busy_while_shells_run` wraps the kernel's status publisher: every status goes out as
before (a frontend's request is done at its idle), and when one shell or channel goes idle
while another still runs a request, busy is published again with that request as parent,
so the last status the server and the page see says busy until the last shell is idle.
It is installed by ``%load_ext sandbox_magics`` only, so other kernels are left alone; an
ipykernel without the publisher (or with no subshells) is left as it is.
"""

from __future__ import annotations

import threading
from typing import Any

from ._comm import _kernel

ShellKey = tuple[str, "str | None"]


class _StatusPublisher:
    """The kernel's ``_publish_status``, keeping the requests each shell runs."""

    def __init__(self, kernel: Any, publish: Any) -> None:
        self._kernel = kernel
        self._publish = publish
        self._lock = threading.Lock()
        self._running: dict[ShellKey, dict[str, Any]] = {}

    def __call__(self, status: str, channel: str, parent: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._publish(status, channel, parent)
            if status not in ("busy", "idle"):
                return
            request = parent or self._kernel.get_parent(channel) or {}
            header = request.get("header") or {}
            key = (channel, header.get("subshell_id"))
            if status == "busy":
                self._running[key] = request
                return
            self._running.pop(key, None)
            if self._running:
                self._publish("busy", channel, next(iter(self._running.values())))


def keep_busy_while_shells_run() -> bool:
    """Install the publisher on this process's kernel (once); whether it is installed."""
    kernel = _kernel()
    publish = getattr(kernel, "_publish_status", None)
    if publish is None or not callable(getattr(kernel, "get_parent", None)):
        return False
    if not isinstance(publish, _StatusPublisher):
        kernel._publish_status = _StatusPublisher(kernel, publish)
    return True
