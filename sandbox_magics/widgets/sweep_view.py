"""`SweepView`: a sweep's live view — counts by state, a progress bar, a paged table of its
items (parameters, state, duration, last line); clicking a row opens that item's log.

One widget for the whole sweep, refreshed by the shared poller (at most twice a second):
the table is a list box of one page (`PAGE` rows, fixed-width columns), so a sweep of
1,000 items costs what one of 20 does.
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
INTERVAL = 0.6
"""Seconds between refreshes at least: any second of a sweep sees at most two updates of
a widget, however many items change."""
# The table's rows and its head in the notebook's code font, so the columns line up.
STYLE = ("<style>.sbx-sweep-table select,.sbx-sweep-head{font-family:var(--jp-code-font-family,"
         "monospace);font-size:var(--jp-code-font-size,12px)}.sbx-sweep-head{margin:0 0 0 2px;"
         "white-space:pre;overflow:hidden}</style>")


class SweepView(PolledView):
    """Live view of ``sweep``; picking an item shows its latest run's log below."""

    @classmethod
    def interval(cls) -> float:
        return max(INTERVAL, super().interval())

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
        self._head = w.HTML()
        self._table = w.Select(options=[], value=None, rows=PAGE, layout=w.Layout(width="100%"),
                               _dom_classes=("sbx-sweep-table",))
        self._prev = w.Button(description="◀ Page", layout=w.Layout(width="7em"))
        self._next = w.Button(description="Page ▶", layout=w.Layout(width="7em"))
        self._logbox = w.VBox()
        self._prev.on_click(lambda _: self.turn(-1))
        self._next.on_click(lambda _: self.turn(1))
        self._table.observe(lambda change: self.show_log(change["new"]), "value")
        return w.VBox([self._counts, self._bar, w.HBox([self._prev, self._next]), self._head,
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
            with self._bar.hold_sync():  # one message per widget and refresh
                self._bar.value = ended
                self._bar.bar_style = ("danger" if counts["failed"] or counts["lost"] else
                                       "success" if sweep.done else "info")
            self._counts.value = self._counts_html(counts)
            widths = self._widths()
            self._head.value = (f"<pre class='sbx-sweep-head'>"
                                f"{esc(_line(self._columns(), widths))}</pre>")
            options = [(_line(self._cells(i), widths), i.index) for i in rows]
            if options != list(self._table.options):
                picked = self._table.value
                with self._table.hold_sync():
                    self._table.options = options
                    self._table.value = picked if picked in {o[1] for o in options} else None
            if self._prev.disabled != (self.page == 0):
                self._prev.disabled = self.page == 0
            if self._next.disabled != (self.page >= self.pages - 1):
                self._next.disabled = self.page >= self.pages - 1
        if sweep.done and self.display_handle is not None:
            # in an empty context, as RunLogView's final display (see _comm)
            contextvars.Context().run(self.display_handle.update, self)
        return not sweep.done

    def _counts_html(self, counts: dict[str, int]) -> str:
        sweep = self.sweep
        shown = " ".join(f"{badge(state)} {counts[state]}" for state in ITEM_STATES)
        return (f"{CSS}{STYLE}<div class='sbx-head'><b>{esc(sweep.name)}</b> <span class='sbx-muted'>"
                f"{esc(sweep.id)} · {len(sweep.items)} items · {esc(sweep.spec.profile)} · "
                f"page {self.page + 1} of {self.pages}</span> {shown}</div>")

    def _columns(self) -> list[str]:
        names = list(self.sweep.items[0].params) if self.sweep.items else []
        return ["#", *names, "state", "duration", "last line"]

    def _cells(self, item: Item) -> list[str]:
        return [str(item.index), *item.params.values(), item.state, _duration(item),
                item.last_line()]

    def _widths(self) -> list[int]:
        """Column widths of the page shown (the last line column is not padded)."""
        rows = [self._columns(), *(self._cells(i) for i in self._rows())]
        return [min(max(len(row[c]) for row in rows), 24) for c in range(len(rows[0]) - 1)]

    def text(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.sweep.counts().items() if n)
        return f"Sweep {self.sweep.id} ({self.sweep.name}): {len(self.sweep.items)} items: {counts}"

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        super().close()


def _line(cells: list[str], widths: list[int]) -> str:
    """``cells`` as one row of fixed-width columns (the last one as it is)."""
    return "  ".join(c[:w].ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]


def _duration(item: Item) -> str:
    run = item.run
    if run is None or run.started_at is None:
        return ""
    return f"{(run.ended_at or time.time()) - run.started_at:.1f} s"
