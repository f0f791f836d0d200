"""Artifacts: the files a run created or changed in its workspace, copied here at release.

Files changed since the run started are copied, smallest first, until the profile's
``artifact_limit_mb`` is spent; the rest are listed with the reason they were not kept.
Copies live in a per-kernel folder, so they outlive the slot and its next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends.base import FileInfo, Sandbox, in_workspace

if TYPE_CHECKING:
    import pandas as pd

MTIME_SLACK = 2.0


@dataclass(frozen=True)
class Artifact:
    """One file of a run: ``local`` is its copy here, or None with ``skipped`` saying why."""

    path: str
    size: int
    mtime: float
    local: Path | None = None
    skipped: str | None = None

    def read_bytes(self, limit: int | None = None) -> bytes:
        if self.local is None:
            raise FileNotFoundError(f"Artifact {self.path!r} was not kept: {self.skipped}.")
        with open(self.local, "rb") as fh:
            return fh.read(limit) if limit is not None else fh.read()


async def collect(sandbox: Sandbox, slot: int, since: float, dest: Path,
                  limit_mb: float, inputs: dict[str, FileInfo] | None = None) -> list[Artifact]:
    """Copy the slot's files modified at or after ``since`` into ``dest``, up to ``limit_mb``;
    ``inputs`` (the files uploaded for the run, as listed then) are left out unless the run
    changed them."""
    inputs = inputs or {}
    files = [f for f in await sandbox.list_files(slot)
             if f.mtime >= since - MTIME_SLACK and in_workspace(f.path) and inputs.get(f.path) != f]
    budget = int(limit_mb * 2**20)
    kept: list[Artifact] = []
    for info in sorted(files, key=lambda f: (f.size, f.path)):
        if info.size > budget:
            kept.append(Artifact(info.path, info.size, info.mtime, skipped=(
                f"over the profile's artifact limit of {limit_mb:g} MB")))
            continue
        local = dest / info.path
        await sandbox.download(slot, info.path, local)
        budget -= info.size
        kept.append(Artifact(info.path, info.size, info.mtime, local))
    return sorted(kept, key=lambda a: a.path)


def to_frame(artifacts: list[Artifact]) -> pd.DataFrame:
    """Artifacts as a DataFrame: path, size, modified time, kept or why not."""
    import pandas as pd
    frame = pd.DataFrame(
        [{"path": a.path, "size": a.size, "modified": a.mtime,
          "kept": a.local is not None, "note": a.skipped or ""} for a in artifacts],
        columns=["path", "size", "modified", "kept", "note"])
    frame["modified"] = pd.to_datetime(frame["modified"], unit="s", utc=True)
    return frame
