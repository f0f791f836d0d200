"""`Cluster`: the Nomad a test runs against, and the pytest fixture that gives one.

Two tiers, one code path: the stand-in (always; a subprocess on 127.0.0.1), and a real
Nomad when ``NOMAD_ADDR`` is set or ``nomad`` is on PATH (then ``nomad agent -dev`` is
started for the session). Tests look at either only through Nomad's HTTP API, with
python-nomad; the few that need a fault only a stand-in can be told to have call
`Cluster.faults`, which skips the test on a real Nomad with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nomad
import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


class Cluster:
    """A Nomad HTTP API at ``address`` (with ACL ``token`` if any)."""

    def __init__(self, address: str, token: str | None = None, standin: bool = True,
                 process: subprocess.Popen[bytes] | None = None) -> None:
        self.address = address
        self.token = token
        self.standin = standin
        self.process = process

    def __repr__(self) -> str:
        return f"<Cluster {'stand-in' if self.standin else 'nomad'} {self.address}>"

    @property
    def api(self) -> nomad.Nomad:
        return nomad.Nomad(address=self.address, token=self.token, timeout=10)

    def jobs(self, prefix: str) -> list[dict[str, Any]]:
        return list(self.api.jobs.get_jobs(prefix=prefix, meta=True))

    def allocations(self, prefix: str) -> list[dict[str, Any]]:
        """Every allocation of the jobs whose id starts with ``prefix`` (purged jobs too)."""
        return [a for a in self.api.allocations.get_allocations()
                if a["JobID"].startswith(prefix)]

    def running(self, prefix: str) -> list[dict[str, Any]]:
        return [a for a in self.allocations(prefix) if a["ClientStatus"] in ("pending", "running")]

    def faults(self, **faults: Any) -> None:
        """Tell the stand-in to fail (``pull_fail``, ``delay``, ``start_fail``); skips the
        test on a real Nomad, which cannot be told."""
        if not self.standin:
            pytest.skip("this fault can only be staged on the stand-in")
        request = urllib.request.Request(f"{self.address}/standin/faults", method="PUT",
                                         data=json.dumps(faults).encode())
        urllib.request.urlopen(request, timeout=10).read()

    def task_pids(self) -> list[dict[str, Any]]:
        if not self.standin:
            pytest.skip("task pids are only listed by the stand-in")
        with urllib.request.urlopen(f"{self.address}/standin/tasks", timeout=10) as resp:
            return list(json.loads(resp.read()))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_standin(root: Path, token: str | None = None, *extra: str) -> Cluster:
    """``python -m tests.nomad_standin`` on a free port, as a user would start it."""
    argv = [sys.executable, "-m", "tests.nomad_standin", "--port", "0", "--root", str(root)]
    if token:
        argv += ["--token", token]
    log = open(root.parent / f"{root.name}.log", "wb")  # noqa: SIM115 (kept by the process)
    process = subprocess.Popen([*argv, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                               start_new_session=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise RuntimeError(f"the Nomad stand-in did not start (exit {process.returncode})")
    return Cluster(json.loads(line)["address"], token, True, process)


def start_real() -> Cluster | None:
    """A real Nomad: ``$NOMAD_ADDR``, or ``nomad agent -dev`` started here; None if neither."""
    if os.environ.get("NOMAD_ADDR"):
        return Cluster(os.environ["NOMAD_ADDR"].rstrip("/"), os.environ.get("NOMAD_TOKEN"), False)
    binary = shutil.which("nomad")
    if binary is None:
        return None
    data = Path(tempfile.mkdtemp(prefix="nomad-dev-"))
    log = open(data / "agent.log", "wb")  # noqa: SIM115 (kept by the process)
    process = subprocess.Popen([binary, "agent", "-dev", "-bind", "127.0.0.1",
                                "-data-dir", str(data / "data")], stdout=log, stderr=log,
                               start_new_session=True)
    cluster = Cluster("http://127.0.0.1:4646", None, False, process)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            nodes = cluster.api.nodes.get_nodes()
            if any(n.get("Status") == "ready" for n in nodes):
                return cluster
        except Exception:  # noqa: BLE001 (not up yet)
            pass
        time.sleep(0.2)
    cluster.stop()
    raise RuntimeError("nomad agent -dev did not become ready within "
                       f"{START_TIMEOUT:g} s; see {data / 'agent.log'}")


_REAL: list[Cluster | None] = []


@pytest.fixture(scope="session", params=["standin", "nomad"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    """The stand-in, then a real Nomad if there is one (else that tier is skipped)."""
    if request.param == "standin":
        running = start_standin(tmp_path_factory.mktemp("nomad-standin"))
        yield running
        running.stop()
        return
    if not _REAL:
        _REAL.append(start_real())
    real = _REAL[0]
    if real is None:
        pytest.skip("no real Nomad: set NOMAD_ADDR or put `nomad` on PATH to run this tier "
                    "against `nomad agent -dev`")
    yield real
    if real.process is not None:
        real.stop()
        _REAL[0] = None
