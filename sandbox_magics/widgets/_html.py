"""Shared pieces of the views: colours by state, CSS, escaping, sizes, the view base."""

from __future__ import annotations

import abc
import concurrent.futures
import html
import weakref
from collections.abc import Callable
from typing import Any

from ..pool import SlotState
from . import _comm

REFRESH_INTERVAL = 0.5
FULL_RATE_VIEWS = 8

SLOT_COLORS = {SlotState.FREE: "#ecfdf5", SlotState.BUSY: "#2563eb", SlotState.SESSION: "#8b5cf6",
               SlotState.STARTING: "#f59e0b", SlotState.DRAINING: "#fde68a",
               SlotState.STOPPING: "#9ca3af", SlotState.DEAD: "#dc2626"}
SLOT_BORDERS = {SlotState.FREE: "#059669", SlotState.BUSY: "#1e40af", SlotState.SESSION: "#6d28d9",
                SlotState.STARTING: "#b45309", SlotState.DRAINING: "#b45309",
                SlotState.STOPPING: "#6b7280", SlotState.DEAD: "#991b1b"}
LEGEND_STATES = (SlotState.FREE, SlotState.BUSY, SlotState.SESSION, SlotState.STARTING,
                 SlotState.DRAINING, SlotState.DEAD)
# A run state's colour: JupyterLab's theme variable that reads (4.5:1) on the notebook in
# its light and dark themes alike, and a light-theme value for other frontends. A timeout
# is shown as the failure it is (JupyterLab's light warning colours are too pale for text).
MUTED, FAILED = "var(--jp-ui-font-color2,#6b7280)", "var(--jp-error-color1,#dc2626)"
RUN_COLORS = {"queued": MUTED, "running": "var(--jp-brand-color1,#2563eb)",
              "succeeded": "var(--jp-success-color0,#047857)", "failed": FAILED,
              "timed-out": FAILED, "cancelled": MUTED, "lost": FAILED, "error": FAILED}

# Text colours are JupyterLab's theme variables (light and dark alike), with the light
# theme's values as fallbacks for other frontends. A slot's border is set by width and
# style only, so its state's border colour applies.
CSS = "<style>" + "".join(
    f".sbx-s-{state.value}{{background:{color};border-color:{SLOT_BORDERS[state]}}}"
    for state, color in SLOT_COLORS.items()
) + (".sbx-grid i,.sbx-legend i{display:inline-block;box-sizing:border-box;width:16px;height:16px;"
     "margin:1px 2px 1px 0;border-width:2px;border-style:solid;border-radius:3px;"
     "vertical-align:middle}"
     ".sbx-row{line-height:20px;white-space:nowrap}"
     ".sbx-legend{font-size:12px;color:var(--jp-ui-font-color1,#374151);margin:2px 0 4px}"
     ".sbx-legend span{margin-right:10px;white-space:nowrap}"
     ".sbx-id{display:inline-block;min-width:10em;font:12px monospace;"
     "color:var(--jp-ui-font-color1,#374151)}"
     ".sbx-logbox{max-height:24em;overflow:auto;display:flex;flex-direction:column-reverse;"
     "border:1px solid var(--jp-border-color2,#e5e7eb);border-radius:3px}"
     ".sbx-log{flex:none;overflow:visible;font:12px monospace;white-space:pre-wrap;margin:0;padding:2px 4px;"
     "color:var(--jp-content-font-color1,#111827)}"
     ".sbx-err{color:var(--jp-error-color1,#b91c1c)}"
     ".sbx-muted{color:var(--jp-ui-font-color2,#4b5563);font-size:12px}"
     ".sbx-events{color:var(--jp-ui-font-color2,#4b5563);font-size:12px;margin-top:2px}"
     "</style>")

def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def output(obj: Any) -> dict[str, Any]:
    """``obj`` as one ``display_data`` output, for an Output widget's ``outputs``: setting
    them whole replaces a preview in one message (clear_output followed by an append
    raced with it in the browser, leaving every second preview empty)."""
    from IPython.core.formatters import format_display_data
    data, metadata = format_display_data(obj)
    return {"output_type": "display_data", "data": data, "metadata": metadata}


def file_link(path: Any, note: str = "") -> Any:
    """A download link to ``path`` as an IPython HTML object, for an Output widget.

    The link is relative to the kernel's working folder (the notebook's), so JupyterLab
    resolves it to the server's file URL and, as it has ``download``, the browser saves the
    file itself (a link in a widget's HTML would point at JupyterLab's own page).
    """
    import os
    import urllib.parse
    from IPython.display import HTML
    relative = os.path.relpath(os.path.abspath(path), os.getcwd())
    href = urllib.parse.quote(relative.replace(os.sep, "/"))
    name = os.path.basename(path)
    extra = f' <span class="sbx-muted">{esc(note)}</span>' if note else ""
    return HTML(f'Saved <a href="{esc(href)}" download="{esc(name)}">{esc(name)}</a>{extra}')


def badge(state: str) -> str:
    color = RUN_COLORS.get(state, MUTED)
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
        self._detached = False

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
            self._widget.add_class("sbx-panel")  # restored without its kernel: a snapshot
            self.refresh()
            _comm.unpin(self._widget)
            PolledView._live.add(self)
            self._poller = self._every(type(self).interval, self._poll)
        return self._widget

    def _poll(self) -> bool:
        if not self._detached:
            _comm.detach()
            self._detached = True
        going = self.refresh()
        if self._widget is not None:
            _comm.unpin(self._widget)
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
