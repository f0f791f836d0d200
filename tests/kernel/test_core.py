"""The core on real local agents: identity, re-queue, cancel at every stage, lifecycle,
inputs that are no artifacts."""

from __future__ import annotations

import gc
import os
import signal
import warnings
from pathlib import Path

import pytest

from sandbox_magics import Client, ClosedError, RunState
from sandbox_magics.runs import Stage
from tests.kernel_driver import wait_until

PROFILES = """
[profiles.default]
slots_per_sandbox = 2
max_sandboxes = 2

[profiles.default.local]
workspace_base = "{ws}"

[profiles.one]
slots_per_sandbox = 1
max_sandboxes = 1
artifact_limit_mb = 1000

[profiles.one.local]
workspace_base = "{ws}"
"""


def test_two_clients_in_one_process_never_share_a_workspace_or_a_folder(profiles: Path) -> None:
    first, second = Client(profiles), Client(profiles)
    try:
        assert first.id != second.id
        held = first.submit("pwd; echo mine > keep.txt; while [ ! -e go ]; do sleep 0.02; done; "
                            "cat keep.txt")
        assert wait_until(lambda: held.stdout.endswith("\n"), 30)
        held_ws = Path(held.stdout.strip())
        other = second.run("echo other > keep.txt; pwd")
        other_ws = Path(other.stdout.strip())
        assert other_ws != held_ws
        assert second.id in str(other_ws) and first.id in str(held_ws)
        (held_ws / "go").touch()
        assert held.wait(30) == 0
        assert held.stdout.splitlines()[1] == "mine"
        assert {a.path for a in held.artifacts} == {"keep.txt", "go"}
        assert {a.path for a in other.artifacts} == {"keep.txt"}
        assert all(first.id in str(a.local) for a in held.artifacts)
        assert all(second.id in str(a.local) for a in other.artifacts)
    finally:
        first.shutdown()
        second.shutdown()


def test_shutdown_removes_the_clients_workspace_folder(profiles: Path, tmp_path: Path) -> None:
    c = Client(profiles)
    c.run("echo x > f")
    folders = list((tmp_path / "ws").glob(f"kernel-*-{c.id}"))
    assert len(folders) == 1 and folders[0].is_dir()
    c.shutdown()
    assert not folders[0].exists()


def test_run_whose_sandbox_died_before_it_started_is_requeued_and_succeeds(
        client: Client, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(300 * 2**20))
    client.scale("one", 1)
    assert wait_until(lambda: any(b["state"] == "ready" for p in client.status()
                                  for b in p["sandboxes"] if p["profile"] == "one"), 30)
    run = client.submit("echo ran once", profile="one", uploads=[(str(big), "big.bin")])
    assert wait_until(lambda: run.stage is Stage.UPLOADING, 30, interval=0.001)
    first_pid = next(b["pid"] for p in client.status() if p["profile"] == "one"
                     for b in p["sandboxes"])
    os.kill(first_pid, signal.SIGKILL)
    assert run.wait(120) == 0, run.failure_message()
    assert run.stdout == "ran once\n"
    assert any("goes back to the head of the queue" in n for n in run.notices)
    assert run.sandbox == "one-2"


def test_cancel_at_each_stage_says_the_stage_and_never_runs_the_command_after(
        client: Client, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    holder = client.submit("import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.02)",
                           "python", profile="one")
    queued = client.submit(f"touch {marker}", profile="one")
    assert wait_until(lambda: holder.stage is Stage.RUNNING and holder.pgid is not None, 30)
    assert client.cancel(queued) == "dequeued"
    assert queued.error == "cancelled while queued"
    assert client.cancel(holder) == "SIGINT" and holder.state is RunState.CANCELLED
    assert holder.error == "cancelled while running"

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(300 * 2**20))
    uploading = client.submit(f"touch {marker}", profile="one", uploads=[(str(big), "big.bin")])
    assert wait_until(lambda: uploading.stage is Stage.UPLOADING, 30, interval=0.001)
    assert client.cancel(uploading) == "stopped while uploading"
    assert uploading.error == "cancelled while uploading"

    collecting = client.submit("head -c 300000000 /dev/zero > out.bin", profile="one")
    assert wait_until(lambda: collecting.stage is Stage.COLLECTING, 60, interval=0.001)
    assert client.cancel(collecting) == "stopped while collecting"
    assert collecting.state is RunState.CANCELLED and collecting.exit_code == 0
    assert collecting.error == "cancelled while collecting"
    assert not marker.exists()
    assert client.run("echo next", profile="one").stdout == "next\n"


def test_timeout_escalates_from_the_core_to_sigkill_when_the_run_ignores_signals(
        client: Client) -> None:
    client.manager.grace = 0.5
    run = client.run("trap '' INT TERM; echo armed; sleep 30", timeout=1, check=False)
    assert run.state is RunState.TIMED_OUT and run.stop_step == "SIGKILL"
    assert run.stdout == "armed\n"


def test_uploaded_inputs_are_not_artifacts_unless_the_run_changes_them(
        client: Client, tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.txt").write_text("a")
    (data / "b.txt").write_text("b")
    run = client.run("echo out > result.txt; echo changed >> in/b.txt",
                     uploads=[(str(data), "in")])
    assert sorted(a.path for a in run.artifacts) == ["in/b.txt", "result.txt"]


def test_closed_client_raises_closed_error_everywhere_and_leaks_no_coroutine(
        client: Client) -> None:
    run = client.run("true")
    client.shutdown()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in (lambda: client.submit("true"), client.status, lambda: client.scale("default", 1),
                     lambda: client.cancel(run), lambda: client.end_session("s"),
                     lambda: client.profile("default")):
            with pytest.raises(ClosedError, match="has been shut down; create a new Client"):
                call()
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert list(client.runs()["state"]) == ["succeeded"]
