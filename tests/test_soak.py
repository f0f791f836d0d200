"""Soak: hundreds of runs with cancels and agent kills mixed in; nothing may leak.

Long; not in the default run: ``python -m pytest -m soak``.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from sandbox_magics import Client, RunState
from tests.kernel_driver import agent_pids, rss, wait_until

RUNS = 3000
PROFILES = """
[profiles.default]
slots_per_sandbox = 4
max_sandboxes = 2
acquire_timeout = 600

[profiles.default.local]
workspace_base = "{ws}"
"""


@pytest.mark.soak
def test_runs_cancels_and_agent_kills_leave_no_leak(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES.format(ws=tmp_path / "ws"))
    client = Client(path)
    rng = random.Random(7)
    try:
        client.run("true")
        baseline = rss(os.getpid())
        runs = []
        for i in range(RUNS):
            runs.append(client.submit(f"for j in $(seq {rng.randint(1, 200)}); do echo {i} $j; done;"
                                      f" sleep 0.0{rng.randint(0, 9)}; echo x > out-{i}.txt",
                                      raise_error=False))
            if i % 17 == 5:
                client.cancel(runs[rng.randrange(len(runs))])
            if i % 500 == 250:
                for pid in agent_pids(parent=os.getpid())[:1]:
                    os.kill(pid, signal.SIGKILL)
        for run in runs:
            assert run.join(300), f"{run} never finished"
        states = {run.state for run in runs}
        assert states <= {RunState.SUCCEEDED, RunState.CANCELLED, RunState.LOST}
        assert sum(run.state is RunState.SUCCEEDED for run in runs) > RUNS * 0.8
        assert any(run.state is RunState.LOST for run in runs), "no agent kill hit a run"
        assert any(run.state is RunState.CANCELLED for run in runs)
        pool = client.status()[0]
        assert pool["queued"] == 0
        assert all(state != "busy" for box in pool["sandboxes"] for state in box["slots"])
        assert len(agent_pids(parent=os.getpid())) <= 2
        assert client.run("ls", check=True).stdout == ""
        assert rss(os.getpid()) - baseline < 128 * 2**20
    finally:
        client.shutdown()
    assert wait_until(lambda: not agent_pids(parent=os.getpid()), 10)
