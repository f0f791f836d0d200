"""`RunRegistry`: every run of this kernel, found by id or name; `history_frame`: the history
as a DataFrame."""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

from ..exceptions import UnknownRunError
from .run import Run

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["id", "name", "profile", "backend", "interpreter", "session", "sandbox", "slot",
           "state", "exit_code", "queued", "started", "ended", "wait_s", "run_s",
           "output_bytes", "log_dropped_bytes", "cost", "error"]


class RunRegistry:
    """Runs in submission order; ids are ``r<first>``, ``r<first+1>``, ... (a restarted
    kernel goes on from its predecessor's last id)."""

    def __init__(self, first: int = 1) -> None:
        self._runs: dict[str, Run] = {}
        self._counter = itertools.count(first)
        self._lock = threading.Lock()

    def next_id(self) -> str:
        with self._lock:
            return f"r{next(self._counter)}"

    def add(self, run: Run) -> None:
        with self._lock:
            self._runs[run.id] = run

    def __iter__(self):  # type: ignore[no-untyped-def]
        with self._lock:
            return iter(list(self._runs.values()))

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, key: str) -> Run:
        """The run with id ``key``, else the latest run named ``key``.

        Raises:
            UnknownRunError: no run has that id or name (the sentence names recent runs).
        """
        with self._lock:
            if key in self._runs:
                return self._runs[key]
            named = [r for r in self._runs.values() if r.spec.name == key]
        if named:
            return named[-1]
        known = ", ".join(list(self._runs)[-5:]) or "none yet"
        raise UnknownRunError(f"No run with id or name {key!r}; recent runs: {known}.")



def history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows of the run history (`Run.as_row`) as a DataFrame indexed by run id."""
    import pandas as pd
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("queued", "started", "ended"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame.set_index("id")
