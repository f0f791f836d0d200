"""Case 9: the pool's overhead on Nomad, vs calling python-nomad and the agent directly.

Both sides use the same stand-in Nomad (``tests/nomad_standin``, a subprocess on
127.0.0.1) and the same job (one batch job running the agent with raw_exec):

- per run: ``Client.run("true")`` on a warm ``backend = "nomad"`` profile (queue, slot,
  exec through the agent, log, release) vs one exec request straight to the agent over
  HTTP with its frames read to the EXIT frame;
- cold start: the first ``Client.run("true")`` of a fresh client (discover, submit the job,
  watch the allocation, health-check the agent, run) vs python-nomad registering the same
  job, polling its allocation until it runs, polling the agent until it answers, and one
  exec.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import nomad

from sandbox_magics import Client, identity
from sandbox_magics.agent import protocol
from sandbox_magics.backends import settings_of
from sandbox_magics.backends.nomad import _job
from sandbox_magics.identity import Identity
from sandbox_magics.profiles import Profile
from tests.nomad_standin.cluster import Cluster, start_standin

from ._harness import Row, Stat, repeat

TARGET_RUN = 1.5
TARGET_START = 1.5
PROFILES = """
[profiles.bench]
backend = "nomad"
slots_per_sandbox = 4
min_sandboxes = {minimum}
max_sandboxes = 1
idle_timeout = 600
cpu = 0.1
memory_mb = 400

[profiles.bench.nomad]
address = "{address}"
driver = "raw_exec"
python = "{python}"
job_prefix = "{prefix}"
"""


def run(quick: bool) -> list[Row]:
    n = 10 if quick else 200
    starts = 2 if quick else 8
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-nomad-") as tmp:
        root = Path(tmp)
        cluster = start_standin(root / "standin")
        saved = dict(os.environ)
        os.environ["XDG_STATE_HOME"] = str(root / "state")
        try:
            direct_run, direct_start = _direct(cluster, n, starts)
            pooled_run = _pooled_runs(cluster, root, n)
            pooled_start = _pooled_starts(cluster, root, starts)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            cluster.stop()
    run_ratio = pooled_run.median / direct_run.median
    start_ratio = pooled_start.median / direct_start.median
    return [
        Row("9 nomad per-run overhead", f"{n}× `true` on the Nomad stand-in, Client.run vs "
            "an exec straight to the agent", pooled_run.fmt("ms", 1e3), direct_run.fmt("ms", 1e3),
            run_ratio, f"≤ {TARGET_RUN}×", run_ratio <= TARGET_RUN),
        Row("9 nomad cold start", f"{starts}× first `true` of a fresh client vs python-nomad "
            "register + poll + exec", pooled_start.fmt("s"), direct_start.fmt("s"),
            start_ratio, f"≤ {TARGET_START}×", start_ratio <= TARGET_START),
    ]


def _profiles(cluster: Cluster, root: Path, prefix: str, minimum: int) -> Path:
    path = root / f"profiles-{prefix}toml"
    path.write_text(PROFILES.format(address=cluster.address, python=sys.executable,
                                    prefix=prefix, minimum=minimum))
    return path


def _pooled_runs(cluster: Cluster, root: Path, n: int) -> Stat:
    c = Client(_profiles(cluster, root, f"bp{secrets.token_hex(2)}-", 1))
    try:
        for _ in range(4):
            c.run("true", profile="bench")
        return repeat(lambda: c.run("true", profile="bench"), n)
    finally:
        c.shutdown()


def _pooled_starts(cluster: Cluster, root: Path, starts: int) -> Stat:
    samples = []
    for _ in range(starts):
        path = _profiles(cluster, root, f"bs{secrets.token_hex(2)}-", 0)
        began = time.perf_counter()
        c = Client(path)
        try:
            c.run("true", profile="bench")
            samples.append(time.perf_counter() - began)
        finally:
            c.shutdown()
    return Stat.of(samples)


def _exec(port: int, token: str, run_id: str) -> None:
    """One exec request to the agent, its frames read up to EXIT."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"run_id": run_id, "argv": ["bash"], "env": {}}).encode() + b"\ntrue"
        conn.request("POST", f"{protocol.API}/slots/0/exec", body=body,
                     headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        while True:
            kind, length = protocol.HEADER.unpack(resp.read(protocol.HEADER.size))
            payload = resp.read(length) if length else b""
            if kind == protocol.EXIT:
                assert json.loads(payload)["exit_code"] == 0
                return
    finally:
        conn.close()


def _direct(cluster: Cluster, n: int, starts: int) -> tuple[Stat, Stat]:
    api = nomad.Nomad(address=cluster.address, timeout=10)
    profile = Profile(name="bench", backend="nomad", slots_per_sandbox=4, cpu=0.1,
                      memory_mb=400, engine_tables={"nomad": {
                          "address": cluster.address, "driver": "raw_exec",
                          "python": sys.executable}})
    settings = settings_of(profile)
    me = Identity()
    counter = iter(range(10**6))

    def start() -> tuple[str, int, str]:
        job_id = f"bd{secrets.token_hex(3)}"
        token = secrets.token_urlsafe(32)
        job = _job.job_spec(settings, profile, job_id, {**me.tags("bench"), identity.NAME: job_id},
                            hashlib.sha256(token.encode()).hexdigest(), None, None)
        api.jobs.register_job({"Job": job})
        while True:
            allocs = api.job.get_allocations(job_id)
            if allocs and allocs[0]["ClientStatus"] == "running":
                break
            time.sleep(0.02)
        alloc = api.allocation.get_allocation(allocs[0]["ID"])
        port = next(p["Value"] for p in alloc["AllocatedResources"]["Shared"]["Ports"]
                    if p["Label"] == "agent")
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", f"{protocol.API}/health",
                             headers={"Authorization": f"Bearer {token}"})
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.02)
            finally:
                conn.close()
        return job_id, port, token

    start_samples = []
    for _ in range(starts):
        began = time.perf_counter()
        job_id, port, token = start()
        _exec(port, token, f"d{next(counter)}")
        start_samples.append(time.perf_counter() - began)
        api.job.deregister_job(job_id, purge=True)
    job_id, port, token = start()
    try:
        runs = repeat(lambda: _exec(port, token, f"d{next(counter)}"), n)
    finally:
        api.job.deregister_job(job_id, purge=True)
    return runs, Stat.of(start_samples)
