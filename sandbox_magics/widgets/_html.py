"""Shared pieces of the views: colours by state, CSS, escaping, sizes, the view base."""

from __future__ import annotations

import abc
import concurrent.futures
import html
import weakref
from collections.abc import Callable
from typing import Any

REFRESH_INTERVAL = 0.5
FULL_RATE_VIEWS = 8

SLOT_COLORS = {"free": "#d1fae5", "busy": "#2563eb", "session": "#a78bfa",
               "starting": "#fbbf24", "stopping": "#9ca3af", "dead": "#dc2626"}
RUN_COLORS = {"queued": "#6b7280", "running": "#2563eb", "succeeded": "#059669",
              "failed": "#dc2626", "timed-out": "#d97706", "cancelled": "#6b7280",
              "lost": "#dc2626", "error": "#dc2626"}

CSS = "<style>" + "".join(
    f".sbx-s-{state}{{background:{color}}}" for state, color in SLOT_COLORS.items()
) + (".sbx-grid i{display:inline-block;width:9px;height:9px;margin:1px;border-radius:2px}"
     ".sbx-row{line-height:11px;white-space:nowrap}"
     ".sbx-id{display:inline-block;min-width:9em;font:11px monospace}"
     ".sbx-log{max-height:24em;overflow:auto;font:12px monospace;white-space:pre-wrap;margin:0}"
     ".sbx-err{color:#b91c1c}.sbx-muted{color:#6b7280;font-size:11px}"
     "</style>")


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def badge(state: str) -> str:
    color = RUN_COLORS.get(state, "#6b7280")
    return f'<b style="color:{color}">{esc(state)}</b>'


Every = Callable[[Callable[[], float], Callable[[], bool]], "concurrent.futures.Future[None]"]


class PolledView(abc.ABC):
    """A view whose ipywidget is built once, then refreshed by a poller on the manager's
    loop until ``refresh`` returns False or it is closed. Without ipywidgets it is plain
    text and HTML.

    Views share one budget: up to `FULL_RATE_VIEWS` live views refresh every
    `REFRESH_INTERVAL` seconds; with more, each refreshes less often, so thirty views of
    chatty runs cost the kernel and the browser what eight do.
    """

    _live: weakref.WeakSet[PolledView] = weakref.WeakSet()

    def __init__(self, every: Every) -> None:
        self._every = every
        self._widget: Any = None
        self._poller: concurrent.futures.Future[None] | None = None

    @classmethod
    def interval(cls) -> float:
        return REFRESH_INTERVAL * max(1.0, len(cls._live) / FULL_RATE_VIEWS)

    @property
    def widget(self) -> Any:
        if self._widget is None:
            try:
                import ipywidgets  # noqa: F401
            except ImportError:
                return None
            self._widget = self._build()
            self.refresh()
            PolledView._live.add(self)
            self._poller = self._every(PolledView.interval, self._poll)
        return self._widget

    def _poll(self) -> bool:
        going = self.refresh()
        if not going:
            PolledView._live.discard(self)
        return going

    @abc.abstractmethod
    def _build(self) -> Any:
        """Create the ipywidget (called once, on first display)."""

    @abc.abstractmethod
    def refresh(self) -> bool:
        """Update the widget if something changed; False once there will be no more change."""

    @abc.abstractmethod
    def text(self) -> str:
        """The view as plain text, for frontends without widgets."""

    def html(self) -> str:
        return f"<pre>{esc(self.text())}</pre>"

    def close(self) -> None:
        PolledView._live.discard(self)
        if self._poller is not None:
            self._poller.cancel()
        if self._widget is not None:
            self._widget.close()
        self._widget = None

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        widget = self.widget
        bundle: dict[str, Any] = {}
        if widget is not None:
            data = widget._repr_mimebundle_()
            bundle.update(data[0] if isinstance(data, tuple) else data or {})
        bundle["text/plain"] = self.text()
        bundle["text/html"] = self.html()
        return bundle
