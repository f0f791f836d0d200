"""The money, estimated from a profile's ``price_per_hour``: a run's share of its sandbox,
a warm idle sandbox's cost growing, the shutdown total; a budget that, once spent, starts
no new sandbox and fails the runs waiting for one with a sentence while the runs going go
on; no money shown for an unpriced local profile. In a real kernel for the magics."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_magics import Client, RunState
from sandbox_magics.exceptions import RunFailedError
from sandbox_magics.pool import cost as pricing
from tests.conftest import kernel_env
from tests.kernel_driver import Kernel

PRICE = 360.0  # dollars an hour: 10 cents a second
PROFILES = f"""
[profiles.priced]
slots_per_sandbox = 2
max_sandboxes = 1
price_per_hour = {PRICE}

[profiles.free]
slots_per_sandbox = 1
max_sandboxes = 1
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES)
    c = Client(path)
    yield c
    c.shutdown()


@pytest.mark.parametrize(("price", "spent", "shown"), [
    (0.0, 0.0, ""), (None, None, "cost unknown"), (1.2, None, "cost unknown"),
    (1.2, 0.42, "$0.42 so far ($1.20/h a sandbox)"), (3.0, 0.004, "$0.0040 so far ($3.00/h a sandbox)"),
])
def test_a_pools_money_is_shown_as_the_table_says(price: float | None, spent: float | None,
                                                   shown: str) -> None:
    assert pricing.spending(price, spent) == shown


def test_an_unknown_price_makes_every_sum_unknown_and_never_reaches_a_budget() -> None:
    assert pricing.total([0.1, None]) is None and pricing.total([0.1, 0.2]) == pytest.approx(0.3)
    assert not pricing.over_budget(None, 0.0) and pricing.over_budget(0.5, 0.5)
    assert pricing.share(36.0, 4, 3600) == pytest.approx(9.0)


def test_a_runs_cost_is_its_share_of_its_sandbox_and_idle_sandboxes_cost_too(client: Client) -> None:
    run = client.run("sleep 1", profile="priced")
    assert run.cost == pytest.approx(PRICE / 2 * (run.ended_at - run.started_at) / 3600)
    assert 0.04 < run.cost < 0.1
    first = client.cost()
    start = time.monotonic()
    assert first is not None and first > run.cost
    time.sleep(0.5)  # the idle sandbox's cost grows with time: the span is what is checked
    grown = client.cost()
    assert grown - first == pytest.approx(PRICE / 3600 * (time.monotonic() - start), rel=0.3)
    row = client.runs().loc[run.id]
    assert row["cost"] == pytest.approx(run.cost, rel=0.01)
    free = client.run("true", profile="free")
    assert free.cost == 0 and client.runs()["cost"].isna().loc[free.id]


def test_a_spent_budget_starts_no_sandbox_fails_waiting_runs_and_lets_running_ones_go_on(
        client: Client) -> None:
    going = client.submit("sleep 2; echo went on", profile="priced", name="going")
    second = client.submit("sleep 2", profile="priced", name="second")
    while going.state is not RunState.RUNNING or second.state is not RunState.RUNNING:
        time.sleep(0.02)
    client.budget(0.05)
    waiting = client.submit("echo never", profile="priced", raise_error=False)
    assert waiting.join(30), "the waiting run never ended"
    assert waiting.state is RunState.ERROR
    assert re.fullmatch(r"The budget of \$0\.05 for this kernel is spent \(\$[0-9.]+ so far: "
                        r"priced \$[0-9.]+\); no new sandbox starts\. Raise it with %sandbox "
                        r"budget DOLLARS\.", waiting.error), waiting.error
    assert going.wait(30) == 0 and going.stdout == "went on\n"
    assert client.run("echo warm", profile="priced").stdout == "warm\n"  # a slot it has
    assert len(client.status()[0]["sandboxes"]) == 1
    with pytest.raises(RunFailedError, match="The budget of \\$0.05 for this kernel is spent"):
        client.run("true", profile="free")  # it would need a new sandbox
    assert len(client.status()) == 1 or client.status()[1]["sandboxes"] == []


def test_shutdown_says_what_the_kernels_sandboxes_cost_and_nothing_for_local(
        tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(PROFILES)
    k = Kernel(kernel_env(tmp_path / "profiles.toml", tmp_path / "ws"))
    try:
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        assert k.execute("%%sandbox bash --profile free\ntrue").status == "ok"
        free = k.execute("%sandbox shutdown")
        assert free.stdout.strip().endswith("nothing of this kernel is running."), free.stdout
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        assert k.execute("%%sandbox bash --profile priced\nsleep 0.2").status == "ok"
        spent = k.execute("%sandbox budget 100").stdout
        assert re.fullmatch(r"Budget: \$100\.00 for this kernel \(\$[0-9.]+ spent so far\)\.\n",
                            spent), spent
        reply = k.execute("%sandbox shutdown")
        assert re.search(r"This kernel's sandboxes cost \$[0-9.]+ \(estimated\)\.", reply.stdout), \
            reply.stdout
    finally:
        k.shutdown()
