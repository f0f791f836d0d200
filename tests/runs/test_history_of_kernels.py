"""The run history a kernel shows: its own runs, those of the kernel it restarted (same
kernel id), and with ``all_kernels`` the live ``--bg`` runs of the user's other kernels;
its run ids go on after its predecessor's."""

from __future__ import annotations

from pathlib import Path

from sandbox_magics.identity import Identity
from sandbox_magics.manager import Manager
from sandbox_magics.runs import Run, RunSpec, RunState
from sandbox_magics.runs.ledger import Ledger, RunRecord

BEFORE = Identity(client_id="c1", kernel_id="k1", process="host/1")
NOW = Identity(client_id="c2", kernel_id="k1", process="host/2")
OTHER = Identity(client_id="c3", kernel_id="k2", process="host/3")


def recorded(root: Path, me: Identity, run_id: str, state: RunState, detach: bool) -> None:
    run = Run(run_id, RunSpec("true", detach=detach), "local")
    run.state = state
    Ledger(me.kernel_id, root).append(RunRecord.of(run, me))


def test_a_restarted_kernel_lists_its_predecessors_runs_and_numbers_after_them(
        tmp_path: Path) -> None:
    recorded(tmp_path, BEFORE, "r1", RunState.SUCCEEDED, False)
    recorded(tmp_path, BEFORE, "r2", RunState.RUNNING, True)
    recorded(tmp_path, OTHER, "r5", RunState.RUNNING, True)
    recorded(tmp_path, OTHER, "r6", RunState.FAILED, True)
    manager = Manager(dict, NOW, state_root=tmp_path)
    rows = {row["id"]: row["state"] for row in manager.history()}
    assert rows["r1"] == "succeeded"
    assert rows["r2"].startswith("running (started by the previous kernel at ")
    assert set(rows) == {"r1", "r2"}
    assert manager.runs.next_id() == "r3"
    every = [(row["id"], row["state"]) for row in manager.history(all_kernels=True)]
    assert [i for i, _ in every] == ["r1", "r2", "r5"]
    assert every[-1][1].startswith("running (started by kernel k2 at ")
