"""The nomad backend through the real python-nomad client, against the Nomad stand-in (and
a real ``nomad agent -dev`` when there is one: see `tests.nomad_standin.cluster`)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nomad
import pytest

from sandbox_magics import identity
from sandbox_magics.backends import make_backend, settings_of
from sandbox_magics.backends.base import STAGE, ExecRequest, Exited, Health, Output, Started
from sandbox_magics.backends.nomad import Backend, NomadSandbox
from sandbox_magics.backends.nomad import _job
from sandbox_magics.backends.nomad._api import NomadAPI, decode_frames
from sandbox_magics.exceptions import (ProfileError, SandboxError, SandboxLostError,
                                     SandboxStartError)
from sandbox_magics.identity import Identity
from sandbox_magics.profiles import Profile, load_profiles
from tests.kernel_driver import wait_until
from tests.nomad_standin.cluster import Cluster, cluster, start_standin  # noqa: F401


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


def test_a_50_mb_stdin_reaches_the_run_whole_and_the_client_holds_no_copy_of_it(
        cluster: Cluster, prefix: str) -> None:
    code = "é" + base64.encodebytes(os.urandom(50 * 10**6 * 3 // 4)).decode()
    digest = hashlib.sha256(code.encode()).hexdigest()

    async def scenario() -> tuple[list[Any], Exited, int]:
        backend, sandbox = await started(profile(cluster, prefix))
        try:
            tracemalloc.start()
            try:
                process = await sandbox.exec(0, ExecRequest("big", ("sha256sum",), {}, code))
                events, exited = await collect(process)
                return events, exited, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        finally:
            await sandbox.terminate()
            await backend.aclose()
    events, exited, peak = run(scenario)
    print(f"\nclient: {peak / 2**20:.1f} MiB allocated at most while sending "
          f"{len(code.encode()) / 2**20:.0f} MiB of stdin")
    assert exited.exit_code == 0 and text(events) == f"{digest}  -\n"
    assert peak < 8 * 2**20


def test_code_with_no_utf8_form_is_refused_before_it_is_sent_and_the_sandbox_serves_on(
        cluster: Cluster, prefix: str) -> None:
    async def scenario() -> tuple[str, str]:
        backend, sandbox = await started(profile(cluster, prefix))
        try:
            with pytest.raises(SandboxError) as info:
                await sandbox.exec(0, ExecRequest("bad", ("sh",), {}, "echo é\ud800"))
            events, _ = await collect(await sandbox.exec(0, ExecRequest("ok", ("sh",), {}, "echo é")))
            return str(info.value), text(events)
        finally:
            await sandbox.terminate()
            await backend.aclose()
    message, out = run(scenario)
    assert message == ("Run bad's code is not valid Unicode text (it holds a lone surrogate), "
                       "so it cannot be sent; remove that character.")
    assert out == "é\n"


def start_failure(p: Profile) -> tuple[str, float]:
    """The sentence a failed start raised, and how long it took."""

    async def scenario() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        backend = make_backend(p, Identity())
        try:
            me: Identity = backend.identity  # type: ignore[attr-defined]
            with pytest.raises(SandboxStartError) as info:
                await backend.create(p, {**me.tags(p.name), identity.NAME: "cluster-1"})
        finally:
            await backend.aclose()
        return str(info.value), loop.time() - began
    return run(scenario)  # type: ignore[no-any-return]


FAST = 8.0  # seconds: well within start_timeout (60 s below), not after it


def test_a_sandbox_larger_than_any_node_is_one_sentence_from_the_evaluation_and_the_nodes(
        cluster: Cluster, prefix: str) -> None:
    message, took = start_failure(profile(cluster, prefix, memory_mb=10_000_000, start_timeout=60))
    assert took < FAST, took
    assert re.fullmatch(rf"Nomad job {prefix}\w+-cluster-1 cannot be placed: memory exhausted "
                        r"on \d+ node\(s\); it asks 10000000 MB of memory and 100 MHz of CPU, "
                        r"more than any node has when idle \(at most \d+ MB and \d+ MHz\); "
                        r"lower the profile's memory_mb or cpu\.", message), message
    assert cluster.jobs(prefix) == [], "the unplaceable job was left registered"


@pytest.fixture
def small_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A stand-in whose one node has 1024 MB, which a test fills and frees."""
    running = start_standin(tmp_path / "small", None, "--memory", "1024")
    yield running
    running.stop()


