"""A 60-item sweep over 3 sandboxes × 4 slots while agents are SIGKILLed: every item ends,
and succeeds (an item lost to a killed agent is run again, and the sweep counts it; a run
that never started is re-queued by its drive); the history has every attempt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_magics import Client
from tests.kernel_driver import agent_pids, wait_until
from tests.reliability.test_chaos import PROFILES, AgentKiller

ITEMS = 60


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES.format(ws=tmp_path / "ws"))
    c = Client(profiles)
    yield c
    c.shutdown()


def test_a_sweep_under_agent_kills_ends_every_item_and_counts_the_retries(client: Client) -> None:
    code = 'sleep 0.$((RANDOM % 5 + 3)); echo "{\\"i\\": $i}"'
    with AgentKiller(every=(0.6, 1.2)) as killer:
        sweep = client.map(code, params={"i": range(ITEMS)}, name="chaos", profile="chaos",
                           raise_error=False)
        assert sweep.join(600), sweep
    assert killer.kills >= 2, "too few kills to test anything"
    df = sweep.df
    assert len(df) == ITEMS and set(df["state"]) == {"succeeded"}, df["state"].value_counts()
    assert sorted(df["result.i"].astype(int)) == list(range(ITEMS))
    lost = sum(item.lost for item in sweep.items)
    assert lost > 0, "no item was lost: the kills missed every run"
    assert lost == sum("runs again (infrastructure retry" in n for n in sweep.notices)
    assert (df["attempts"] - 1).sum() == lost
    history = client.runs()
    assert len(history) == int(df["attempts"].sum())
    assert wait_until(lambda: len(agent_pids(parent=__import__("os").getpid())) == 3, 60)
