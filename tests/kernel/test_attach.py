"""A ``--bg`` run outlives its kernel, in a real kernel on each backend: the kernel is
SIGKILLed (or restarted gracefully) while the run writes megabytes of pseudo-random lines;
the restarted kernel (same kernel id) lists the run as started by the previous kernel,
attaches it, and gets its whole log (the checksums the process computed of what it
wrote), its exit code and its artifacts. ``%sandbox shutdown`` stops detached runs too."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import kernel_env
from tests.kernel_driver import Kernel, agent_pids, wait_until
from tests.magics.test_modal_cell import start_kernel as modal_kernel
from tests.magics.test_nomad_cell import nomad_kernel
from tests.modal_standin.fixtures import Running, standin  # noqa: F401
from tests.nomad_standin.cluster import Cluster, cluster  # noqa: F401

CLIENT = "get_ipython().magics_manager.registry['SandboxMagics'].client"
MB = 20
SECONDS = 3.0
ABSENCE = 600.0

WRITER = textwrap.dedent('''
    import hashlib, json, random, sys, time
    total, seconds = int(sys.argv[1]), float(sys.argv[2])
    rng, digests, written = random.Random(17), {"stdout": hashlib.sha256(),
                                               "stderr": hashlib.sha256()}, 0
    start = time.monotonic()
    while written < total:
        line = "%08d %s\\n" % (written, "%032x" % rng.getrandbits(128) * 3)
        stream = "stderr" if rng.random() < 0.05 else "stdout"
        getattr(sys, stream).write(line)
        digests[stream].update(line.encode())
        written += len(line)
        ahead = start + seconds * written / total - time.monotonic()
        if ahead > 0.01:
            sys.stdout.flush(); sys.stderr.flush(); time.sleep(ahead)
    json.dump({k: d.hexdigest() for k, d in digests.items()}, open("digests.json", "w"))
    sys.exit(3)
''')


def _start_writer(k: Kernel, profile: str, seconds: float = SECONDS) -> str:
    """Start the writer as a detached run; return its id once half its output arrived."""
    code = f"import sys; sys.argv = ['w', '{MB * 10**6}', '{seconds}']\n{WRITER}"
    reply = k.execute(f"run = {CLIENT}.submit({code!r}, 'python', profile={profile!r}, "
                      "name='writer', raise_error=False, detach=True)\nprint(run.id)")
    assert reply.status == "ok", reply.error
    run_id = reply.stdout.strip()
    half = k.execute(f"""
        import time
        deadline = time.monotonic() + 120
        while run.log.total_bytes < {MB * 10**6 // 2} and not run.done and time.monotonic() < deadline:
            time.sleep(0.05)
        print(run.state.value, run.log.total_bytes)
    """, timeout=150)
    assert half.stdout.startswith("running"), half.stdout
    return run_id


def _attach_and_check(k: Kernel, run_id: str) -> None:
    """In the restarted kernel: the run is listed as the previous kernel's, and attaching
    it gives its whole log, exit code 3 and its artifact."""
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    listed = k.execute(f"print({CLIENT}.runs().loc[{run_id!r}, 'state'])")
    assert "started by the previous kernel" in listed.stdout, listed.stdout + listed.stderr
    reply = k.execute(f"""
        import hashlib, json
        run = {CLIENT}.attach('writer')
        code = run.wait(300)
        got = {{s: hashlib.sha256(run.log.text(s).encode()).hexdigest() for s in ("stdout", "stderr")}}
        files = {{a.path: a for a in run.artifacts}}
        print(json.dumps({{"id": run.id, "code": code, "got": got, "state": run.state.value,
                          "digests": json.loads(files["digests.json"].read_bytes()),
                          "dropped": run.log.dropped_bytes}}))
    """, timeout=360)
    assert reply.status == "ok", (reply.error, reply.stderr)
    seen = json.loads(reply.stdout.strip().splitlines()[-1])
    assert seen["id"] == run_id and seen["code"] == 3 and seen["state"] == "failed"
    assert seen["dropped"] == 0
    assert seen["got"] == seen["digests"], "the replayed log differs from what the run wrote"


def _sigkill_and_restart(k: Kernel) -> None:
    os.kill(k.pid, signal.SIGKILL)
    k.manager.restart_kernel(now=True)
    k.client.wait_for_ready(timeout=60)


def _graceful_restart(k: Kernel) -> None:
    k.manager.restart_kernel(now=False)
    k.client.wait_for_ready(timeout=60)


@pytest.fixture
def local_kernel(profiles_file: Path, tmp_path: Path) -> Iterator[Kernel]:
    env = kernel_env(profiles_file, tmp_path / "ws")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    k = Kernel(env)
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


@pytest.fixture
def cluster_kernel(cluster: Cluster, tmp_path: Path) -> Iterator[Kernel]:  # noqa: F811
    k = nomad_kernel(cluster, tmp_path / "nomad", f"att{os.getpid()}-", memory_mb=600)
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


@pytest.fixture
def modal_env_kernel(standin: Running, tmp_path: Path) -> Iterator[Kernel]:  # noqa: F811
    (tmp_path / "modal").mkdir()
    k = modal_kernel(tmp_path / "modal", standin.url)
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


RESTARTS: dict[str, Callable[[Kernel], None]] = {
    "sigkill": _sigkill_and_restart, "graceful": _graceful_restart}
# On the engines a graceful restart is also covered by the lifecycle suite (attach, then
# shutdown); its checksummed form runs with the soak marker.
ENGINE_RESTARTS = ["sigkill", pytest.param("graceful", marks=pytest.mark.soak)]


@pytest.mark.parametrize("restart", list(RESTARTS))
def test_a_bg_run_on_local_outlives_its_kernel_and_a_new_kernel_attaches_its_whole_log(
        local_kernel: Kernel, restart: str) -> None:
    run_id = _start_writer(local_kernel, "default")
    RESTARTS[restart](local_kernel)
    _attach_and_check(local_kernel, run_id)


@pytest.mark.parametrize("restart", ENGINE_RESTARTS)
def test_a_bg_run_on_nomad_outlives_its_kernel_and_a_new_kernel_attaches_its_whole_log(
        cluster_kernel: Kernel, restart: str) -> None:
    run_id = _start_writer(cluster_kernel, "cluster")
    RESTARTS[restart](cluster_kernel)
    _attach_and_check(cluster_kernel, run_id)


def test_a_bg_run_that_ended_while_no_kernel_watched_gives_its_whole_log_exit_code_and_files(
        local_kernel: Kernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    reply = local_kernel.execute(
        f"%%sandbox bash --bg --name unwatched --no-raise-error\n"
        f"echo before; until [ -e {go} ]; do sleep 0.02; done; echo after >&2; "
        "echo kept > result.txt; exit 4")
    assert reply.status == "ok", reply.error
    assert local_kernel.execute(f"""
        import time
        run = {CLIENT}.get_run('unwatched')
        while "before" not in run.stdout: time.sleep(0.02)
    """).status == "ok"
    os.kill(local_kernel.pid, signal.SIGKILL)
    go.touch()
    assert wait_until(lambda: any((tmp_path / "ws").rglob("result.txt")), 30)
    local_kernel.manager.restart_kernel(now=True)
    local_kernel.client.wait_for_ready(timeout=60)
    assert local_kernel.execute("%load_ext sandbox_magics").status == "ok"
    reply = local_kernel.execute(f"""
        run = {CLIENT}.attach('unwatched')
        run.wait(60)
        print(repr(run.stdout), repr(run.stderr), run.exit_code,
              [a.read_bytes() for a in run.artifacts])
    """)
    assert reply.stdout.strip() == "'before\\n' 'after\\n' 4 [b'kept\\n']", reply.stdout + reply.stderr


@pytest.mark.soak
def test_a_bg_run_writing_for_30_s_is_attached_whole_after_a_ten_minute_absence(
        local_kernel: Kernel) -> None:
    run_id = _start_writer(local_kernel, "default", seconds=30)
    os.kill(local_kernel.pid, signal.SIGKILL)
    time.sleep(ABSENCE)  # the absence is the scenario: no kernel for ten minutes
    local_kernel.manager.restart_kernel(now=True)
    local_kernel.client.wait_for_ready(timeout=60)
    _attach_and_check(local_kernel, run_id)


@pytest.mark.parametrize("restart", ENGINE_RESTARTS)
def test_a_bg_run_on_modal_outlives_its_kernel_and_a_new_kernel_attaches_its_whole_log(
        modal_env_kernel: Kernel, restart: str) -> None:
    run_id = _start_writer(modal_env_kernel, "m")
    RESTARTS[restart](modal_env_kernel)
    _attach_and_check(modal_env_kernel, run_id)


def _agents_under(folder: Path) -> list[int]:
    return [pid for pid in agent_pids()
            if str(folder).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_shutdown_stops_the_bg_runs_the_previous_kernel_left_and_says_how_many(
        local_kernel: Kernel, tmp_path: Path) -> None:
    reply = local_kernel.execute("%%sandbox bash --bg --name sleeper\necho up; sleep 600")
    assert reply.status == "ok", reply.error
    assert local_kernel.execute(f"""
        import time
        run = {CLIENT}.get_run('sleeper')
        while "up" not in run.stdout: time.sleep(0.05)
    """).status == "ok"
    _sigkill_and_restart(local_kernel)
    assert _agents_under(tmp_path), "the agent keeping the --bg run went with its kernel"
    assert local_kernel.execute("%load_ext sandbox_magics").status == "ok"
    reply = local_kernel.execute("%sandbox shutdown", timeout=120)
    assert reply.status == "ok", reply.error
    assert "and 1 run(s) (1 of them --bg)" in reply.stdout, reply.stdout
    assert wait_until(lambda: not _agents_under(tmp_path), 30), "an agent outlived the shutdown"
