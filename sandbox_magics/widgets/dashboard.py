"""`Dashboard`: every pool as a compact grid of slot cells coloured by state, live.

One HTML widget for any number of slots (10,000 render as one string of small cells, not
as widgets); per pool, the queue, sandboxes starting, run counts and the latest scaling
decisions. Below, one row per kernel session with its Interrupt, Restart and Stop buttons. Each pool's ``<div>`` carries its counts (`PoolStatus.counts`, as the sidebar
shows them) and its runs' as ``data-`` attributes.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from typing import Any

from ..kernel import Client
from ..pool import PoolEvent, PoolStatus, SandboxState
from ..pool.cost import spending
from ._html import CSS, LEGEND_STATES, PolledView, esc
from .lab import KERNEL_ACTIONS

TITLE_LIMIT = 256
EVENTS_SHOWN = 4
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)

LEGEND = ('<div class="sbx-legend">' + "".join(
    f'<span><i class="sbx-s-{state.value}"></i> {state.value}</span>' for state in LEGEND_STATES)
    + "</div>")


def event_text(event: PoolEvent) -> str:
    """One scaling event for people: its kind, sandbox and detail, without addresses."""
    detail = " ".join(URL.sub("", event.detail).split()).strip(" :;,-")
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    return " ".join(p for p in (stamp, event.kind.value, event.sandbox or "", detail) if p)


def pool_counts(pool: PoolStatus, runs: collections.Counter[str]) -> dict[str, int]:
    """The pool's counts and its runs' by state."""
    return {
        **dataclasses.asdict(pool.counts()),
        "running": runs["running"], "succeeded": runs["succeeded"],
        "failed": sum(runs[s] for s in ("failed", "timed-out", "lost", "error")),
        "cancelled": runs["cancelled"],
    }


def _clock(seconds: float | None) -> str:
    whole = int(seconds or 0)
    return f"{whole // 60}:{whole % 60:02d}"


def _spent(pool: PoolStatus) -> str:
    words = spending(pool.price_per_hour, pool.cost)
    return f" · {esc(words)}" if words else ""


def render(status: list[PoolStatus], run_states: dict[str, collections.Counter[str]],
           run_names: dict[str, str] | None = None) -> str:
    """The dashboard's HTML for ``Manager.status()``, run states counted per profile and
    (for slot tooltips) each run id's label."""
    if not status:
        return CSS + '<div class="sbx-muted">No pool has started yet: run a %%sandbox cell.</div>'
    names = run_names or {}
    parts = [CSS, LEGEND]
    for pool in status:
        counts = pool_counts(pool, run_states.get(pool.profile, collections.Counter()))
        attrs = " ".join(f'data-{k}="{v}"' for k, v in counts.items())
        titles = sum(len(b.slots) for b in pool.sandboxes) <= TITLE_LIMIT
        parts.append(
            f'<div class="sbx-pool" data-profile="{esc(pool.profile)}" {attrs}>'
            f'<b>{esc(pool.profile)}</b> <span class="sbx-muted">{esc(pool.backend)} · '
            f'{counts["sandboxes"]}/{pool.max_sandboxes} sandboxes · {counts["busy"]} busy · '
            f'{counts["free"]} free · {counts["queued"]} queued · {counts["starting"]} starting · '
            f'runs: {counts["running"]} running, {counts["succeeded"]} ok, '
            f'{counts["failed"]} failed{_spent(pool)}</span><div class="sbx-grid">')
        for box in pool.sandboxes:
            cells = "".join(
                f'<i class="sbx-s-{state.value}" title="{esc(box.id)} slot {i}: {state.value}'
                f'{" · " + esc(names.get(run, run)) if run else ""}"></i>' if titles
                else f'<i class="sbx-s-{state.value}"></i>'
                for i, (state, run) in enumerate(zip(box.slots, box.runs)))
            stage = (f'<span class="sbx-muted"> {esc(box.stage)} ({_clock(box.stage_for)})</span>'
                     if box.stage and box.state is SandboxState.STARTING else "")
            parts.append(f'<div class="sbx-row"><span class="sbx-id">{esc(box.id)}</span>{cells}'
                         f'{stage}</div>')
        events = pool.events[-EVENTS_SHOWN:]
        if events:
            parts.append('<div class="sbx-events">' + " · ".join(
                esc(event_text(e)) for e in events) + "</div>")
        parts.append("</div></div>")
    return "".join(parts)


