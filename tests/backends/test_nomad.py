"""The nomad backend through the real python-nomad client, against the Nomad stand-in (and
a real ``nomad agent -dev`` when there is one: see `tests.nomad_standin.cluster`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox_magics import identity
from sandbox_magics.backends import make_backend
from sandbox_magics.backends.base import ExecRequest, Exited, Output, Started
from sandbox_magics.backends.nomad import Backend, NomadSandbox
from sandbox_magics.identity import Identity
from sandbox_magics.profiles import Profile
from tests.nomad_standin.cluster import Cluster, cluster  # noqa: F401


def run(coro_fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(*args), timeout))


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tokens go to a state folder of the test's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(3)}-"


def profile(cluster: Cluster, prefix: str, **fields: Any) -> Profile:
    table = {"address": cluster.address, "driver": "raw_exec", "python": sys.executable,
             "job_prefix": prefix, **fields.pop("nomad", {})}
    return Profile(name=fields.pop("name", "cluster"), backend="nomad",
                   slots_per_sandbox=fields.pop("slots_per_sandbox", 2),
                   memory_mb=fields.pop("memory_mb", 512), cpu=fields.pop("cpu", 0.1),
                   start_timeout=fields.pop("start_timeout", 30),
                   engine_tables={"nomad": table}, **fields)


async def started(p: Profile, me: Identity | None = None, name: str = "cluster-1"
                  ) -> tuple[Backend, NomadSandbox]:
    me = me or Identity()
    backend = make_backend(p, me)
    assert isinstance(backend, Backend)
    sandbox = await backend.create(p, {**me.tags(p.name), identity.NAME: name})
    return backend, sandbox


async def collect(process: Any) -> tuple[list[Any], Exited]:
    events: list[Any] = []
    try:
        async for event in process:
            events.append(event)
    finally:
        await process.aclose()
    assert isinstance(events[-1], Exited)
    return events, events[-1]


def text(events: list[Any], stream: str = "stdout") -> str:
    return b"".join(e.data for e in events if isinstance(e, Output) and e.stream == stream).decode()


def test_a_sandbox_is_one_batch_job_running_the_agent_and_streams_a_run_through_it(
        cluster: Cluster, prefix: str, state_home: Path, tmp_path: Path) -> None:
    p = profile(cluster, prefix)

    async def scenario() -> None:
        backend, sandbox = await started(p)
        try:
            assert sandbox.id.startswith(prefix) and sandbox.slots == 2
            job = cluster.api.job.get_job(sandbox.id)
            assert job["Type"] == "batch"
            group = job["TaskGroups"][0]
            assert group["RestartPolicy"]["Attempts"] == 0
            assert group["ReschedulePolicy"]["Attempts"] == 0
            assert not group["ReschedulePolicy"]["Unlimited"]
            meta = job["Meta"]
            assert meta["sandbox_magics_client"] == backend.identity.client_id
            assert meta["sandbox_magics_profile"] == "cluster"
            token = backend.secrets.get(sandbox.id)
            assert token and token not in json.dumps(job)
            assert group["Tasks"][0]["Env"]["SANDBOX_AGENT_TOKEN_SHA256"] == \
                hashlib.sha256(token.encode()).hexdigest()
            assert oct((state_home / "sandbox_magics").stat().st_mode & 0o777) == "0o700"

            go = tmp_path / "go"
            process = await sandbox.exec(1, ExecRequest(
                "r1", ("bash",), {"WHO": "nomad"},
                f'echo "first $WHO"; while [ ! -e {go} ]; do sleep 0.02; done; echo second; '
                'echo err >&2; echo out > made.txt; pwd; exit 3'))
            events: list[Any] = []
            async for event in process:
                events.append(event)
                if isinstance(event, Output) and event.data == b"first nomad\n":
                    assert await sandbox.list_files(0) == []
                    await sandbox.upload(0, Path(__file__), "in/test.py")
                    go.touch()
            await process.aclose()
            assert isinstance(events[0], Started)
            assert isinstance(events[-1], Exited) and events[-1].exit_code == 3
            out = text(events)
            assert out.startswith("first nomad\nsecond\n")
            assert out.rstrip().endswith("slot-1")
            assert text(events, "stderr") == "err\n"
            assert (await sandbox.health()).ok
            assert [f.path for f in await sandbox.list_files(1)] == ["made.txt"]
            await sandbox.download(1, "made.txt", tmp_path / "made.txt")
            assert (tmp_path / "made.txt").read_text() == "out\n"
            assert [f.path for f in await sandbox.list_files(0)] == ["in/test.py"]
            await sandbox.reset(0)
            assert await sandbox.list_files(0) == []
            assert sandbox.describe()["job"] == sandbox.id
        finally:
            await sandbox.terminate()
            await sandbox.terminate()
            await backend.aclose()
        assert cluster.jobs(prefix) == []
        assert cluster.running(prefix) == []
        assert backend.secrets.get(sandbox.id) is None

    run(scenario)
