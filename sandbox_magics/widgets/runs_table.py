"""`tidy`: the run history as ``%sandbox runs`` shows it — no NaN, None or nanoseconds."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..pool.cost import money

if TYPE_CHECKING:
    import pandas as pd

TEXT_COLUMNS = ("name", "session", "sandbox", "error")
INT_COLUMNS = ("slot", "exit_code", "output_bytes", "log_dropped_bytes")
TIME_COLUMNS = ("queued", "started", "ended")
SECONDS_COLUMNS = ("wait_s", "run_s")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# A box of its own that scrolls both ways, at most 70% of the window high, so that its
# horizontal scrollbar is in view with the column names (which stay on top as rows scroll),
# not below the last of many rows.
STYLE = ("<style>.sbx-runs{overflow:auto;max-width:100%;max-height:70vh}"
         ".sbx-runs td,.sbx-runs th{white-space:nowrap}"
         ".sbx-runs thead{position:sticky;top:0;z-index:1}"
         ".sbx-runs thead th{background:var(--jp-layout-color0,#fff)}</style>")


@functools.cache
def runs_frame_class() -> type:
    """`RunsFrame`, made on first use (loading the extension does not import pandas)."""
    import pandas as pd

    class RunsFrame(pd.DataFrame):
        """A DataFrame of runs whose HTML is one line a row, scrolls in a box of its own
        when wide or long and shows nothing where a value is missing (``<NA>``, ``NaT``).
        Anything derived from it (a filter, a column) is a plain DataFrame."""

        def _repr_html_(self) -> str | None:
            formatters: dict[Any, Any] = {
                column: _time for column in TIME_COLUMNS if column in self.columns}
            frame = pd.DataFrame(self)
            for column in INT_COLUMNS:
                if column in frame:  # neither na_rep nor formatters reach a nullable integer
                    frame[column] = frame[column].astype(object).where(frame[column].notna(), "")
            table = frame.to_html(na_rep="", formatters=formatters,
                                  max_rows=pd.get_option("display.max_rows"))
            return f'{STYLE}<div class="sbx-runs">{table}</div>'

    return RunsFrame


def _time(value: Any) -> str:
    import pandas as pd
    return "" if pd.isna(value) else value.strftime(TIME_FORMAT)


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """``Client.runs()`` for reading: empty text where a run has no name, session or error;
    whole numbers as integers; times to the second; durations to the millisecond. Columns,
    index and time types stay as they are."""
    frame = frame.copy()
    for column in TEXT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), "")
    for column in INT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    for column in TIME_COLUMNS:
        if column in frame:
            frame[column] = frame[column].dt.floor("s")
    for column in SECONDS_COLUMNS:
        if column in frame:
            frame[column] = frame[column].round(3)
    if "cost" in frame:  # dollars as read; nothing where free (local) or unknown
        frame["cost"] = [money(v) if v == v and v is not None else "" for v in frame["cost"]]
    return runs_frame_class()(frame)