def hog(cluster: Cluster, job_id: str, memory_mb: int) -> None:
    """Register a batch job that holds ``memory_mb`` of the node until it is stopped."""
    cluster.api.jobs.register_job({"Job": {
        "ID": job_id, "Name": job_id, "Type": "batch", "Datacenters": ["*"],
        "TaskGroups": [{"Name": "hog", "Count": 1, "Tasks": [{
            "Name": "hog", "Driver": "raw_exec",
            "Config": {"command": "sleep", "args": ["600"]},
            "Resources": {"CPU": 100, "MemoryMB": memory_mb}}]}]}})
    assert wait_until(lambda: [a["ClientStatus"] for a in cluster.allocations(job_id)]
                      == ["running"], 10)


class StageSeen(logging.Handler):
    """Sets ``event`` once the backend logs a start's stage containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.event, self.stages = text, asyncio.Event(), []

    def emit(self, record: logging.LogRecord) -> None:
        self.stages.append(record.getMessage())
        if self.text in self.stages[-1]:
            self.event.set()


def test_a_start_on_a_full_cluster_waits_on_the_blocked_evaluation_and_runs_once_room_frees(
        small_cluster: Cluster, prefix: str) -> None:
    hog(small_cluster, f"{prefix}hog", 800)
    p = profile(small_cluster, prefix, memory_mb=400, start_timeout=60)

    async def scenario() -> tuple[list[str], str]:
        seen = StageSeen("waiting for capacity")
        logger = logging.getLogger("sandbox_magics.backends.nomad._backend")
        logger.addHandler(seen)
        logger.setLevel(logging.INFO)
        backend = make_backend(p, Identity())
        try:
            me: Identity = backend.identity  # type: ignore[attr-defined]
            creating = asyncio.ensure_future(
                backend.create(p, {**me.tags(p.name), identity.NAME: "cluster-1"}))
            await asyncio.wait_for(seen.event.wait(), 30)
            await asyncio.to_thread(small_cluster.api.job.deregister_job, f"{prefix}hog", True)
            sandbox = await creating
            try:
                events, _ = await collect(await sandbox.exec(0, ExecRequest(
                    "r", ("sh",), {}, "echo placed")))
                return seen.stages, text(events)
            finally:
                await sandbox.terminate()
        finally:
            logger.removeHandler(seen)
            await backend.aclose()
    stages, out = run(scenario)
    assert out == "placed\n"
    waited = [s for s in stages if "waiting for capacity" in s]
    assert re.fullmatch(rf"Nomad job {prefix}\S+: waiting for capacity: memory exhausted on 1 "
                        r"node\(s\)", waited[0]), stages
    (blocked,) = [e for e in small_cluster.api.evaluations.get_evaluations()
                  if e["JobID"].startswith(prefix) and e["TriggeredBy"] == "queued-allocs"]
    assert blocked["Status"] == "complete"
    (alloc,) = [a for a in small_cluster.allocations(prefix) if a["TaskGroup"] == "sandbox"]
    assert alloc["EvalID"] == blocked["ID"], "the sandbox was not placed by the blocked evaluation"


def test_a_start_still_blocked_at_its_start_timeout_says_what_it_waited_for(
        small_cluster: Cluster, prefix: str) -> None:
    hog(small_cluster, f"{prefix}hog", 800)
    message, _ = start_failure(profile(small_cluster, prefix, memory_mb=400, start_timeout=1.5))
    assert re.fullmatch(rf"Nomad job {prefix}\S+ did not start within 1.5 s: waiting for "
                        r"capacity: memory exhausted on 1 node\(s\)\.", message), message
    assert [j["ID"] for j in small_cluster.jobs(prefix)] == [f"{prefix}hog"]
    blocked = [e["Status"] for e in small_cluster.api.evaluations.get_evaluations()
               if e["JobID"].startswith(f"{prefix}") and e["TriggeredBy"] == "queued-allocs"]
    assert blocked == ["canceled"], "the purged job's blocked evaluation was left blocked"


def test_an_agent_the_kernel_cannot_reach_on_its_port_is_one_sentence_within_seconds(
        prefix: str, tmp_path: Path) -> None:
    cut_off = start_standin(tmp_path / "cut-off", None, "--node-address", "2001:db8::7")
    try:
        message, took = start_failure(profile(cut_off, prefix, image="python:3.12-slim",
                                              start_timeout=60, nomad={"driver": "docker"}))
    finally:
        cut_off.stop()
    assert took < FAST, took
    assert re.fullmatch(
        rf"Nomad job {prefix}\S+ runs allocation [0-9a-f]{{8}}, whose agent listens on port "
        r"(\d+), but this kernel cannot reach it at http://\[2001:db8::7\]:\1 \([^()]+\); the "
        r"machine running the kernel must reach the Nomad clients' addresses on their dynamic "
        r"ports \(20000-32000 unless the clients set min_dynamic_port and max_dynamic_port\)\.",
        message), message


def test_a_gpu_the_cluster_lacks_is_a_filtered_node_and_one_sentence_naming_the_devices(
        cluster: Cluster, prefix: str) -> None:
    message, took = start_failure(profile(cluster, prefix, gpu="H100:2", start_timeout=60))
    assert took < FAST
    (evaluation,) = [e for e in cluster.api.evaluations.get_evaluations()
                     if e["JobID"].startswith(prefix) and e["TriggeredBy"] == "job-register"]
    metric = evaluation["FailedTGAllocs"]["sandbox"]
    assert metric["NodesFiltered"] == metric["NodesEvaluated"] >= 1
    assert metric["ConstraintFiltered"] == {"missing devices": metric["NodesFiltered"]}
    assert not metric["DimensionExhausted"] and not metric["NodesExhausted"]
    assert re.fullmatch(
        rf"Nomad job {prefix}\S+ cannot be placed: no node has the 2 nvidia/gpu devices of "
        r"model H100 that the profile's gpu asks for \(Nomad filtered \d+ node\(s\) for "
        r"missing devices\); use a GPU the cluster has, or a node_pool whose nodes have it\.",
        message), message


def test_a_driver_that_cannot_start_the_task_is_one_sentence(
        cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-python"
    message, took = start_failure(profile(cluster, prefix, start_timeout=60,
                                          nomad={"python": str(missing)}))
    assert took < FAST
    assert re.fullmatch(rf"Nomad job {prefix}\S+ did not start: its "
                        r"allocation [0-9a-f]{8} failed: its task could not be started by the "
                        r"driver: .*no-such-python.*\.", message), message
    assert cluster.jobs(prefix) == []


def test_an_agent_that_dies_at_start_says_so_with_the_end_of_its_log(
        cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'aiohttp'\" >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    message, took = start_failure(profile(cluster, prefix, start_timeout=60,
                                          nomad={"python": str(fake)}))
    assert took < FAST
    assert message.endswith("failed: its agent exited with code 1; its log ends with: "
                            "ModuleNotFoundError: No module named 'aiohttp'."), message


def terminated(cluster: Cluster, prefix: str) -> dict[str, Any]:
    """The ``Terminated`` event of the agent task of the one allocation under ``prefix``."""
    (alloc,) = cluster.allocations(prefix)
    (event,) = [e for e in alloc["TaskStates"]["agent"]["Events"] if e["Type"] == "Terminated"]
    return dict(event)


@pytest.mark.parametrize("driver, signal_detail, shown", [
    ("raw_exec", "9", "Exit Code: 137, Signal: 9"),
    ("docker", "0", 'Exit Code: 137, Exit Message: "Docker container exited with non-zero '
                    'exit code: 137"')])
def test_an_agent_out_of_memory_at_start_is_exit_137_without_an_oom_flag_and_one_sentence(
        cluster: Cluster, prefix: str, driver: str, signal_detail: str, shown: str) -> None:
    if not cluster.standin:
        pytest.skip("raw_exec on a dev agent does not enforce memory limits")
    message, took = start_failure(profile(cluster, prefix, memory_mb=10, start_timeout=60,
                                          image="python:3.12-slim", nomad={"driver": driver}))
    assert took < FAST
    assert re.fullmatch(rf"Nomad job {prefix}\S+ did not start: its allocation [0-9a-f]{{8}} "
                        r"failed: its agent was killed by SIGKILL \(exit 137\), probably out of "
                        r"memory: the sandbox's limit is 10 MB.*\.", message), message
    event = terminated(cluster, prefix)
    assert event["Details"]["oom_killed"] == "false", "cgroups v2: no driver sees the OOM kill"
    assert (event["Details"]["exit_code"], event["Details"]["signal"]) == ("137", signal_detail)
    assert event["DisplayMessage"] == shown


def test_out_of_memory_in_a_run_kills_the_runs_process_and_the_agent_serves_on(
        cluster: Cluster, prefix: str) -> None:
    if not cluster.standin:
        pytest.skip("raw_exec on a dev agent does not enforce memory limits")
    hog = "python3 -c 'x = b\"\\1\" * (600 << 20); import time; time.sleep(60)'; echo \"exit $?\""

    async def scenario() -> tuple[str, str, Health]:
        backend, sandbox = await started(profile(cluster, prefix, memory_mb=300))
        try:
            events, _ = await collect(await sandbox.exec(0, ExecRequest("hog", ("bash",), {}, hog)))
            after, _ = await collect(await sandbox.exec(1, ExecRequest("r", ("sh",), {},
                                                                       "echo served")))
            return text(events), text(after), await sandbox.health()
        finally:
            await sandbox.terminate()
            await backend.aclose()
    out, after, health = run(scenario)
    assert out == "exit 137\n", "the run's process was not the one killed"
    assert after == "served\n" and health.ok
    (alloc,) = cluster.allocations(prefix)
    assert not [e for e in alloc["TaskStates"]["agent"]["Events"]
                if e["Type"] == "Terminated" and e["Details"]["exit_code"] != "0"]


def test_an_image_that_cannot_be_pulled_is_one_sentence(cluster: Cluster, prefix: str) -> None:
    cluster.faults(pull_fail=["ghcr.io/acme/missing:1"])
    try:
        message, took = start_failure(profile(cluster, prefix, image="ghcr.io/acme/missing:1",
                                              start_timeout=60,
                                              nomad={"driver": "docker"}))
    finally:
        cluster.faults(pull_fail=[])
    assert took < FAST
    assert re.search(r"did not start: its allocation [0-9a-f]{8} failed: its image could not "
                     r"be pulled: Failed to pull `ghcr.io/acme/missing:1`", message), message


def test_a_nomad_that_cannot_be_reached_is_one_sentence(prefix: str) -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = Cluster(f"http://127.0.0.1:{port}")
    message, took = start_failure(profile(closed, prefix))
    assert took < FAST
    assert message == (f"Nomad at http://127.0.0.1:{port} cannot be reached (connection refused); "
                       "check the profile's nomad address (or $NOMAD_ADDR) and that Nomad runs.")


def test_a_nomad_that_answers_too_slowly_is_one_sentence(cluster: Cluster, prefix: str) -> None:
    cluster.faults(delay=1.0)
    try:
        message, took = start_failure(profile(cluster, prefix, memory_mb=10_000_000,
                                              nomad={"api_timeout": 0.3}))
    finally:
        cluster.faults(delay=0.0)
    assert took < FAST
    assert re.fullmatch(rf"Nomad at {cluster.address} did not answer the submission of job "
                        rf"{prefix}\S+ "
                        r"within 0.3 s\.", message), message

    def withdrawn() -> bool:   # the submission may have landed after we gave up: it is purged
        return any(e["JobID"].startswith(prefix) and e["TriggeredBy"] == "job-deregister"
                   for e in cluster.api.evaluations.get_evaluations())
    assert wait_until(withdrawn, 10), "a submission that got no answer was not withdrawn"
    assert cluster.jobs(prefix) == []


ACL_TOKEN = str(uuid.uuid4())        # a Nomad token's secret ID is a UUID


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_standin(tmp_path_factory.mktemp("nomad-acl"), token=ACL_TOKEN)
    yield running
    running.stop()


def test_a_token_nomad_refuses_is_one_sentence_that_names_the_variable_not_the_token(
        acl_cluster: Cluster, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = str(uuid.uuid4())
    monkeypatch.setenv("TEAM_NOMAD_TOKEN", unknown)
    monkeypatch.setenv("NOMAD_TOKEN", ACL_TOKEN)   # not the variable the profile names
    p = profile(acl_cluster, prefix, nomad={"token_env": "TEAM_NOMAD_TOKEN"})
    message, _ = start_failure(p)
    assert re.fullmatch(
        rf"Nomad at {acl_cluster.address} refused the submission of job {prefix}\S+ with the "
        r"token in \$TEAM_NOMAD_TOKEN \(403 Permission denied\): Nomad does not know that "
        r"token, or its policy does not allow this; set \$TEAM_NOMAD_TOKEN to a token whose "
        r"policy may submit, list and read jobs and read their logs in namespace 'default'\.",
        message), message
    monkeypatch.delenv("TEAM_NOMAD_TOKEN")
    message, _ = start_failure(p)
    assert "with no token ($TEAM_NOMAD_TOKEN is not set; 403 Permission denied); set " \
        "$TEAM_NOMAD_TOKEN to a token whose policy" in message, message

    async def scenario() -> str:
        monkeypatch.setenv("TEAM_NOMAD_TOKEN", ACL_TOKEN)
        backend, sandbox = await started(p)
        try:
            events, exited = await collect(await sandbox.exec(0, ExecRequest(
                "r", ("sh",), {}, "echo ok")))
            assert text(events) == "ok\n" and exited.exit_code == 0
            monkeypatch.setenv("TEAM_NOMAD_TOKEN", unknown)     # deleted since, or expired
            with pytest.raises(SandboxError) as info:
                await sandbox.log()
            return str(info.value)
        finally:
            monkeypatch.setenv("TEAM_NOMAD_TOKEN", ACL_TOKEN)
            await sandbox.terminate()
            await backend.aclose()
    message = run(scenario)
    assert re.fullmatch(
        rf"Nomad at {acl_cluster.address} refused the log of allocation [0-9a-f]{{8}}: it does "
        r"not accept the token in \$TEAM_NOMAD_TOKEN \(500 ACL token not found\); set "
        r"\$TEAM_NOMAD_TOKEN to the secret ID of a current token \(it may have expired or been "
        r"deleted\)\.", message), message
    assert unknown not in message and ACL_TOKEN not in message


async def lost_mid_run(sandbox: NomadSandbox, hit: Callable[[], object]) -> str:
    """Start a run, call ``hit()`` at its first output, and return the loss it ends with."""
    process = await sandbox.exec(0, ExecRequest("r", ("bash",), {}, "echo up; sleep 60"))
    with pytest.raises(SandboxLostError) as info:
        async for event in process:
            if isinstance(event, Output):
                hit()
    await process.aclose()
    return str(info.value)


def test_an_allocation_killed_mid_run_fails_the_run_with_a_sentence(
        cluster: Cluster, prefix: str) -> None:
    async def scenario() -> None:
        backend, sandbox = await started(profile(cluster, prefix))

        def kill() -> None:
            (task,) = [t for t in cluster.task_pids() if t["job"] == sandbox.id]
            os.kill(task["pid"], signal.SIGKILL)
        try:
            message = await lost_mid_run(sandbox, kill)
            assert re.fullmatch(
                rf"Nomad allocation [0-9a-f]{{8}} of job {sandbox.id} failed: its agent "
                r"was killed by SIGKILL \(exit 137\), probably out of memory: the sandbox's "
                r"limit is 512 MB\.", message), message
            health = await sandbox.health()
            assert not health.ok and "its agent was killed by SIGKILL" in health.reason
        finally:
            await sandbox.terminate()
            await backend.aclose()
    run(scenario)


def test_an_allocation_stopped_through_nomad_mid_run_fails_the_run_with_a_sentence(
        cluster: Cluster, prefix: str) -> None:
    async def scenario() -> None:
        backend, sandbox = await started(profile(cluster, prefix))
        try:
            message = await lost_mid_run(
                sandbox, lambda: cluster.api.allocation.stop_allocation(sandbox.alloc_id))
            assert re.fullmatch(
                rf"Nomad allocation [0-9a-f]{{8}} of job {sandbox.id} was stopped by Nomad "
                r"\(alloc is being migrated\)\.", message), message
        finally:
            await sandbox.terminate()
            await backend.aclose()
        assert cluster.running(prefix) == [], "the replacement Nomad placed was left running"
    run(scenario)


def test_the_task_log_of_a_dead_sandbox_is_read_from_nomads_log_frames(
        cluster: Cluster, prefix: str) -> None:
    async def scenario() -> None:
        backend, sandbox = await started(profile(cluster, prefix))
        try:
            await sandbox.shutdown()
            assert await sandbox.ended(wait=5.0, budget=10.0)
            log = await sandbox.log()
            port = int(sandbox.base_url.rsplit(":", 1)[1].split("/")[0])
            assert json.loads(log.splitlines()[0])["port"] == port
        finally:
            await sandbox.terminate()
            await backend.aclose()
    run(scenario)


def test_log_frames_are_decoded_when_split_anywhere() -> None:
    frames = b"".join(json.dumps({"Data": base64.b64encode(part).decode(), "File": "x",
                                  "Offset": i}).encode() + (b"{}" if i % 2 else b"")
                      for i, part in enumerate([b"line one\n", "€uro\n".encode(), b"end"]))
    for size in (1, 3, 7, len(frames)):
        chunks = [frames[i:i + size] for i in range(0, len(frames), size)]
        assert b"".join(decode_frames(iter(chunks))) == "line one\n€uro\nend".encode()


def refusal(cluster: Cluster, job: dict[str, Any]) -> tuple[int, str]:
    """The status and body with which Nomad refuses to register ``job``."""
    with pytest.raises(nomad.api.exceptions.BaseNomadException) as info:
        cluster.api.jobs.register_job({"Job": job})
    resp = info.value.nomad_resp
    return resp.status_code, resp.text


def test_nomad_refuses_a_job_under_its_minimums_or_with_a_bad_constraint_in_its_own_words(
        cluster: Cluster, prefix: str) -> None:
    p = profile(cluster, prefix)
    job = _job.job_spec(settings_of(p), p, f"{prefix}bad", {}, "ab" * 32, None, None)
    task = job["TaskGroups"][0]["Tasks"][0]
    task["Resources"]["MemoryMB"] = 8
    task["Constraints"] = [{"LTarget": "${attr.kernel.name}", "Operand": "=", "RTarget": ""}]
    job["Constraints"] = [{"LTarget": "${attr.cpu.arch}", "Operand": "regexp", "RTarget": "(x86"}]
    status, body = refusal(cluster, job)
    assert status == 500, (status, body)
    assert body.startswith("2 errors occurred:\n\t* Constraint 1 validation failed: 1 error "
                           "occurred:\n\t* Regular expression failed to compile: error parsing "
                           "regexp: missing closing ): `(x86`\n\n\n\t* Task group sandbox "
                           "validation failed: 1 error occurred:\n\t* Task agent validation "
                           "failed: 2 errors occurred:\n\t* 1 error occurred:\n\t* 1 error "
                           "occurred:\n\t* minimum MemoryMB value is 10; got 8\n\n"), body
    assert 'Operator "=" requires an RTarget' in body, body
    assert cluster.jobs(prefix) == []


def test_a_profile_nomad_would_refuse_is_one_sentence_naming_its_key_before_any_submission(
        cluster: Cluster, prefix: str) -> None:
    for fields, problem in [
        ({"memory_mb": 8}, "key 'memory_mb' is 8 MB, below the 10 MB Nomad requires of a "
                           "task; set it to 10 or more."),
        ({"nomad": {"constraints": [{"attribute": "${attr.kernel.name}"}]}},
         "key 'nomad.constraints' item 1 has operator '=', which needs a value"),
        ({"nomad": {"constraints": [{"attribute": "${attr.cpu.arch}", "operator": "regexp",
                                     "value": "(x86"}]}},
         "key 'nomad.constraints' item 1 has a value Nomad cannot compile as a regular "
         "expression (missing ), unterminated subpattern at position 0)"),
        ({"nomad": {"constraints": [{"attribute": "${attr.cpu.arch}", "operator": "regexp",
                                     "value": "^(?!arm)"}]}},
         "item 1 has a value Nomad cannot compile as a regular expression ('(?!' is not in "
         "Go's RE2 syntax)"),
        ({"nomad": {"constraints": [{"attribute": "${attr.os.name}", "operator": "is_set",
                                     "value": "linux"}]}},
         "item 1 has operator 'is_set', which takes no value; remove value 'linux'"),
        ({"nomad": {"constraints": [{"attribute": "${os.name}", "value": "linux"}]}},
         "item 1 has attribute '${os.name}', which Nomad cannot resolve"),
    ]:
        p = profile(cluster, prefix, **fields)
        with pytest.raises(ProfileError) as info:
            make_backend(p, Identity())
        message = str(info.value)
        assert message.startswith("In the Profile() arguments, profile 'cluster' key "), message
        assert problem in message and message.endswith(".") and "\n" not in message, message
    assert cluster.jobs(prefix) == []
    assert not [e for e in cluster.api.evaluations.get_evaluations()
                if e["JobID"].startswith(prefix)]


def test_settings_are_checked_and_a_bad_key_is_one_profile_error_sentence() -> None:
    def settings(**table: Any) -> Any:
        return settings_of(Profile(name="c", backend="nomad", engine_tables={"nomad": table},
                                   source="profiles file 'p.toml'"))
    assert settings().driver == "docker" and settings().datacenters == ("*",)
    for table, problem in [
        ({"driver": "exec"}, "key 'nomad.driver' must be one of docker, raw_exec, got 'exec'"),
        ({"address": "nomad:4646"}, "key 'nomad.address' must be an http:// or https://"),
        ({"token_env": "MY TOKEN"}, "key 'nomad.token_env' must be the name of an environment"),
        ({"job_prefix": "-x"}, "key 'nomad.job_prefix' must be 1 to 41 letters"),
        ({"datacenters": []}, "key 'nomad.datacenters' must list one or more"),
        ({"constraints": [{"attribute": "${attr.kernel.name}", "operator": "~"}]},
         "item 1 has operator '~'"),
        ({"token": "abc"}, "key 'nomad.token' is not a nomad setting; valid keys are: address,"),
    ]:
        with pytest.raises(ProfileError) as info:
            settings(**table)
        assert str(info.value).startswith("In the profiles file 'p.toml', profile 'c' ")
        assert problem in str(info.value), str(info.value)


def test_the_job_spec_for_docker_carries_image_port_resources_gpu_and_constraints(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOMAD_ADDR", raising=False)
    p = Profile(name="gpu", backend="nomad", image="ghcr.io/acme/sbx:1", cpu=2.5,
                memory_mb=4096, gpu="A100:2", slots_per_sandbox=3, heartbeat_window=120,
                engine_tables={"nomad": {
                    "datacenters": ["eu-1", "eu-2"], "node_pool": "gpus", "namespace": "ml",
                    "constraints": [{"attribute": "${node.class}", "value": "gpu"}]}})
    settings = settings_of(p)
    assert settings.resolved_address() == "http://127.0.0.1:4646"
    me = Identity()
    tags = {**me.tags("gpu"), identity.NAME: "gpu 1/x"}
    sandbox_id = _job.job_id(settings, me.client_id, "gpu 1/x")
    assert sandbox_id == f"sandbox-magics-{me.client_id}-gpu-1-x"
    job = _job.job_spec(settings, p, sandbox_id, tags, "ab" * 32, "ml", None)
    assert job["Type"] == "batch" and job["Namespace"] == "ml" and job["NodePool"] == "gpus"
    assert job["Datacenters"] == ["eu-1", "eu-2"] and "Region" not in job
    assert job["Constraints"] == [{"LTarget": "${node.class}", "Operand": "=", "RTarget": "gpu"}]
    task = job["TaskGroups"][0]["Tasks"][0]
    assert task["Driver"] == "docker"
    assert task["Config"]["image"] == "ghcr.io/acme/sbx:1" and task["Config"]["ports"] == ["agent"]
    args = task["Config"]["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--port") + 1] == "${NOMAD_PORT_agent}"
    assert args[args.index("--slots") + 1] == "3"
    assert args[args.index("--idle-timeout") + 1] == "120"
    assert args[args.index("--heartbeat-window") + 1] == "120"
    assert task["Resources"]["CPU"] == 2500 and task["Resources"]["MemoryMB"] == 4096
    assert task["Resources"]["Devices"] == [{"Name": "nvidia/gpu", "Count": 2, "Constraints": [
        {"LTarget": "${device.model}", "Operand": "regexp", "RTarget": "A100"}]}]
    assert task["Env"] == {"SANDBOX_AGENT_TOKEN_SHA256": "ab" * 32, "PYTHONUNBUFFERED": "1"}
    assert _job.tags_of(job["Meta"]) == {**tags, "sandbox_magics.slots": "3"}
    assert all("." not in key for key in job["Meta"])


def test_python_nomad_quirks_are_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token and a user agent (a TypeError in python-nomad), no fallback to $NOMAD_TOKEN
    when the profile names another variable, and https checked."""
    monkeypatch.setenv("NOMAD_TOKEN", "not-this-one")
    monkeypatch.delenv("OTHER_TOKEN", raising=False)
    api = NomadAPI(settings_of(Profile(name="c", backend="nomad", engine_tables={
        "nomad": {"address": "https://nomad.example:4646", "token_env": "OTHER_TOKEN"}})))
    client = api.client
    assert client.jobs.token is None and client.client.stream_logs.token is None
    assert api._session.headers["User-Agent"].startswith("sandbox_magics/")
    assert api._session.verify is True and client.jobs.verify is True
    monkeypatch.setenv("OTHER_TOKEN", "mine")
    assert api.client.job.token == "mine"


