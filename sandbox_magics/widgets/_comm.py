"""Let a panel's controls answer while a blocking cell holds the kernel (kernel subshells).

JupyterLab 4.6 sends comm messages to a kernel subshell (JEP 91; one per comm target) when
the kernel supports subshells, as ipykernel 7 does, so a click on a panel is handled on
that subshell's thread while the main shell runs a cell. ipykernel, however, routes a
comm's incoming messages to the subshell of the request that last *published* on that comm
(so that a cell awaiting a widget's reply gets it). A panel created by a cell, or updated
from the manager's loop thread (whose messages would fall back to the main shell's request
as parent), would pin its controls to the busy main shell. Hence:

- `detach` (called once in each poller's own context) makes the messages that context
  publishes carry no parent request, so they pin nothing;
- `unpin` forgets the routing pinned on a panel's comms, so the frontend's choice (its
  comm subshell) is used.

Both are no-ops outside ipykernel or with an ipykernel that has no such routing.
"""

from __future__ import annotations

import contextvars
import sys
from typing import Any


def _kernel() -> Any:
    module = sys.modules.get("ipykernel.kernelbase")
    if module is None or not module.Kernel.initialized():
        return None
    return module.Kernel.instance()


def detach() -> None:
    """From now on in this context, comm messages are published with no parent request."""
    kernel = _kernel()
    var = getattr(kernel, "_shell_parent", None)
    if isinstance(var, contextvars.ContextVar):
        var.set({})


def unpin(widget: Any) -> None:
    """Forget which subshell the comms of ``widget`` and its children (or the comm
    ``widget`` itself) were last used from."""
    seen: set[int] = set()
    stack = [widget]
    while stack:
        w = stack.pop()
        if w is None or id(w) in seen:
            continue
        seen.add(id(w))
        comm = w if hasattr(w, "_reply_subshell_lock") else getattr(w, "comm", None)
        lock = getattr(comm, "_reply_subshell_lock", None)
        if lock is not None:
            with lock:
                comm.__dict__.pop("_reply_subshell_id", None)
        for name in getattr(w, "keys", ()) or ():  # children, layout, style: every model
            value = getattr(w, name, None)
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(item, "comm") and hasattr(item, "keys"):
                    stack.append(item)
