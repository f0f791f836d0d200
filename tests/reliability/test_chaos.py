"""Chaos: runs over 3 sandboxes × 4 slots while agents are SIGKILLed and a proxy between the
pool and the agents drops connections and slows answers.

Every run must end, none may hang: it succeeds with exactly its output, or it fails with a
sentence naming the fault that hit it. A run whose process never started is re-queued and
succeeds. Afterwards no slot is leased, the pool heals to its three sandboxes, and the
history has one row per run. The default run does 60 runs; ``-m chaos`` does 300.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import re
import signal
import statistics
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sandbox_magics import Client, RunState
from sandbox_magics.agent import protocol
from sandbox_magics.backends import local, settings_of
from sandbox_magics.identity import Identity
from sandbox_magics.profiles import Profile
from sandbox_magics.runs import Run
from tests.kernel_driver import agent_pids, wait_until
from tests.reliability.fault_proxy import FaultProxy, Faults

PROFILES = """
[profiles.chaos]
slots_per_sandbox = 4
min_sandboxes = 3
max_sandboxes = 3
acquire_timeout = 600
start_timeout = 30

[profiles.chaos.local]
workspace_base = "{ws}"
"""
SANDBOXES, SLOTS = 3, 4
REQUEUED = "goes back to the head of the queue"
# What a failed run's sentence says, by the fault it names.
FAULT_SENTENCES = {
    "agent killed": re.compile(r"its agent process was killed by SIGKILL"),
    "connection dropped": re.compile(
        r"(stopped answering|was lost during the run) \((the connection was closed before the "
        r"answer was complete|the answer broke off before its end|the connection was reset)\)"),
}


class ChaosBackend(local.Backend):
    """The real local backend, each of whose agents is reached through a `FaultProxy`."""

    def __init__(self, settings: local.Settings, me: Identity, faults: Faults) -> None:
        super().__init__(settings, me)
        self.faults = faults
        self.proxies: list[FaultProxy] = []

    async def create(self, profile: Profile, tags: Mapping[str, str]) -> local.LocalSandbox:
        sandbox = await super().create(profile, tags)
        proxy = FaultProxy(urlsplit(sandbox.base_url).port or 0, self.faults)
        self.proxies.append(proxy)
        sandbox.base_url = f"http://127.0.0.1:{await proxy.start()}{protocol.API}"
        return sandbox

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.gather(*(proxy.aclose() for proxy in self.proxies))


class AgentKiller:
    """A thread that SIGKILLs one of our agents, chosen at random, every few seconds."""

    def __init__(self, every: tuple[float, float], seed: int = 5) -> None:
        self.every = every
        self.rng = random.Random(seed)
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._kill, name="agent-killer", daemon=True)

    def __enter__(self) -> AgentKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _kill(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.every)):
            pids = agent_pids(parent=os.getpid())
            if pids:
                try:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.kills += 1


class HealWatch:
    """A thread that watches the pool's ready sandboxes and times each outage: from the
    moment fewer than `SANDBOXES` are ready to the moment all are again."""

    def __init__(self, client: Client, every: float = 0.1) -> None:
        self.client = client
        self.every = every
        self.outages: list[float] = []
        self._since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="heal-watch", daemon=True)

    def __enter__(self) -> HealWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            pools = self.client.status()
            ready = sum(box["state"] == "ready" for pool in pools for box in pool["sandboxes"])
            now = time.monotonic()
            if ready < SANDBOXES and self._since is None:
                self._since = now
            elif ready >= SANDBOXES and self._since is not None:
                self.outages.append(now - self._since)
                self._since = None


def script(i: int, rng: random.Random) -> str:
    return f"echo start {i}; sleep {rng.uniform(0.3, 2.0):.2f}; echo end {i}"


def healed(client: Client) -> bool:
    """Three ready sandboxes, every slot free, nothing queued, three agents alive."""
    pool = client.status()[0]
    return (pool["queued"] == 0 and len(pool["sandboxes"]) == SANDBOXES
            and all(box["state"] == "ready" and box["slots"] == ["free"] * SLOTS
                    for box in pool["sandboxes"])
            and len(agent_pids(parent=os.getpid())) == SANDBOXES)


def fault_named(run: Run) -> str | None:
    message = run.failure_message()
    return next((fault for fault, sentence in FAULT_SENTENCES.items()
                 if sentence.search(message)), None)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    path = tmp_path / "profiles.toml"
    path.write_text(PROFILES.format(ws=tmp_path / "ws"))
    c = Client(path, pool_options={"tick": 0.5})
    yield c
    c.shutdown()


def chaos(client: Client, runs: int, kill_every: tuple[float, float], wait: float) -> None:
    faults = Faults()
    profile = client.profile("chaos")
    client.manager.backends[(profile.backend, settings_of(profile))] = ChaosBackend(
        settings_of(profile), client.identity, faults)
    retired: list[str] = []
    client.manager.listeners.append(
        lambda event: retired.append(event.detail) if event.kind == "lost" else None)
    rng = random.Random(3)
    started = time.monotonic()
    with HealWatch(client) as watch:
        with AgentKiller(kill_every) as killer:
            submitted = [client.submit(script(i, rng), profile="chaos", raise_error=False)
                         for i in range(runs)]
            deadline = started + wait
            hung = [run for run in submitted
                     if not run.join(max(0.0, deadline - time.monotonic()))]
        faults.enabled = False
        calm = time.monotonic()
        assert not hung, f"{len(hung)} runs never ended: {hung[:5]}"
        assert wait_until(lambda: healed(client), 60), client.status()

    states = collections.Counter(run.state for run in submitted)
    failed = [run for run in submitted if run.state is not RunState.SUCCEEDED]
    requeued = [run for run in submitted if any(REQUEUED in n for n in run.notices)]
    by_fault = collections.Counter(fault_named(run) for run in failed)
    killed = sum("killed by SIGKILL" in reason for reason in retired)
    print(f"\nchaos: {runs} runs on {SANDBOXES} sandboxes x {SLOTS} slots in "
          f"{calm - started:.1f} s; faults injected: {killer.kills} agent kills, "
          + ", ".join(f"{n} {kind}" for kind, n in sorted(faults.counts.items()))
          + f"; runs re-queued before starting: {len(requeued)}; runs failed by faults: "
          f"{len(failed)} ({', '.join(f'{n} {k}' for k, n in by_fault.items())}); "
          f"runs lost: {states[RunState.LOST]}; sandboxes retired: {len(retired)} ({killed} "
          f"with their agent killed, {len(retired) - killed} after a dropped connection); "
          f"hung: 0; time to heal after a fault: "
          f"median {statistics.median(watch.outages or [0]):.1f} s, max "
          f"{max(watch.outages or [0]):.1f} s over {len(watch.outages)} outages")
    for fault in by_fault:
        print(f"  {fault}, e.g.:", next(r for r in failed if fault_named(r) == fault).failure_message())

    for i, run in enumerate(submitted):
        if run.state is RunState.SUCCEEDED:
            assert run.stdout == f"start {i}\nend {i}\n", (run, run.stdout)
    assert None not in by_fault, [r.failure_message() for r in failed if fault_named(r) is None]
    assert not [r for r in failed if "<" in r.failure_message() or "\n" in r.failure_message()]
    assert all(run.pgid is not None for run in failed), "a run failed before its process started"
    assert all(run.state is RunState.SUCCEEDED or run.pgid is not None for run in requeued)
    assert killer.kills and faults.counts["exec-cut"] and requeued
    history = client.runs()
    assert len(history) == runs and history.index.is_unique
    assert set(history["state"]) <= {"succeeded", "lost", "failed", "error"}


def test_a_run_whose_agent_is_killed_says_its_agent_was_killed_by_sigkill(
        client: Client) -> None:
    run = client.submit("echo up; sleep 60", profile="chaos", raise_error=False)
    assert wait_until(lambda: run.stdout == "up\n", 60)
    pid = next(box["pid"] for pool in client.status() for box in pool["sandboxes"]
               if box["id"] == run.sandbox)
    os.kill(pid, signal.SIGKILL)
    assert run.join(30) and run.state is RunState.LOST
    assert f"(Sandbox {run.sandbox}: its agent process was killed by SIGKILL" in \
        run.failure_message()


def no_stray_asyncio_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Item 7 of issue 12: asyncio must not lose track of an agent it started."""
    stray = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not stray, stray


def test_runs_under_agent_kills_and_a_faulty_network_all_end_and_the_pool_heals(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    chaos(client, 60, kill_every=(1.0, 2.0), wait=120)
    no_stray_asyncio_lines(caplog)


@pytest.mark.chaos
def test_300_runs_under_agent_kills_and_a_faulty_network_all_end_and_the_pool_heals(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    chaos(client, 300, kill_every=(2.0, 4.0), wait=600)
    no_stray_asyncio_lines(caplog)
