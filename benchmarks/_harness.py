"""Timing, statistics, the result table, and the environments the cases share."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_magics import Client
from tests.kernel_driver import Kernel


@dataclass(frozen=True)
class Stat:
    """Median and spread (10th to 90th percentile) of repeated measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        ordered = sorted(samples)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
        return cls(statistics.median(ordered), pick(0.1), pick(0.9), len(ordered))

    def fmt(self, unit: str, scale: float = 1.0) -> str:
        return (f"{self.median * scale:.3g} {unit} [{self.low * scale:.3g}–{self.high * scale:.3g}] "
                f"n={self.n}")


@dataclass(frozen=True)
class Row:
    """One line of the table: ours vs the baseline, their ratio and the target."""

    case: str
    measure: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None

    def cells(self) -> list[str]:
        ratio = "–" if self.ratio is None else f"{self.ratio:.2f}×"
        met = {True: "yes", False: "no", None: "–"}[self.met]
        return [self.case, self.measure, self.ours, self.baseline, ratio, self.target, met]


HEADER = ["case", "measure", "sandbox_magics", "baseline (same run)", "ratio", "target", "met"]


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def repeat(fn: Callable[[], Any], n: int, warmup: int = 2) -> Stat:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Stat.of(samples)


PROFILES = """
[profiles.bench]
slots_per_sandbox = {slots}
max_sandboxes = {sandboxes}
min_sandboxes = {sandboxes}
idle_timeout = 600

[profiles.bench.local]
workspace_base = "{ws}"
"""


@contextmanager
def profiles(slots: int, sandboxes: int) -> Iterator[Path]:
    """A profiles file whose ``bench`` profile has ``sandboxes`` × ``slots`` started up front."""
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        path = Path(tmp) / "profiles.toml"
        path.write_text(PROFILES.format(slots=slots, sandboxes=sandboxes, ws=Path(tmp) / "ws"))
        yield path


@contextmanager
def client(slots: int, sandboxes: int) -> Iterator[Client]:
    """A Client whose ``bench`` pool is up and warm."""
    with profiles(slots, sandboxes) as path:
        c = Client(path)
        try:
            runs = [c.submit("true", profile="bench") for _ in range(slots * sandboxes)]
            for run in runs:
                run.wait(120)
            yield c
        finally:
            c.shutdown()


@contextmanager
def kernel(slots: int = 4, sandboxes: int = 1, load: bool = True) -> Iterator[Kernel]:
    """A real kernel (extension loaded, ``bench`` profile as default) and its profiles."""
    with profiles(slots, sandboxes) as path:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_MAGICS")}
        env["SANDBOX_MAGICS_PROFILES"] = str(path)
        k = Kernel(env)
        try:
            if load:
                k.execute("%load_ext sandbox_magics")
            yield k
        finally:
            if load:
                k.execute("%sandbox shutdown", timeout=120)
            k.shutdown()
