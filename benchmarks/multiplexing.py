"""Case 6: sandboxes started to serve 100 concurrent runs with 10 slots per sandbox."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sandbox_magics import Client

from ._harness import Row

PROFILE = """
[profiles.mux]
slots_per_sandbox = 10
max_sandboxes = 20

[profiles.mux.local]
workspace_base = "{ws}"
"""


def run(quick: bool) -> list[Row]:
    runs_n = 30 if quick else 100
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        path = Path(tmp) / "profiles.toml"
        path.write_text(PROFILE.format(ws=Path(tmp) / "ws"))
        c = Client(path)
        try:
            runs = [c.submit("sleep 1", profile="mux") for _ in range(runs_n)]
            for run in runs:
                run.wait(300)
            pool = c.status()[0]
            started = sum(1 for e in pool["events"] if e["kind"] == "ready")
            started = max(started, len(pool["sandboxes"]))
        finally:
            c.shutdown()
    expected = runs_n // 10
    return [Row("6 multiplexing", f"sandboxes for {runs_n} concurrent runs, 10 slots each (local)",
                str(started), f"{expected} expected", started / expected, "exactly 1×",
                started == expected)]
