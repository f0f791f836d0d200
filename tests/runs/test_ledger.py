"""The run ledger a restarted kernel reads: private to the user, the latest record of each
run wins, a torn line is skipped, no code, environment or secret in it, and the states an
earlier kernel's runs are shown in."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sandbox_magics.identity import Identity
from sandbox_magics.runs import Run, RunSpec, RunState
from sandbox_magics.runs.ledger import KEEP, Ledger, RunRecord, every_kernel

SECRET = "s3cr3t-canary-value"
ME = Identity(client_id="c1", kernel_id="k1", process="host/1")
LATER = Identity(client_id="c2", kernel_id="k1", process="host/2")


def record_of(run_id: str, state: RunState = RunState.RUNNING, detach: bool = True) -> RunRecord:
    run = Run(run_id, RunSpec(f"echo {SECRET}", env={"TOKEN": SECRET}, name="train",
                              detach=detach), "local")
    run.state = state
    return RunRecord.of(run, ME)


def test_the_ledger_is_private_and_holds_no_code_env_or_secret(tmp_path: Path) -> None:
    ledger = Ledger("k1", tmp_path)
    ledger.append(record_of("r1"))
    assert stat.S_IMODE(ledger.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ledger.path.parent.stat().st_mode) == 0o700
    text = ledger.path.read_text()
    assert SECRET not in text and "TOKEN" not in text and "echo" not in text


def test_the_latest_record_of_a_run_wins_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    ledger = Ledger("k1", tmp_path)
    ledger.append(record_of("r1"))
    ledger.append(record_of("r2"))
    with open(ledger.path, "a") as fh:
        fh.write('{"id": "r3", "prof')
    ledger.append(record_of("r1", RunState.SUCCEEDED))
    records = ledger.records()
    assert list(records) == ["r1", "r2"]
    assert records["r1"].state == "succeeded" and records["r1"].name == "train"


def test_compacting_keeps_the_latest_of_the_last_runs_only(tmp_path: Path) -> None:
    ledger = Ledger("k1", tmp_path)
    for number in range(KEEP + 5):
        ledger.append(record_of(f"r{number}"))
    ledger.append(record_of("r7", RunState.FAILED))
    kept = ledger.compact()
    assert len(kept) == KEEP and "r0" not in kept and kept["r7"].state == "failed"
    assert len(ledger.path.read_text().splitlines()) == KEEP
    assert ledger.records() == kept


def test_every_kernel_reads_the_ledgers_of_all_kernels(tmp_path: Path) -> None:
    Ledger("k1", tmp_path).append(record_of("r1"))
    other = Ledger("k/2", tmp_path)
    other.append(json_record := record_of("r9"))
    assert other.path.name == "kernel-k_2.runs.jsonl"
    assert sorted(r.id for r in every_kernel(tmp_path)) == ["r1", "r9"]
    assert json.loads(other.path.read_text())["id"] == json_record.id


@pytest.mark.parametrize(("state", "detach", "kernel", "shown"), [
    (RunState.RUNNING, True, "k1", "running (started by the previous kernel at "),
    (RunState.DETACHED, True, "k1", "running (started by the previous kernel at "),
    (RunState.RUNNING, True, "k0", "running (started by kernel k1 at "),
    (RunState.RUNNING, False, "k1", "lost (it ran in a cell of the previous kernel, and ended with it)"),
    (RunState.SUCCEEDED, True, "k1", "succeeded"),
    (RunState.CANCELLED, False, "k1", "cancelled"),
])
def test_an_earlier_kernels_run_is_shown_as_the_table_says(
        state: RunState, detach: bool, kernel: str, shown: str) -> None:
    viewer = LATER if kernel == "k1" else Identity(client_id="c3", kernel_id=kernel, process="h/3")
    assert record_of("r1", state, detach).shown_state(viewer).startswith(shown)
