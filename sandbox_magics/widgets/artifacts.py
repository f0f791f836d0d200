"""`ArtifactsView`: browse the files a run left — list, preview, download next to the notebook.

Previews: text (first 64 KB), images, CSV as a DataFrame (first 1,000 rows). Artifacts
are local copies taken at release, so this works after the slot has been reused.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any


from ..runs import Artifact, Run
from ..runs.artifacts import to_frame
from ._html import CSS, PolledView, esc, file_link, output, size

if TYPE_CHECKING:
    import pandas as pd

TEXT_PREVIEW = 64 * 1024
CSV_ROWS = 1000
IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif"}
CSV_SUFFIXES = {".csv", ".tsv"}


def preview(artifact: Artifact) -> Any:
    """Something IPython can display for ``artifact``: an Image, a DataFrame or text."""
    import pandas as pd
    from IPython.display import Image, Pretty
    if artifact.local is None:
        return Pretty(f"{artifact.path}: not kept ({artifact.skipped}).")
    suffix = PurePosixPath(artifact.path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return Image(filename=str(artifact.local), format=IMAGE_SUFFIXES[suffix])
    if suffix in CSV_SUFFIXES:
        sep = "\t" if suffix == ".tsv" else ","
        try:
            header = 0 if has_header(artifact.read_bytes(TEXT_PREVIEW), sep) else None
            return pd.read_csv(artifact.local, nrows=CSV_ROWS, sep=sep, header=header)
        except (ValueError, pd.errors.ParserError) as exc:
            return Pretty(f"{artifact.path} is not readable as CSV: {exc}")
    data = artifact.read_bytes(TEXT_PREVIEW)
    if b"\0" in data[:4096]:
        return Pretty(f"{artifact.path}: binary file of {size(artifact.size)}; download it to open it.")
    more = "\n[…]" if artifact.size > TEXT_PREVIEW else ""
    return Pretty(data.decode("utf-8", errors="replace") + more)


def has_header(data: bytes, sep: str) -> bool:
    """Whether a CSV's first row names its columns, judged on ``data`` (its first bytes).

    Names are not numbers, they differ from each other and none is one of its column's
    values: a first row with a number, a name twice (empty ones aside: pandas writes an
    unnamed index so) or a value that recurs below it is data. Any other first row is a
    header, so an all-text file whose first row repeats nothing is read as pandas reads
    every file by default, with a header. (`csv.Sniffer` judges text columns by their
    values' lengths, which vary, and so called the names of an all-text file data.)
    """
    text = data.decode("utf-8", errors="replace")
    if len(data) >= TEXT_PREVIEW and "\n" in text:
        text = text[:text.rindex("\n")]  # the sample's last line may be cut short
    first, *rest = list(csv.reader(io.StringIO(text), delimiter=sep)) or [[]]
    names = [cell for cell in first if cell]
    if any(_is_number(name) for name in names) or len(set(names)) < len(names):
        return False
    return not any(name and any(row[i:i + 1] == [name] for row in rest)
                   for i, name in enumerate(first))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def download(artifact: Artifact, directory: Path | None = None) -> Path:
    """Copy ``artifact`` into ``directory`` (the notebook's, by default); return the copy."""
    if artifact.local is None:
        raise FileNotFoundError(f"Artifact {artifact.path!r} was not kept: {artifact.skipped}.")
    target = (directory or Path.cwd()) / PurePosixPath(artifact.path).name
    shutil.copyfile(artifact.local, target)
    return target


MAX_ROWS = 8
MAX_WIDTH_CH = 80


def label(artifact: Artifact) -> str:
    """How a file reads in the list: its path and size, and whether it was kept."""
    return f"{artifact.path}  ({size(artifact.size)}{'' if artifact.local else ', not kept'})"


def list_rows(count: int) -> int:
    """Rows of a list of ``count`` files: one a file up to `MAX_ROWS`, and at least two, as
    a select of one row is a drop-down that hides its file until clicked."""
    return max(2, min(count, MAX_ROWS))


def list_width(labels: list[str]) -> str:
    """A width that fits the longest label (in ``ch``, a digit's width: an overestimate of
    a proportional font's average letter), up to `MAX_WIDTH_CH`."""
    return f"{min(max(map(len, labels), default=0) + 4, MAX_WIDTH_CH)}ch"


class ArtifactsView(PolledView):
    """The artifacts of ``run``; fills in when the run ends."""

    def __init__(self, run: Run, every: Any, directory: Path | None = None) -> None:
        super().__init__(every)
        self.run = run
        self.directory = directory
        self._shown: int | None = None

    def _build(self) -> Any:
        import ipywidgets as w
        self._header = w.HTML()
        self._files = w.Select(options=[], layout=w.Layout(max_width="100%"))
        self._download = w.Button(description="Download", icon="download")
        self._status = w.Output()
        self._preview = w.Output()
        self._preview.add_class("sbx-preview")
        self._files.observe(lambda change: self._show(change["new"]), "value")
        self._download.on_click(lambda _: self._save())
        return w.VBox([self._header, w.HBox([self._files, w.VBox([self._download, self._status])]),
                       self._preview])

    def _selected(self) -> Artifact | None:
        index = self._files.index
        return self.run.artifacts[index] if index is not None and self.run.artifacts else None

    def _show(self, _: Any) -> None:
        artifact = self._selected()
        self._preview.outputs = () if artifact is None else (output(preview(artifact)),)

    def _save(self) -> None:
        from IPython.display import HTML
        artifact = self._selected()
        if artifact is None:
            self._status.outputs = (output(HTML("Select a file first.")),)
            return
        try:
            target = download(artifact, self.directory)
        except OSError as exc:
            self._status.outputs = (output(HTML(f'<span class="sbx-err">{esc(exc)}</span>')),)
            return
        self._status.outputs = (output(file_link(target)),)

    def refresh(self) -> bool:
        if self._widget is None:
            return False
        run = self.run
        shown = len(run.artifacts) if run.done else -1  # -1: still going, nothing collected
        if self._shown != shown:
            self._shown = shown
            self._header.value = CSS + self._summary_html()
            labels = [label(a) for a in run.artifacts]
            self._files.options = labels
            self._files.rows = list_rows(len(labels))
            self._files.layout.width = list_width(labels)
            for part in (self._files, self._download):
                part.layout.display = None if labels else "none"
        return not run.done

    def _summary_html(self) -> str:
        run = self.run
        if not run.done:
            return f"<b>{esc(run.name)}</b> is {esc(run.state.value)}: its files are collected when it ends."
        return (f"<b>{esc(run.name)}</b>: {len(run.artifacts)} file(s), "
                f"{size(sum(a.size for a in run.artifacts))}")

    def frame(self) -> pd.DataFrame:
        return to_frame(self.run.artifacts)

    def text(self) -> str:
        if not self.run.done:
            return f"Run {self.run.id} is {self.run.state.value}: its files are collected when it ends."
        if not self.run.artifacts:
            return f"Run {self.run.id} left no files."
        return f"Artifacts of run {self.run.id}:\n{self.frame().to_string(index=False)}"

    def html(self) -> str:
        if not self.run.done or not self.run.artifacts:
            return f"<p>{esc(self.text())}</p>"
        return self.frame().to_html(index=False)
