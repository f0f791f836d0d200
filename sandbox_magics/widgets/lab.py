"""The kernel's end of the JupyterLab extension: one comm target, ``sandbox_magics``.

The frontend opens a comm to this target when it connects to a kernel, so a reload or a
second tab gets the current state at once; ``%load_ext sandbox_magics`` also opens one
towards the frontend, so a page connected before the extension was loaded lights up.
A frontend without the extension ignores it; a kernel without this target closes the
frontend's comm, and the frontend shows nothing.

Over every comm the kernel sends the pools, runs and sweeps of this kernel's client as one
JSON message (``{"type": "state", ...}``), only when something changed and at most every
`INTERVAL` seconds, from a poller on the manager's loop (as the panels refresh). The
frontend sends actions: ``cancel`` a run, ``cancel-sweep`` a sweep, ``scale`` a pool
(``sandboxes`` a number or null for auto), ``shutdown`` a pool (scale to 0), ``keep-idle``
or ``stop-idle`` a pool's idle sandboxes it warns of, and ``log`` to follow one run's tail.

JupyterLab 4.6 delivers comm messages to a kernel subshell (see `_comm`), so actions are
handled while a blocking cell holds the main shell; each is handed to a thread so that
the handler returns at once, and its outcome comes back as ``{"type": "notice"}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..pool.cost import money, spending
from . import _comm

if TYPE_CHECKING:
    from ..kernel import Client
    from ..kernel.live_cell import Kernel
    from ..pool import PoolStatus

TARGET = "sandbox_magics"
INTERVAL = 1.0
FINISHED_SHOWN = 20
IDLE_WARN_AHEAD = 90.0
LOG_LINES = 200
log = logging.getLogger(__name__)


def pool_state(pool: PoolStatus) -> dict[str, Any]:
    """One pool for the sidebar, with the counts the dashboard shows (`PoolStatus.counts`)."""
    counts = pool.counts()
    return {
        "profile": pool.profile, "backend": pool.backend,
        "busy": counts.busy, "total": counts.total,
        "queued": counts.queued, "starting": counts.starting, "target": pool.target,
        "max_sandboxes": pool.max_sandboxes, "price_per_hour": pool.price_per_hour,
        "cost": pool.cost, "spending": spending(pool.price_per_hour, pool.cost),
        "idle_warning": idle_warning(pool),
        "sandboxes": [{"id": box.id, "state": box.state.value,
                       "slots": [s.value for s in box.slots], "runs": list(box.runs),
                       "stage": box.stage, "stage_for": box.stage_for}
                      for box in pool.sandboxes],
    }


def idle_warning(pool: PoolStatus) -> str | None:
    """What the sidebar warns of, `IDLE_WARN_AHEAD` seconds before the pool stops idle
    sandboxes that cost money: "2 sandboxes idle 9 min, stopping in 1 min"; else None."""
    due = [box for box in pool.sandboxes if box.stops_in is not None]
    if pool.price_per_hour == 0 or not due or min(b.stops_in or 0 for b in due) > IDLE_WARN_AHEAD:
        return None
    idle = max(b.idle_for or 0 for b in due)
    left = min(b.stops_in or 0 for b in due)
    return (f"{len(due)} {pool.profile} sandbox(es) idle {_minutes(idle)}, "
            f"stopping in {_minutes(left)}")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def run_state(run: Any) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "profile": run.profile, "state": run.state.value,
            "queued": run.queued_at, "started": run.started_at, "ended": run.ended_at,
            "sandbox": run.sandbox, "slot": run.slot, "exit_code": run.exit_code,
            "done": run.done}


def kernel_state(kernel: Any) -> dict[str, Any]:
    """A kernel session as the sidebar lists it."""
    row = kernel.row()
    return {key: row[key] for key in ("session", "profile", "state", "since", "memory",
                                      "cells", "ended")}


def sweep_state(sweep: Any) -> dict[str, Any]:
    return {"id": sweep.id, "name": sweep.name, "items": len(sweep.items),
            "profile": sweep.spec.profile, "done": sweep.done, **sweep.counts()}


class LabBridge:
    """Serves the ``sandbox_magics`` comm target for one `SandboxMagics`."""

    def __init__(self, magics: Any) -> None:
        self._magics = weakref.ref(magics)
        self._comms: dict[str, Any] = {}
        self._follow: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last: str | None = None
        self._last_logs: dict[str, str] = {}
        self._polling: Any = None
        self._polled: Any = None
        self._manager: Any = None

    # -- registration -------------------------------------------------------------------

    @classmethod
    def register(cls, magics: Any) -> LabBridge | None:
        """Register the target in the running kernel and announce it; None outside one."""
        manager = _comm_manager()
        if manager is None:
            return None
        bridge = cls(magics)
        bridge._manager = manager
        manager.register_target(TARGET, bridge._opened)
        magics.on_client.append(bridge._client_started)
        try:
            from comm import create_comm
            comm = create_comm(target_name=TARGET, data=bridge._empty_state())
        except Exception:  # a frontend that cannot take comms: nothing to announce
            log.debug("could not announce the sandbox_magics comm", exc_info=True)
        else:
            _comm.unpin(comm)  # opened by a cell: its replies must not wait for the main shell
            bridge._add(comm)
        if magics._client is not None:
            bridge._client_started(magics._client)
        return bridge

    def close(self) -> None:
        """Unregister the target and close every comm (extension unloaded)."""
        if self._manager is not None:
            self._manager.unregister_target(TARGET, self._opened)
        for comm in list(self._comms.values()):
            try:
                comm.close()
            except Exception:
                pass
        self._comms.clear()
        if self._polling is not None:
            self._polling.cancel()

    def _opened(self, comm: Any, msg: dict[str, Any]) -> None:
        self._add(comm)
        client = self._client()
        if client is None:
            comm.send(self._empty_state())
        else:
            self._last = None  # the next tick sends everyone the whole state

    def _add(self, comm: Any) -> None:
        with self._lock:
            self._comms[comm.comm_id] = comm
        comm.on_msg(self._received)
        comm.on_close(lambda msg, cid=comm.comm_id: self._closed(cid))

    def _closed(self, comm_id: str) -> None:
        with self._lock:
            self._comms.pop(comm_id, None)
            self._follow.pop(comm_id, None)

    # -- state ----------------------------------------------------------------------------

    def _client(self) -> Client | None:
        magics = self._magics()
        return None if magics is None else magics._client

    def _client_started(self, client: Client) -> None:
        self._last = None
        self._polled = client
        self._polling = client.every(lambda: INTERVAL, self._tick)

    def _empty_state(self) -> dict[str, Any]:
        return {"type": "state", "now": time.time(), "busy": 0, "total": 0, "pools": [],
                "runs": []}

    def state(self, client: Client) -> dict[str, Any]:
        """The pools, runs and sweeps of ``client`` as plain data (call on its loop); the
        runs of a sweep's items show in its progress, not one by one."""
        pools = [pool_state(p) for p in client.manager.status()]
        sweeps = list(client.manager.sweeps.values())
        items = {run.id for sweep in sweeps for item in sweep.items for run in item.runs}
        runs = [r for r in client.manager.runs if r.id not in items]
        shown = [r for r in runs if not r.done] + [r for r in runs if r.done][-FINISHED_SHOWN:]
        priced = [p for p in pools if p["price_per_hour"] != 0]
        return {"type": "state", "now": time.time(),
                "busy": sum(p["busy"] for p in pools), "total": sum(p["total"] for p in pools),
                "pools": pools, "runs": [run_state(r) for r in shown],
                "sweeps": [sweep_state(s) for s in sweeps],
                "kernels": [kernel_state(k) for k in client.manager.kernels.values()],
                "money": money(client.manager.cost()) if priced else ""}

    def _tick(self) -> bool:
        _comm.detach()
        client = self._client()
        if client is None or client is not self._polled:
            return False  # the client was shut down; a new one starts its own poller
        with self._lock:
            comms = dict(self._comms)
            follow = dict(self._follow)
        if not comms:
            return True
        state = self.state(client)
        text = json.dumps({k: v for k, v in state.items() if k != "now"}, sort_keys=True)
        if text != self._last:
            self._last = text
            self._broadcast(comms.values(), state)
        for comm_id, run_id in follow.items():
            message = self._log_message(client, run_id)
            key = json.dumps(message, sort_keys=True)
            if key != self._last_logs.get(comm_id) and comm_id in comms:
                self._last_logs[comm_id] = key
                self._send(comms[comm_id], message)
        return True

    def _log_message(self, client: Client, run_id: str) -> dict[str, Any]:
        from .run_log import tail_lines
        try:
            run = client.get_run(run_id)
        except KeyError:
            return {"type": "log", "run": run_id, "text": "", "state": "unknown"}
        text = "".join(t for _, t in tail_lines(run, LOG_LINES))
        return {"type": "log", "run": run.id, "name": run.name, "state": run.state.value,
                "text": text}

    def _broadcast(self, comms: Any, message: dict[str, Any]) -> None:
        for comm in list(comms):
            self._send(comm, message)

    def _send(self, comm: Any, message: dict[str, Any]) -> None:
        try:
            comm.send(message)
        except Exception:
            log.debug("a sandbox_magics comm could not send", exc_info=True)

    # -- actions ----------------------------------------------------------------------------

    def _received(self, msg: dict[str, Any]) -> None:
        data = msg["content"]["data"] or {}
        comm_id = msg["content"]["comm_id"]
        action = data.get("action")
        client = self._client()
        comm = self._comms.get(comm_id)
        if action == "log":
            with self._lock:
                if data.get("run"):
                    self._follow[comm_id] = str(data["run"])
                else:
                    self._follow.pop(comm_id, None)
                self._last_logs.pop(comm_id, None)
            return
        if action == "refresh":
            self._last = None
            if client is None and comm is not None:
                comm.send(self._empty_state())
            return
        if client is None:
            self._notice(comm, "No sandbox has been used in this kernel yet.")
            return
        if action == "cancel":
            run_id = str(data.get("run"))
            self._in_thread(comm, f"cancel {run_id}",
                            lambda: f"Run {run_id}: {client.cancel(run_id)}.")
        elif action == "cancel-sweep":
            sweep = client.get_sweep(str(data.get("sweep")))

            def cancel() -> str:
                sweep.cancel()
                return f"Sweep {sweep.name}: cancelled ({sweep.counts()['cancelled']} item(s))."
            self._in_thread(comm, f"cancel sweep {sweep.name}", cancel)
        elif action in KERNEL_ACTIONS:
            session, profile = str(data.get("session")), str(data.get("profile"))
            kernel = client.kernel(session, profile)
            self._in_thread(comm, f"{action} of kernel {session!r}",
                            lambda: KERNEL_ACTIONS[action](kernel))
        elif action in ("keep-idle", "stop-idle"):
            profile = str(data.get("profile"))

            def idle() -> str:
                if action == "keep-idle":
                    return f"Profile {profile}: {client.keep_idle(profile)} idle sandbox(es) kept warm."
                return f"Profile {profile}: {client.stop_idle(profile)} idle sandbox(es) stopped."
            self._in_thread(comm, f"{action} {profile}", idle)
        elif action in ("scale", "shutdown"):
            profile = str(data.get("profile"))
            target = 0 if action == "shutdown" else scale_target(data.get("sandboxes"))

            def scale() -> str:
                client.scale(profile, target)  # refuses a bad target in one sentence
                if target == 0:
                    return (f"Profile {profile} is shut down: idle sandboxes stop now, busy "
                            "ones when their runs end, and new runs fail until you scale it up.")
                return f"Profile {profile}: " + (
                    "autoscaling." if target == "auto" else f"{target} sandbox(es).")
            self._in_thread(comm, f"Scaling {profile}", scale)
        else:
            self._notice(comm, f"Unknown action {action!r}.")

    def _in_thread(self, comm: Any, what: str, work: Any) -> None:
        def run() -> None:
            _comm.detach()
            try:
                self._notice(comm, work())
            except Exception as exc:
                self._notice(comm, f"{what} failed: {exc}", error=True)
            self._last = None
        threading.Thread(target=run, name=f"sandbox-lab-{what}", daemon=True).start()

    def _notice(self, comm: Any, text: str, error: bool = False) -> None:
        if comm is not None:
            self._send(comm, {"type": "notice", "text": text, "error": error})


