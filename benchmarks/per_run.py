"""Case 1: per-run overhead of a trivial command, API and cell, vs raw subprocess and %%bash."""

from __future__ import annotations

import subprocess

from ._harness import Row, Stat, client, kernel, repeat

TARGET = 1.5


def cell_stat(k: object, code: str, n: int) -> Stat:
    def once() -> None:
        reply = k.execute(code)  # type: ignore[attr-defined]
        assert reply.status == "ok", reply.error
    return repeat(once, n)


def run(quick: bool) -> list[Row]:
    n = 10 if quick else 200
    raw = repeat(lambda: subprocess.run(["bash", "-c", "true"], check=True), n)
    with client(slots=4, sandboxes=1) as c:
        api = repeat(lambda: c.run("true", profile="bench"), n)
    with kernel(slots=4, sandboxes=1) as k:
        k.execute("%%sandbox bash --profile bench\ntrue")
        bash_cell = cell_stat(k, "%%bash\ntrue", n)
        sandbox_cell = cell_stat(k, "%%sandbox bash --profile bench\ntrue", n)
    api_ratio = api.median / raw.median
    cell_ratio = sandbox_cell.median / bash_cell.median
    return [
        Row("1 per-run overhead", f"{n}× `true`, Python API vs subprocess.run",
            api.fmt("ms", 1e3), raw.fmt("ms", 1e3), api_ratio, f"≤ {TARGET}×", api_ratio <= TARGET),
        Row("1 per-run overhead", f"{n}× `true`, %%sandbox cell vs %%bash cell",
            sandbox_cell.fmt("ms", 1e3), bash_cell.fmt("ms", 1e3), cell_ratio, f"≤ {TARGET}×",
            cell_ratio <= TARGET),
    ]