def kernel_html(row: dict[str, Any], said: str = "") -> str:
    """A kernel session's line: its state since when, memory, cells, and what a button said."""
    since = time.strftime("%H:%M:%S", time.localtime(row["since"]))
    memory = f" · {row['memory'] / 2**20:.0f} MB" if row["memory"] else ""
    ended = f" ({esc(row['ended'])})" if row["state"] == "stopped" and row["ended"] else ""
    note = f' <span class="sbx-muted">— {esc(said)}</span>' if said else ""
    return (f'<span class="sbx-kernel" data-session="{esc(row["session"])}" '
            f'data-state="{row["state"]}"><b>kernel {esc(row["session"])}</b> '
            f'<span class="sbx-muted">{esc(row["profile"])} · {row["state"]}{ended} since '
            f'{since}{memory} · {row["cells"]} cells</span>{note}</span>')


class KernelRow:
    """A kernel session in the dashboard: its line and buttons, which act off this thread
    (a click answers while a cell blocks, where the kernel gives panels a subshell)."""

    def __init__(self, client: Client, session: str, profile: str) -> None:
        import ipywidgets as w
        self.client, self.session, self.profile = client, session, profile
        self.said = ""
        self.label = w.HTML()
        buttons = []
        for action, text in (("kernel-interrupt", "Interrupt"), ("kernel-restart", "Restart"),
                             ("kernel-stop", "Stop")):
            button = w.Button(description=text, layout=w.Layout(width="7em"))
            button.add_class(f"sbx-{action}")
            button.on_click(lambda _, action=action: self.act(action))
            buttons.append(button)
        self.widget = w.HBox([self.label, *buttons])

    def act(self, action: str) -> None:
        def work() -> None:
            try:
                self.said = KERNEL_ACTIONS[action](self.client.kernel(self.session, self.profile))
            except Exception as exc:  # noqa: BLE001 - shown in the row
                self.said = f"{action} failed: {exc}"
        threading.Thread(target=work, name=f"sandbox-{action}", daemon=True).start()

    def update(self, row: dict[str, Any]) -> None:
        value = kernel_html(row, self.said)
        if value != self.label.value:
            self.label.value = value


class Dashboard(PolledView):
    """Live view of every pool of ``client``; refreshed on the client's loop."""

    def __init__(self, client: Client) -> None:
        super().__init__(client.every)
        self.client = client
        self._last = ""

    def _build(self) -> Any:
        import ipywidgets as w
        self._html = w.HTML()
        self._kernels = w.VBox()
        self._rows: dict[tuple[str, str], KernelRow] = {}
        return w.VBox([self._html, self._kernels])

    def _refresh_kernels(self) -> None:
        sessions = [k.row() for k in self.client.manager.kernels.values()]
        keys = [(row["profile"], row["session"]) for row in sessions]
        if keys != list(self._rows):
            self._rows = {key: self._rows.get(key) or KernelRow(self.client, key[1], key[0])
                          for key in keys}
            self._kernels.children = [row.widget for row in self._rows.values()]
        for key, row in zip(keys, sessions):
            self._rows[key].update(row)

    def _names(self) -> dict[str, str]:
        return {run.id: f"{run.id} {run.name} ({run.state.value})" if run.name != run.id
                else f"{run.id} ({run.state.value})" for run in self.client.manager.runs}

    def _states(self) -> dict[str, collections.Counter[str]]:
        states: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for run in self.client.manager.runs:
            states[run.profile][run.state.value] += 1
        return states

    def refresh(self) -> bool:
        if self._widget is None:
            return False
        value = render(self.client.manager.status(), self._states(), self._names())
        if value != self._last:
            self._last = value
            self._html.value = value
        self._refresh_kernels()
        return True

    def html(self) -> str:
        return render(self.client.pool_status(), self._states(), self._names())

    def text(self) -> str:
        lines = []
        states = self._states()
        for pool in self.client.pool_status():
            c = pool_counts(pool, states.get(pool.profile, collections.Counter()))
            lines.append(f"{pool.profile} ({pool.backend}): {c['sandboxes']} sandboxes, "
                         f"{c['busy']} busy, {c['free']} free, {c['queued']} queued, "
                         f"{c['starting']} starting; runs {c['running']} running, "
                         f"{c['succeeded']} succeeded, {c['failed']} failed{_spent(pool)}")
        return "\n".join(lines) or "No pool has started yet."