INTERRUPTED = {"kept": "interrupted; it keeps its state.", "idle": "nothing was running.",
               "lost": "it did not answer the interrupt and was stopped; its state is lost."}


def interrupt_kernel(kernel: Kernel) -> str:
    return f"Kernel {kernel.session.session!r}: {INTERRUPTED[kernel.interrupt()]}"


def restart_kernel(kernel: Kernel) -> str:
    kernel.restart()
    return f"Kernel {kernel.session.session!r}: restarted, with a fresh namespace."


def stop_kernel(kernel: Kernel) -> str:
    kernel.stop()
    return f"Kernel {kernel.session.session!r}: stopped; its next cell starts a fresh one."


KERNEL_ACTIONS: dict[str, Callable[[Kernel], str]] = {
    "kernel-interrupt": interrupt_kernel, "kernel-restart": restart_kernel,
    "kernel-stop": stop_kernel,
}
"""What the panels' kernel buttons do (each blocks its own thread, never the cell's)."""


def scale_target(value: Any) -> Any:
    """The sidebar's scale field as `Client.scale` takes it: "auto", a whole number, or
    the text as typed (which `Client.scale` refuses in one sentence)."""
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def _comm_manager() -> Any:
    """The running kernel's comm manager, or None outside a kernel."""
    import sys
    module = sys.modules.get("ipykernel.kernelbase")
    if module is None or not module.Kernel.initialized():
        return None
    kernel = module.Kernel.instance()
    return getattr(kernel, "comm_manager", None)
