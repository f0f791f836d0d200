"""`Ledger`: what a later kernel needs to find this kernel's runs, kept beside the state file.

Each change of a run appends its `RunRecord` (ids, name, profile, sandbox, slot, state,
times; never its code, environment or a secret) as one JSON line to
``kernel-<id>.runs.jsonl`` in `identity.state_dir`, mode 0600. A kernel restarted under
the same id reads its predecessor's records (`Ledger.records`), ``%sandbox runs --all``
those of every kernel of this user (`every_kernel`); the latest line of a run wins.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..identity import Identity, kernel_file_stem, locked, state_dir, write_private
from .run import Run
from .state import RunState

SUFFIX = ".runs.jsonl"
KEEP = 2000
"""Records a ledger keeps when it is compacted (the latest runs)."""
GOING = frozenset({RunState.RUNNING.value, RunState.CANCELLING.value,
                   RunState.DETACHING.value, RunState.DETACHED.value})


@dataclass(frozen=True)
class RunRecord:
    """One run as a later kernel sees it; ``process`` is the host/pid of the kernel
    process that started it (or attached it last), ``kernel`` that kernel's id."""

    id: str
    profile: str
    backend: str
    interpreter: str
    state: str
    kernel: str
    process: str
    queued: float
    name: str | None = None
    session: str | None = None
    sandbox: str | None = None
    engine_id: str | None = None
    slot: int | None = None
    exit_code: int | None = None
    detach: bool = False
    raise_error: bool = True
    timeout: float | None = None
    started: float | None = None
    ended: float | None = None
    error: str | None = None

    @classmethod
    def of(cls, run: Run, me: Identity) -> RunRecord:
        return cls(id=run.id, profile=run.spec.profile, backend=run.backend,
                   interpreter=run.spec.interpreter, state=run.state.value,
                   kernel=me.kernel_id, process=me.process, queued=run.queued_at,
                   name=run.spec.name, session=run.spec.session, sandbox=run.sandbox,
                   engine_id=run.engine_id, slot=run.slot, exit_code=run.exit_code,
                   detach=run.spec.detach, raise_error=run.spec.raise_error,
                   timeout=run.timeout, started=run.started_at,
                   ended=run.ended_at, error=run.error)

    @classmethod
    def parse(cls, line: str) -> RunRecord | None:
        """The record of one ledger line; None for a line that is not one (a torn write)."""
        try:
            data = json.loads(line)
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in names})
        except (ValueError, TypeError):
            return None

    @property
    def going(self) -> bool:
        """Whether the run went on when last recorded (then a detached one may still)."""
        return self.state in GOING

    def shown_state(self, me: Identity) -> str:
        """The state as ``%sandbox runs`` shows a run of an earlier kernel process."""
        if not self.going:
            return self.state
        who = "the previous kernel" if self.kernel == me.kernel_id else f"kernel {self.kernel}"
        if not self.detach:
            return f"lost (it ran in a cell of {who}, and ended with it)"
        at = time.strftime("%H:%M", time.localtime(self.started or self.queued))
        return f"running (started by {who} at {at})"


class Ledger:
    """The run records of kernel ``kernel`` in ``root``'s state folder."""

    _thread_lock = threading.Lock()

    def __init__(self, kernel: str, root: Path | None = None) -> None:
        self.path = state_dir(root) / f"{kernel_file_stem(kernel)}{SUFFIX}"

    def __repr__(self) -> str:
        return f"<Ledger {self.path}>"

    def append(self, record: RunRecord) -> None:
        """Add ``record`` as the latest of its run, in one write (on a line of its own,
        should a crash have torn the last one)."""
        line = (json.dumps(dataclasses.asdict(record)) + "\n").encode()
        with locked(self.path.with_suffix(".lock"), self._thread_lock):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                size = os.fstat(fd).st_size
                torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
                os.write(fd, b"\n" + line if torn else line)
            finally:
                os.close(fd)

    def records(self) -> dict[str, RunRecord]:
        """The latest record of each run, in the order runs first appear."""
        return _fold(self.path)

    def compact(self) -> dict[str, RunRecord]:
        """Rewrite the file with the latest record of each of its last `KEEP` runs; return them."""
        with locked(self.path.with_suffix(".lock"), self._thread_lock):
            records = _fold(self.path)
            kept = dict(list(records.items())[-KEEP:])
            if records:
                write_private(self.path, "".join(
                    json.dumps(dataclasses.asdict(r)) + "\n" for r in kept.values()))
        return kept


def every_kernel(root: Path | None = None) -> list[RunRecord]:
    """The latest records of every kernel of this user, oldest ledger first."""
    folder = state_dir(root)
    files = sorted(folder.glob(f"kernel-*{SUFFIX}"), key=lambda p: p.stat().st_mtime) \
        if folder.is_dir() else []
    return [record for path in files for record in _fold(path).values()]


def _fold(path: Path) -> dict[str, RunRecord]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    records: dict[str, RunRecord] = {}
    for line in text.splitlines():
        if (record := RunRecord.parse(line)) is not None:
            records[record.id] = record
    return records
