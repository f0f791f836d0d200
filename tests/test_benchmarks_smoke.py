"""The benchmark command runs end to end with tiny sizes, so it cannot rot (no timings judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.bench
def test_benchmark_command_runs_every_case_and_prints_the_table() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    cases = {row.split(" | ")[0].strip("| ").split(" ", 1)[0] for row in rows[1:]}
    assert cases == {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}
    assert all(row.count(" | ") == 6 for row in rows)
