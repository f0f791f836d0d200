"""%%sandbox cells on a ``nomad`` profile in a real kernel: kernel → pool → python-nomad →
HTTP → the Nomad stand-in (or a real Nomad) → a real agent → the command."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import kernel_env
from tests.kernel_driver import Kernel, wait_until
from tests.kernel.test_live_python import check_a_kernel_session_keeps_state_and_shows_rich_output
from tests.magics.test_sweep import check_a_sweep_runs_every_item
from tests.nomad_standin.cluster import Cluster, cluster  # noqa: F401

PROFILES = """
[profiles.cluster]
backend = "nomad"
slots_per_sandbox = 4
max_sandboxes = 3
cpu = 0.1
memory_mb = {memory_mb}
idle_timeout = 600
start_timeout = 30
heartbeat_window = {window}

[profiles.cluster.nomad]
address = "{address}"
driver = "raw_exec"
python = "{python}"
job_prefix = "{prefix}"

[profiles.pulled]
backend = "nomad"
image = "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime"
memory_mb = 256
cpu = 0.1
start_timeout = 3

[profiles.pulled.nomad]
address = "{address}"
driver = "docker"
job_prefix = "{prefix}"

[profiles.huge]
backend = "nomad"
memory_mb = 10000000
max_sandboxes = 1

[profiles.huge.nomad]
address = "{address}"
driver = "raw_exec"
python = "{python}"
job_prefix = "{prefix}"
"""


def nomad_kernel(cluster: Cluster, root: Path, prefix: str, window: float = 600,
                 memory_mb: int = 400) -> Kernel:
    """A kernel whose profile ``cluster`` (sandboxes of ``memory_mb``) runs on ``cluster``,
    tokens kept below ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    profiles = root / "profiles.toml"
    profiles.write_text(PROFILES.format(address=cluster.address, python=sys.executable,
                                        prefix=prefix, window=window, memory_mb=memory_mb))
    env = kernel_env(profiles, root / "ws")
    env["XDG_STATE_HOME"] = str(root / "state")
    k = Kernel(env)
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    return k


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"k{secrets.token_hex(3)}-"


@pytest.fixture(scope="module")
def kernel(cluster: Cluster, prefix: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Kernel]:
    k = nomad_kernel(cluster, tmp_path_factory.mktemp("nomad-kernel"), prefix)
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


def created(cluster: Cluster, prefix: str) -> set[str]:
    """The jobs that ever got an allocation: sandboxes created."""
    return {a["JobID"] for a in cluster.allocations(prefix)}


