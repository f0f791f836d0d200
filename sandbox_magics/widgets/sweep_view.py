"""`SweepView`: a sweep's live view — counts by state, a progress bar, a paged table of its
items (parameters, state, duration, last line), and the log of the item picked in it.

One widget for the whole sweep, refreshed by the shared poller (at most twice a second):
the table shows one page (`PAGE` rows) as HTML and a picker of that page's items, so a
sweep of 1,000 items costs what one of 20 does.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from ..sweeps import Item, Sweep
from ..sweeps.sweep import ITEM_STATES
from ._html import CSS, PolledView, badge, esc
from .run_log import RunLogView

PAGE = 20


class SweepView(PolledView):
    """Live view of ``sweep``; picking an item shows its latest run's log below."""

    def __init__(self, sweep: Sweep, every: Any) -> None:
        super().__init__(every)
        self.sweep = sweep
        self.page = 0
        self.display_handle: Any = None
        self._seen: tuple[Any, ...] | None = None
        self._log: RunLogView | None = None

    def _build(self) -> Any:
        import ipywidgets as w
        self._counts = w.HTML()
        self._bar = w.IntProgress(min=0, max=len(self.sweep.items), value=0,
                                  layout=w.Layout(width="100%"))
        self._table = w.HTML()
        self._pick = w.Dropdown(description="Item log", options=[], value=None,
                                layout=w.Layout(width="60%"))
        self._prev = w.Button(description="◀ Page", layout=w.Layout(width="7em"))
        self._next = w.Button(description="Page ▶", layout=w.Layout(width="7em"))
        self._logbox = w.VBox()
        self._prev.on_click(lambda _: self.turn(-1))
        self._next.on_click(lambda _: self.turn(1))
        self._pick.observe(lambda change: self.show_log(change["new"]), "value")
        return w.VBox([self._counts, self._bar, w.HBox([self._prev, self._next, self._pick]),
                       self._table, self._logbox])

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.sweep.items) // PAGE))

    def turn(self, step: int) -> None:
        """Show the next (``step`` 1) or previous (-1) page of items."""
        self.page = min(max(self.page + step, 0), self.pages - 1)
        self._seen = None
        self.refresh()

    def show_log(self, index: int | None) -> None:
        """Show the log of item ``index`` (its latest run) under the table."""
        if self._log is not None:
            self._log.close()
            self._log = None
        item = self.sweep.items[index] if index is not None else None
        if item is None or item.run is None:
            self._logbox.children = ()
            return
        self._log = RunLogView(item.run, self._every)
        self._logbox.children = (self._log.widget,) if self._log.widget is not None else ()

    def _rows(self) -> list[Item]:
        return self.sweep.items[self.page * PAGE:(self.page + 1) * PAGE]

    def refresh(self) -> bool:
        if self._widget is None:
            return False
        sweep = self.sweep
        rows = self._rows()
        key = (self.page, tuple(sweep.counts().values()), sweep.done,
               tuple((i.state, len(i.runs), i.run.log.chunks if i.run else 0) for i in rows))
        if key != self._seen:
            self._seen = key
            counts = sweep.counts()
            ended = counts["succeeded"] + counts["failed"] + counts["lost"] + counts["cancelled"]
            self._bar.value = ended
            self._bar.bar_style = ("danger" if counts["failed"] or counts["lost"] else
                                   "success" if sweep.done else "info")
            self._counts.value = self._counts_html(counts)
            self._table.value = self._table_html(rows)
            options = [(f"{i.index}: {i.name} ({i.state})", i.index) for i in rows]
            if [o[1] for o in options] != [o[1] for o in self._pick.options] or \
                    [o[0] for o in options] != [o[0] for o in self._pick.options]:
                picked = self._pick.value
                self._pick.options = options
                self._pick.value = picked if picked in {o[1] for o in options} else None
            self._prev.disabled = self.page == 0
            self._next.disabled = self.page >= self.pages - 1
        if sweep.done and self.display_handle is not None:
            # in an empty context, as RunLogView's final display (see _comm)
            contextvars.Context().run(self.display_handle.update, self)
        return not sweep.done

    def _counts_html(self, counts: dict[str, int]) -> str:
        sweep = self.sweep
        shown = " ".join(f"{badge(state)} {counts[state]}" for state in ITEM_STATES)
        return (f"{CSS}<div class='sbx-head'><b>{esc(sweep.name)}</b> <span class='sbx-muted'>"
                f"{esc(sweep.id)} · {len(sweep.items)} items · {esc(sweep.spec.profile)} · "
                f"page {self.page + 1} of {self.pages}</span> {shown}</div>")

    def _table_html(self, rows: list[Item]) -> str:
        names = list(self.sweep.items[0].params) if self.sweep.items else []
        head = "".join(f"<th>{esc(n)}</th>" for n in ["#", *names, "state", "duration", "last line"])
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in [i.index, *i.params.values()])
            + f"<td>{badge(i.state)}</td><td>{esc(_duration(i))}</td>"
            f"<td class='sbx-muted'>{esc(i.last_line())}</td></tr>" for i in rows)
        return f"<table class='sbx-sweep'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def text(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.sweep.counts().items() if n)
        return f"Sweep {self.sweep.id} ({self.sweep.name}): {len(self.sweep.items)} items: {counts}"

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        super().close()


def _duration(item: Item) -> str:
    run = item.run
    if run is None or run.started_at is None:
        return ""
    return f"{(run.ended_at or time.time()) - run.started_at:.1f} s"
