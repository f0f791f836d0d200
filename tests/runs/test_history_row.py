"""A run's history row and the registry's frame say how much of its log was dropped."""

from __future__ import annotations

from pathlib import Path

from sandbox_magics.runs import LogBuffer, Run, RunRegistry, RunSpec
from sandbox_magics.runs.log import SpillBudget
from sandbox_magics.runs.registry import COLUMNS, history_frame


def test_history_row_and_frame_have_the_log_dropped_bytes_column(tmp_path: Path) -> None:
    log = LogBuffer(memory_limit=1_000, spill_dir=str(tmp_path), disk_limit=1_024,
                    budget=SpillBudget(10**6))
    run = Run("r1", RunSpec(code="yes"), "local", log)
    for _ in range(100):
        run._output("stdout", b"y\n" * 50)  # records of 105 bytes: 4 in the head, 2 per ring file
    row = run.as_row()
    assert list(row) == COLUMNS
    assert row["output_bytes"] == 10_000 and row["log_dropped_bytes"] == 10_000 - 8 * 100
    registry = RunRegistry()
    registry.add(run)
    assert history_frame([run.as_row() for run in registry]).loc["r1", "log_dropped_bytes"] == 9_200