def test_a_nomad_cell_streams_its_output_line_by_line(
        kernel: Kernel, cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    lines: list[str] = []

    def on_stream(text: str) -> None:
        lines.append(text)
        if "first" in text:
            go.touch()
    reply = kernel.execute(
        "%%sandbox bash --profile cluster\n"
        f'echo "first on $NOMAD_JOB_ID"; while [ ! -e {go} ]; do sleep 0.02; done; echo second',
        on_stream=on_stream)
    assert reply.status == "ok", reply.error
    assert reply.stdout.startswith(f"first on {prefix}") and reply.stdout.endswith("second\n")
    assert "second" not in lines[0], "the first line came only with the end of the command"
    assert len(created(cluster, prefix)) == 1


def test_thirty_runs_on_three_sandboxes_of_four_slots_create_exactly_three(
        kernel: Kernel, cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    kernel.execute("%sandbox shutdown", timeout=120)
    assert kernel.execute("%reload_ext sandbox_magics").status == "ok"
    before = created(cluster, prefix)
    go = tmp_path / "go"
    held = tmp_path / "held"
    held.mkdir()
    reply = kernel.execute(f"""
        for i in range(30):
            get_ipython().run_cell_magic(
                "sandbox", f"bash --profile cluster --bg --name n-{{i}}",
                f"touch {held}/$SANDBOX_RUN_ID; while [ ! -e {go} ]; do sleep 0.05; done; "
                f"echo {{i}} from $NOMAD_ALLOC_ID")
    """)
    assert reply.status == "ok", reply.error
    assert wait_until(lambda: len(list(held.iterdir())) == 12, 60), \
        f"{len(list(held.iterdir()))} runs started, not the 12 slots of 3 sandboxes"
    go.touch()
    done = kernel.execute("%sandbox wait --timeout 120", timeout=150)
    assert done.stdout == "30 run(s) finished.\n", (done.stdout, done.error)
    reply = kernel.execute("""
        runs = %sandbox runs
        ours = runs[runs['name'].str.startswith('n-', na=False)]
        print(len(ours), sorted(set(ours['state'])), ours['sandbox'].nunique(),
              ours[['sandbox', 'slot']].drop_duplicates().shape[0])
    """)
    assert reply.stdout.split("\n")[0] == "30 ['succeeded'] 3 12", reply.stdout
    new = created(cluster, prefix) - before
    assert len(new) == 3 == -(-12 // 4), new
    assert len(cluster.running(prefix)) == 3


def test_scale_down_retires_only_idle_sandboxes(
        kernel: Kernel, cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    kernel.execute("%sandbox scale cluster 2")
    assert wait_until(lambda: len(cluster.running(prefix)) >= 2, 60)
    go = tmp_path / "go"
    reply = kernel.execute(
        "%%sandbox bash --profile cluster --bg --name busy\n"
        f"while [ ! -e {go} ]; do sleep 0.05; done; echo still here on $NOMAD_JOB_ID")
    assert reply.status == "ok", reply.error
    busy_job = kernel.execute(
        "import time\n"
        "r = _sandbox_run = [r for r in get_ipython().magics_manager.registry['SandboxMagics']"
        ".client.manager.runs if r.spec.name == 'busy'][0]\n"
        "while r.pgid is None: time.sleep(0.02)\n"
        "print(r.sandbox)").stdout.strip()
    kernel.execute("%sandbox scale cluster 1")
    assert wait_until(lambda: len(cluster.running(prefix)) == 1, 60)
    (survivor,) = cluster.running(prefix)
    assert survivor["JobID"].endswith(busy_job), (survivor["JobID"], busy_job)
    go.touch()
    assert kernel.execute("%sandbox wait busy --timeout 60").status == "ok"
    out = kernel.execute("print(_sandbox_run.stdout)").stdout
    assert out.startswith(f"still here on {survivor['JobID']}")
    kernel.execute("%sandbox scale cluster auto")


def test_status_shows_the_job_and_allocation_of_each_sandbox(
        kernel: Kernel, cluster: Cluster, prefix: str) -> None:
    reply = kernel.execute("%%sandbox bash --profile cluster\necho $NOMAD_ALLOC_ID")
    alloc = reply.stdout.strip()
    status = kernel.execute(
        "s = get_ipython().magics_manager.registry['SandboxMagics'].client.status()\n"
        "print([(b['job'], b['allocation']) for p in s if p['profile'] == 'cluster' "
        "for b in p['sandboxes']])").stdout
    assert alloc[:8] in status and prefix in status
    assert re.search(rf"'{prefix}[0-9a-f]+-cluster-\d+'", status)


def test_sessions_transfers_and_artifacts_work_on_nomad_as_they_do_locally(
        kernel: Kernel, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("input data\n")
    first = kernel.execute(
        f"%%sandbox bash --profile cluster --session prep --upload {tmp_path}/data.txt:in/d.txt "
        f"--download out.txt:{tmp_path}/result.txt\n"
        "tr a-z A-Z < in/d.txt > out.txt; echo 42 > answer.txt; echo $NOMAD_JOB_ID")
    assert first.status == "ok", first.error
    assert (tmp_path / "result.txt").read_text() == "INPUT DATA\n"
    second = kernel.execute("%%sandbox bash --profile cluster --session prep\n"
                            "cat answer.txt; echo $NOMAD_JOB_ID")
    assert second.stdout.splitlines() == ["42", first.stdout.strip()]
    arts = kernel.execute(
        "r = get_ipython().magics_manager.registry['SandboxMagics'].client.manager.runs\n"
        "print(sorted(a.path for a in list(r)[-2].artifacts))").stdout
    assert "'answer.txt'" in arts and "'out.txt'" in arts, arts
    assert kernel.execute("%sandbox end-session prep").status == "ok"


def test_interrupt_stops_the_remote_process_group_and_frees_the_slot(kernel: Kernel) -> None:
    seen: list[str] = []

    def on_stream(text: str) -> None:
        seen.append(text)
        if "pids" in text:
            kernel.manager.interrupt_kernel()
    reply = kernel.execute("%%sandbox bash --profile cluster\nsleep 300 & echo pids $$ $!; wait",
                           on_stream=on_stream)
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    assert "process group was interrupted (SIGINT)" in reply.stderr, reply.stderr
    after = kernel.execute("%%sandbox bash --profile cluster\necho slot free")
    assert after.stdout == "slot free\n", after.error


def test_an_allocation_stopped_mid_run_fails_the_cell_with_a_sentence_and_is_replaced(
        kernel: Kernel, cluster: Cluster, prefix: str) -> None:
    seen: list[str] = []

    def on_stream(text: str) -> None:
        seen.append(text)
        if len(seen) == 1:
            cluster.api.allocation.stop_allocation(text.strip())
    reply = kernel.execute("%%sandbox bash --profile cluster\necho $NOMAD_ALLOC_ID; sleep 60",
                           on_stream=on_stream, timeout=60)
    assert reply.status == "error"
    alloc = seen[0].strip()
    message = reply.error["evalue"] if reply.error else ""
    assert re.search(rf"failed: sandbox lost \(Nomad allocation {alloc[:8]} of job {prefix}\S+ "
                     r"was stopped by Nomad \(alloc is being migrated\)\.?\)", message), message
    again = kernel.execute("%%sandbox bash --profile cluster\necho $NOMAD_ALLOC_ID")
    assert again.status == "ok", again.error
    assert again.stdout.strip() not in (alloc, ""), "the next run went to the stopped allocation"
    assert wait_until(lambda: alloc not in {a["ID"] for a in cluster.running(prefix)}, 15), \
        "the stopped allocation kept running"
    lost = kernel.execute("print([(r['id'], r['reason']) for p in "
                          "get_ipython().magics_manager.registry['SandboxMagics'].client.status() "
                          "for r in p['retired']])").stdout
    name = re.search(r"\('(cluster-\d+)', 'Nomad allocation", lost)
    assert name, lost
    log = kernel.execute(f"%sandbox sandbox-log {name.group(1)}")
    assert log.status == "ok" and log.stdout.strip(), log.stdout
    assert '{"port": ' in log.stdout, log.stdout


def test_a_cell_on_a_profile_no_node_can_hold_fails_within_seconds_with_the_reason(
        kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash --profile huge\necho never", timeout=30)
    assert reply.status == "error"
    assert reply.replied - reply.sent < 10
    message = reply.error["evalue"] if reply.error else ""
    assert re.search(r"could not run: .*Nomad job \S+ cannot be placed: "
                     r".*memory exhausted on 1 node\(s\)", message), message


def test_a_restarted_kernel_adopts_its_predecessors_jobs_instead_of_starting_new_ones(
        cluster: Cluster, tmp_path: Path) -> None:
    prefix = f"a{secrets.token_hex(3)}-"
    k = nomad_kernel(cluster, tmp_path, prefix)
    try:
        first = k.execute("%%sandbox bash --profile cluster\necho $NOMAD_JOB_ID $NOMAD_ALLOC_ID")
        job, alloc = first.stdout.split()
        k.manager.restart_kernel(now=True)       # killed: no atexit, no shutdown
        k.client.wait_for_ready(timeout=60)
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        again = k.execute("%%sandbox bash --profile cluster\necho $NOMAD_JOB_ID $NOMAD_ALLOC_ID")
        assert again.status == "ok", again.error
        assert again.stdout.split() == [job, alloc], "the restarted kernel started a new sandbox"
        assert created(cluster, prefix) == {job}
        events = k.execute(
            "c = get_ipython().magics_manager.registry['SandboxMagics'].client\n"
            "print([e['kind'] for p in c.status() for e in p['events']])").stdout
        assert "'adopted'" in events, events
    finally:
        k.execute("%sandbox shutdown", timeout=120)
        k.shutdown()
    assert cluster.jobs(prefix) == []


def test_a_sigkilled_kernel_leaves_no_allocation_running_past_the_window_and_the_next_reaps_it(
        cluster: Cluster, tmp_path: Path) -> None:
    prefix = f"w{secrets.token_hex(3)}-"
    window = 3.0
    k = nomad_kernel(cluster, tmp_path / "one", prefix, window=window)
    try:
        reply = k.execute("%%sandbox bash --profile cluster\necho $NOMAD_JOB_ID")
        job = reply.stdout.strip()
        assert wait_until(lambda: len(cluster.running(prefix)) == 1, 10)
        os.kill(k.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert wait_until(lambda: cluster.running(prefix) == [], window + 15), \
            "an allocation outlived its dead kernel's heartbeat window"
        assert time.monotonic() - killed >= window - 1, "the agent did not wait for the window"
    finally:
        k.shutdown()
    assert [j["ID"] for j in cluster.jobs(prefix)] == [job]     # dead, not yet purged
    other = nomad_kernel(cluster, tmp_path / "two", prefix, window=window)
    try:
        reply = other.execute("%%sandbox bash --profile cluster\necho $NOMAD_JOB_ID")
        assert reply.status == "ok", reply.error
        assert wait_until(lambda: [j["ID"] for j in cluster.jobs(prefix)] == [reply.stdout.strip()],
                          15), "the dead kernel's job was not reaped"
    finally:
        other.execute("%sandbox shutdown", timeout=120)
        other.shutdown()


def test_shutdown_purge_leaves_no_job_and_no_running_allocation(
        cluster: Cluster, tmp_path: Path) -> None:
    prefix = f"p{secrets.token_hex(3)}-"
    k = nomad_kernel(cluster, tmp_path, prefix)
    try:
        assert k.execute("%sandbox scale cluster 2").status == "ok"
        assert k.execute("%%sandbox bash --profile cluster\ntrue").status == "ok"
        assert wait_until(lambda: len(cluster.running(prefix)) == 2, 30), cluster.running(prefix)
        assert len(cluster.jobs(prefix)) == 2, cluster.jobs(prefix)
        reply = k.execute("%sandbox shutdown --purge", timeout=120)
        assert reply.status == "ok", reply.error
        assert cluster.jobs(prefix) == []
        assert cluster.running(prefix) == [], [
            (a["ID"], a["ClientStatus"], a["DesiredStatus"]) for a in cluster.running(prefix)]
        tokens = list((tmp_path / "state" / "sandbox_magics").glob("*.json"))
        assert all(json.loads(t.read_text()) == {} for t in tokens), "tokens outlived their jobs"
    finally:
        k.shutdown()


def test_a_sweep_runs_every_item_on_nomad(kernel: Kernel) -> None:
    check_a_sweep_runs_every_item(kernel, "cluster")


def test_a_kernel_session_keeps_state_and_shows_rich_output_on_nomad(kernel: Kernel) -> None:
    check_a_kernel_session_keeps_state_and_shows_rich_output(kernel, "cluster", "live",
                                                             sys.executable)


def test_a_cell_waiting_on_a_slow_image_pull_shows_the_pull_and_runs_past_start_timeout(
        kernel: Kernel, cluster: Cluster) -> None:
    image = "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime"
    cluster.faults(pull_seconds={image: 4}, pull_report_interval=2.5)
    try:
        reply = kernel.execute("%%sandbox bash --profile pulled\necho pulled and ran", timeout=90)
    finally:
        cluster.faults(pull_seconds={}, pull_report_interval=120)
    assert reply.status == "ok", reply.error or reply.stderr
    assert reply.stdout == "pulled and ran\n"
    assert f"to start: pulling the image {image}." in reply.stderr  # it lasted 2.5 s
    assert kernel.execute("%sandbox scale pulled 0").status == "ok"


def test_the_builtin_default_profile_moved_to_nomad_runs_a_cell_in_a_stock_image(
        cluster: Cluster, tmp_path: Path) -> None:
    """SANDBOX_MAGICS_BACKEND=nomad moves the built-in profiles: the docker driver, the
    python:3.12-slim image, whose Python (the stand-in's bare interpreter) has no package:
    the job brings the agent."""
    prefix = f"b{secrets.token_hex(3)}-"  # its own: the module kernel's jobs are not its
    env = kernel_env(tmp_path / "none.toml", tmp_path / "ws")
    del env["SANDBOX_MAGICS_PROFILES"]
    env.update({"SANDBOX_MAGICS_BACKEND": "nomad", "NOMAD_ADDR": cluster.address,
                "SANDBOX_MAGICS__DEFAULT__NOMAD__JOB_PREFIX": prefix,
                "SANDBOX_MAGICS__DEFAULT__MEMORY_MB": "256",  # the stand-in's node is small
                "XDG_STATE_HOME": str(tmp_path / "state")})
    k = Kernel(env)
    try:
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        reply = k.execute("%%sandbox bash\necho served in $(basename $PWD)", timeout=90)
        assert reply.status == "ok", reply.error or reply.stderr
        assert reply.stdout == "served in slot-0\n"
        (job,) = cluster.jobs(prefix)
        spec = cluster.api.job.get_job(job["ID"])["TaskGroups"][0]["Tasks"][0]
        assert spec["Driver"] == "docker" and spec["Config"]["image"] == "python:3.12-slim"
        assert k.execute("%sandbox shutdown", timeout=120).status == "ok"
    finally:
        k.shutdown()
