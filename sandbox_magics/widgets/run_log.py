"""`RunLogView`: the live log of one run — header, tail with stderr in red, follow, save."""

from __future__ import annotations

import contextvars
import logging
import re
import threading
from pathlib import Path
from typing import Any

from ..runs import Run
from ..runs.words import exit_words
from ._html import CSS, PolledView, badge, esc, file_link, output, size

TAIL_BYTES = 128 * 1024
TAIL_CHOICES = (50, 200, 1000)


def tail_lines(run: Run, lines: int) -> list[tuple[str, str]]:
    """The last ``lines`` lines of the run's log as (stream, text) pieces, in order."""
    pieces: list[tuple[str, str]] = []
    count = 0
    for stream, data in reversed(run.log.tail(TAIL_BYTES)):
        text = data.decode("utf-8", errors="replace")
        pieces.append((stream, text))
        count += text.count("\n")
        if count > lines:
            break
    pieces.reverse()
    excess = count - lines
    while excess > 0 and pieces:
        stream, text = pieces[0]
        newlines = text.count("\n")
        if newlines < excess:
            pieces.pop(0)
            excess -= newlines
            continue
        cut = 0
        for _ in range(excess):
            cut = text.index("\n", cut) + 1
        pieces[0] = (stream, text[cut:])
        excess = 0
    return [(stream, text) for stream, text in pieces if text]


class RunLogView(PolledView):
    """Live log of ``run``; never mixes in another run's output."""

    def __init__(self, run: Run, every: Any, directory: Path | None = None) -> None:
        super().__init__(every)
        self.run = run
        self.directory = directory
        self.display_handle: Any = None
        self._seen: tuple[Any, ...] | None = None

    def _build(self) -> Any:
        import ipywidgets as w
        self._header = w.HTML()
        self._body = w.HTML()
        self._follow = w.ToggleButton(value=True, layout=w.Layout(width="9em"))
        self._lines = w.Dropdown(options=TAIL_CHOICES, value=TAIL_CHOICES[1],
                                 description="Tail lines", layout=w.Layout(width="12em"))
        self._save = w.Button(description="Save full log", icon="download")
        self._cancel = w.Button(description="Cancel run", icon="stop", button_style="danger",
                                tooltip="Stop this run (SIGINT, then SIGTERM, then SIGKILL)")
        self._saved = w.Output()
        self._style_follow()
        self._follow.observe(lambda _: (self._style_follow(), self.refresh()), "value")
        self._lines.observe(lambda _: self.refresh(), "value")
        self._save.on_click(lambda _: self.save())
        self._cancel.on_click(lambda _: self.cancel())
        return w.VBox([self._header,
                       w.HBox([self._follow, self._lines, self._save, self._cancel, self._saved]),
                       self._body])

    def _style_follow(self) -> None:
        on = self._follow.value
        self._follow.description = "Follow: on" if on else "Follow: off"
        self._follow.icon = "arrow-down" if on else "pause"
        self._follow.button_style = "success" if on else ""
        self._follow.tooltip = ("Showing the newest output as it comes; click to hold the view"
                                if on else "The view is held; click to follow the newest output")

    def cancel(self) -> None:
        """Cancel the run from the panel without blocking the thread that handles the click
        (the escalation can take seconds)."""
        if self.run.done:
            return
        if self._widget is not None:
            self._cancel.disabled = True
            self._cancel.description = "Cancelling…"

        def stop() -> None:
            try:
                self.run.cancel()
            except Exception:
                logging.getLogger(__name__).exception("cancel of run %s failed", self.run.id)
        threading.Thread(target=stop, name=f"cancel-{self.run.id}", daemon=True).start()

    def _header_html(self) -> str:
        run = self.run
        where = f"{run.sandbox}/slot-{run.slot}" if run.sandbox else "waiting for a slot"
        code = f", {exit_words(run.exit_code)}" if run.exit_code is not None else ""
        error = f' <span class="sbx-err">{esc(run.error)}</span>' if run.error and run.done else ""
        # A state that may still change; a snapshot restored without the kernel says so.
        state = badge(run.state.value)
        if not run.done:
            state = f"<span class='sbx-live'>{state}</span>"
        return (f"{CSS}<div class='sbx-head'><b>{esc(run.name)}</b> <span class='sbx-muted'>"
                f"{esc(run.id)} · {esc(run.spec.interpreter)} · {esc(run.profile)} · {esc(where)}"
                f"</span> {state}{esc(code)} <span class='sbx-muted'>"
                f"{size(run.log.total_bytes)} of output</span>{error}</div>")

    def _body_html(self) -> str:
        body = "".join(
            f'<span class="sbx-err">{esc(text)}</span>' if stream == "stderr" else esc(text)
            for stream, text in tail_lines(self.run, self._lines.value))
        return f'<div class="sbx-logbox"><pre class="sbx-log">{body}</pre></div>'

    def refresh(self) -> bool:
        if self._widget is None:
            return False
        run = self.run
        key = (run.state, run.sandbox, run.log.chunks, self._follow.value, self._lines.value)
        if key != self._seen:
            lines_changed = self._seen is not None and self._seen[4] != key[4]
            self._seen = key
            self._header.value = self._header_html()
            if self._follow.value or lines_changed:
                self._body.value = self._body_html()
            if run.done:
                self._cancel.disabled = True
                self._cancel.description = "Cancel run"
                self._cancel.layout.display = "none"
        if run.done and self.display_handle is not None:
            # In an empty context, as the poller's own publishes no parent (see _comm):
            # the final display goes to the kernel's current request, as before.
            contextvars.Context().run(self.display_handle.update, self)
        return not run.done

    def save(self) -> Path:
        """Write the whole log (both streams, in order) next to the notebook."""
        directory = self.directory or Path.cwd()
        path = directory / (re.sub(r"[^\w.-]+", "_", self.run.name) + ".log")
        with open(path, "wb") as fh:
            for _, data in self.run.log.chunks_iter():
                fh.write(data)
        if self._widget is not None:
            self._saved.outputs = (output(file_link(path, size(path.stat().st_size))),)
        return path

    def text(self) -> str:
        run = self.run
        lines = "".join(text for _, text in tail_lines(run, 20))
        code = f", {exit_words(run.exit_code)}" if run.exit_code is not None else ""
        head = f"Run {run.id} ({run.name}, profile {run.profile}): {run.state.value}{code}"
        live = "" if run.done else f"\n[live log: %sandbox logs {run.id}]"
        return head + (f"\n{lines.rstrip()}" if lines else "") + live