def test_a_pool_shows_what_a_start_waits_for_as_the_sandboxs_stage_in_the_dashboard(
        small_cluster: Cluster, prefix: str) -> None:
    from sandbox_magics.pool import Pool, SandboxState
    from sandbox_magics.widgets.dashboard import render
    hog(small_cluster, f"{prefix}hog", 800)
    p = dataclasses.replace(profile(small_cluster, prefix, memory_mb=400, start_timeout=60),
                            min_sandboxes=1, max_sandboxes=1)

    async def scenario() -> tuple[str, str]:
        pool = Pool(p, make_backend(p, Identity()), tick=0.1)
        pool.start()
        try:
            while True:
                (box,) = pool.status().sandboxes or (None,)
                if box is not None and box.stage and "capacity" in box.stage:
                    break
                await asyncio.sleep(0.05)
            assert box.state is SandboxState.STARTING and box.stage_for is not None
            html = render([pool.status()], {})
            await asyncio.to_thread(small_cluster.api.job.deregister_job, f"{prefix}hog", True)
            while pool.status().counts().sandboxes != 1:
                await asyncio.sleep(0.05)
            return box.stage, html
        finally:
            await pool.aclose()
            await pool.backend.aclose()
    stage, html = run(scenario)
    assert stage == "waiting for capacity: memory exhausted on 1 node(s)"
    assert re.search(r"waiting for capacity: memory exhausted on 1 node\(s\) \(0:\d\d\)", html), html


