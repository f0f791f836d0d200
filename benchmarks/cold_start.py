"""Case 7: a fresh kernel's ``%load_ext`` to the first output line of ``%%sandbox bash``
(agent start included), vs a fresh kernel's ``%%bash echo hi``."""

from __future__ import annotations

import time

from tests.kernel_driver import Kernel

from ._harness import Row, Stat, kernel


def first_line(k: Kernel, cells: list[str]) -> float:
    """Seconds from sending the first cell to the arrival of the output ``hi``."""
    seen: list[float] = []
    start = time.monotonic()
    for cell in cells:
        k.execute(cell, on_stream=lambda text: seen.append(time.monotonic()) if "hi" in text else None)
    return seen[0] - start


def run(quick: bool) -> list[Row]:
    n = 1 if quick else 5
    ours, theirs = [], []
    for _ in range(n):
        with kernel(load=False) as k:
            ours.append(first_line(k, ["%load_ext sandbox_magics", "%%sandbox bash --profile bench\necho hi"]))
            k.execute("%sandbox shutdown")
        with kernel(load=False) as k:
            theirs.append(first_line(k, ["%%bash\necho hi"]))
    a, b = Stat.of(ours), Stat.of(theirs)
    return [Row("7 cold start", "%load_ext → first line of %%sandbox bash vs %%bash (fresh kernels)",
                a.fmt("ms", 1e3), b.fmt("ms", 1e3), a.median / b.median, "–", None)]
