"""The Python API on real local agents: sync and await-able, concurrency, limits, history."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandbox_magics import Client, ClosedError, RunFailedError, RunState, UnknownProfileError
from tests.kernel_driver import wait_until

PROFILES = """
[profiles.default]
slots_per_sandbox = 4
max_sandboxes = 2

[profiles.default.local]
workspace_base = "{ws}"

[profiles.one]
slots_per_sandbox = 1
max_sandboxes = 1
acquire_timeout = 1.0

[profiles.one.local]
workspace_base = "{ws}"

[profiles.limited]
run_timeout = 1

[profiles.limited.local]
workspace_base = "{ws}"
"""


def test_forty_runs_on_two_by_four_never_exceed_eight_and_each_has_its_own_workspace(
        client: Client) -> None:
    code = 'echo start $(date +%s.%N) "$PWD"; sleep 0.4; echo end $(date +%s.%N)'
    runs = [client.submit(code) for _ in range(40)]
    for run in runs:
        assert run.wait(120) == 0, run.failure_message()
    spans = []
    for run in runs:
        start_line, end_line = run.stdout.splitlines()
        _, start, pwd = start_line.split(" ", 2)
        spans.append((float(start), float(end_line.split()[1]), pwd))
    peak = 0
    for start, _, pwd in spans:
        live = [s for s in spans if s[0] <= start < s[1]]
        peak = max(peak, len(live))
        assert len({s[2] for s in live}) == len(live), "two concurrent runs shared a workspace"
    assert peak == 8
    assert {run.sandbox for run in runs} == {"default-1", "default-2"}
    assert len({(run.sandbox, run.slot) for run in runs}) == 8


def test_async_api_from_another_event_loop(client: Client) -> None:
    async def main() -> list[str]:
        runs = await asyncio.gather(*(client.arun(f"print({i} * 2)", "python") for i in range(3)))
        return [r.stdout for r in runs]
    assert asyncio.run(main()) == ["0\n", "2\n", "4\n"]


def test_failed_run_raises_or_returns_by_check(client: Client) -> None:
    with pytest.raises(RunFailedError, match=r"Run r\d+ \(bash, profile 'default'\) exited with code 5"):
        client.run("exit 5")
    run = client.run("exit 5", check=False)
    assert run.returncode == 5 and run.state is RunState.FAILED


def test_acquire_timeout_ends_the_run_with_a_clear_error(client: Client) -> None:
    client.run("true", profile="one")
    holder = client.submit("sleep 30", profile="one")
    assert wait_until(lambda: holder.state is RunState.RUNNING, 30)
    waiting = client.run("echo never", profile="one", check=False)
    assert waiting.state is RunState.ERROR
    assert "No slot of profile 'one' came free within 1 s" in waiting.failure_message()
    client.cancel(holder)
    assert holder.state is RunState.CANCELLED


def test_cancel_while_queued_dequeues(client: Client) -> None:
    holder = client.submit("sleep 30", profile="one")
    queued = client.submit("echo never", profile="one")
    assert client.cancel(queued) == "dequeued" and queued.state is RunState.CANCELLED
    client.cancel(holder)


def test_history_dataframe_has_one_row_per_run(client: Client) -> None:
    client.run("echo a", name="first")
    client.run("exit 1", check=False)
    frame = client.runs()
    first = client.get_run("first").id  # ids go on after those this process recorded
    assert list(frame["state"]) == ["succeeded", "failed"] and frame.index[0] == first
    assert list(frame["exit_code"]) == [0, 1] and frame.loc[first, "name"] == "first"
    assert frame.loc[first, "output_bytes"] == 2 and frame["run_s"].notna().all()


def test_closed_client_says_so(client: Client) -> None:
    client.shutdown()
    with pytest.raises(ClosedError, match="has been shut down"):
        client.submit("echo hi")


def test_secrets_and_tokens_stay_out_of_reprs(client: Client) -> None:
    run = client.run("echo hi", env={"API_KEY": "hunter2"})
    status = client.status()
    assert "hunter2" not in repr(run) and "hunter2" not in repr(run.spec)
    pool = client.manager.pools["default"]
    sandbox = pool.sandboxes[0].sandbox
    assert "Bearer" not in repr(sandbox) and "Bearer" not in str(status)
    token = sandbox._headers["Authorization"].split()[1]
    agent_pid = status[0]["sandboxes"][0]["pid"]
    assert token.encode() not in Path(f"/proc/{agent_pid}/environ").read_bytes()
    assert token.encode() not in Path(f"/proc/{agent_pid}/cmdline").read_bytes()
    agent_log = Path(status[0]["sandboxes"][0]["root"]) / "agent.log"
    assert token not in agent_log.read_text()


def test_scale_starts_and_stops_sandboxes(client: Client) -> None:
    def ready() -> int:
        pools = [p for p in client.status() if p["profile"] == "default"]
        return sum(box["state"] == "ready" for p in pools for box in p["sandboxes"])
    client.scale("default", 2)
    assert wait_until(lambda: ready() == 2, 20)
    client.scale("default", 0)
    assert wait_until(lambda: ready() == 0, 20)
    refused = client.run("echo never", check=False)
    assert refused.state is RunState.ERROR and "scaled to 0" in refused.failure_message()
    client.scale("default", None)
    assert client.run("echo back").stdout == "back\n"
    with pytest.raises(UnknownProfileError, match="Unknown profile 'nope'"):
        client.scale("nope", 1)


def test_scale_0_drains_a_busy_sandbox_new_runs_fail_at_once_and_running_ones_finish(
        client: Client, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    held = client.submit(f"while [ ! -e {gate} ]; do sleep 0.05; done; echo finished")
    assert wait_until(lambda: held.state is RunState.RUNNING, 20)
    client.scale("default", 0)

    def boxes() -> list[tuple[str, tuple[str, ...]]]:
        return [(box.state.value, tuple(s.value for s in box.slots))
                for pool in client.pool_status() for box in pool.sandboxes]
    assert wait_until(lambda: boxes() == [("draining", ("busy", "draining", "draining",
                                                        "draining"))], 20), boxes()
    refused = client.run("echo never", check=False)
    assert refused.state is RunState.ERROR and "scaled to 0" in refused.failure_message()
    gate.touch()
    assert held.wait(30) == 0 and held.stdout == "finished\n"
    assert wait_until(lambda: boxes() == [], 20), boxes()


def test_profile_run_timeout_is_named_in_the_error(client: Client) -> None:
    run = client.run("sleep 30", profile="limited", check=False)
    assert run.state is RunState.TIMED_OUT
    assert "exceeded its timeout of 1 s" in run.failure_message()


def test_cancel_during_upload_stops_the_run_before_it_starts(client: Client, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(200 * 2**20))
    run = client.submit("echo started", uploads=[(str(big), "big.bin")])
    assert wait_until(lambda: run.state is RunState.RUNNING, 30, interval=0.001)
    assert client.cancel(run) == "stopped while uploading"
    run.join(30)
    assert run.state is RunState.CANCELLED and "started" not in run.stdout
    assert run.error == "cancelled while uploading"