@pytest.mark.parametrize("builtin", ["default", "high-memory"])
def test_a_builtin_profile_moved_to_nomad_runs_in_a_stock_image_whose_python_has_no_packages(
        cluster: Cluster, prefix: str, builtin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docker task's Python is the standard library alone (the stand-in runs it with
    -I -S): the job itself brings the agent, and a run goes through it."""
    monkeypatch.setenv("SANDBOX_MAGICS_BACKEND", "nomad")
    monkeypatch.setenv("NOMAD_ADDR", cluster.address)
    monkeypatch.setenv(f"SANDBOX_MAGICS__{builtin.upper().replace('-', '_')}__NOMAD__JOB_PREFIX",
                       prefix)
    p = load_profiles(None)[builtin]
    p = dataclasses.replace(p, memory_mb=512, cpu=0.1)  # the stand-in's one node is small

    async def scenario() -> None:
        backend, sandbox = await started(p)
        try:
            job = cluster.api.job.get_job(sandbox.id)
            task = job["TaskGroups"][0]["Tasks"][0]
            assert task["Driver"] == "docker" and task["Config"]["args"][0] == "-c"
            (template,) = task["Templates"]
            assert template["DestPath"] == "local/agent.pyz.b64"
            agents = [pid for pid in _pids_with(b"sandbox_magics.agent.__main__")
                      if b"-S" in _argv(pid)]
            assert agents, "the agent did not run in a bare interpreter"
            bare = subprocess_text([_argv(agents[0])[0].decode(), "-I", "-S", "-c",
                                    "import importlib.util as u; print(u.find_spec('aiohttp'), "
                                    "u.find_spec('sandbox_magics'))"])
            assert bare == "None None\n"
            events, exited = await collect(await sandbox.exec(0, ExecRequest(
                "r1", ("sh",), stdin="echo served by the bundled agent")))
            assert exited.exit_code == 0 and text(events) == "served by the bundled agent\n"
        finally:
            await sandbox.terminate()
            await backend.aclose()

    run(scenario, timeout=120)


def _pids_with(needle: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def subprocess_text(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


PULLED = "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime"


@pytest.fixture
def slow_pull(cluster: Cluster) -> Iterator[None]:
    """The image PULLED takes 4 s to pull, with a progress event every 0.5 s."""
    cluster.faults(pull_seconds={PULLED: 4}, pull_report_interval=0.5)
    yield
    cluster.faults(pull_seconds={}, pull_report_interval=120)


def test_a_slow_image_pull_is_the_stage_and_does_not_count_against_start_timeout(
        cluster: Cluster, prefix: str, slow_pull: None) -> None:
    p = profile(cluster, prefix, image=PULLED, start_timeout=3, nomad={"driver": "docker"})
    stages: list[str] = []

    async def scenario() -> float:
        STAGE.set(stages.append)
        loop = asyncio.get_running_loop()
        began = loop.time()
        backend, sandbox = await started(p)
        took = loop.time() - began
        try:
            _, exited = await collect(await sandbox.exec(0, ExecRequest("r1", ("true",))))
            assert exited.exit_code == 0
        finally:
            await sandbox.terminate()
            await backend.aclose()
        return took

    took = run(scenario)
    assert took > 4, "the start did not wait for the pull"  # the pull alone takes 4 s
    assert f"pulling the image {PULLED}" in stages
    assert any(s.startswith(f"pulling the image {PULLED}: Pulled ") for s in stages), stages


def test_a_pull_past_the_drivers_image_pull_timeout_is_one_sentence(
        cluster: Cluster, prefix: str, slow_pull: None) -> None:
    message, _ = start_failure(profile(cluster, prefix, image=PULLED, start_timeout=1,
                                       nomad={"driver": "docker", "image_pull_timeout": 1}))
    assert re.search(rf"its image could not be pulled: Failed to pull `{re.escape(PULLED)}`: "
                     r"context deadline exceeded", message), message
