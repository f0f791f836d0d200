"""%%sandbox on a Modal profile in a real IPython kernel, the real ``modal`` package talking to
the local stand-in of Modal's API (which runs the commands as processes on this machine)."""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_magics import identity
from tests.conftest import kernel_env
from tests.kernel.test_live_python import check_a_kernel_session_keeps_state_and_shows_rich_output
from tests.kernel_driver import Kernel, pid_alive, wait_until
from tests.magics.test_sweep import check_a_sweep_runs_every_item
from tests.modal_standin.fixtures import CANARY_VALUE, Running, modal_environment, standin  # noqa: F401,F811

PROFILES = """
[profiles.m]
backend = "modal"
slots_per_sandbox = 4
max_sandboxes = 3
idle_timeout = 60
acquire_timeout = 60

[profiles.m.modal]
app_name = "kernel-tests"

[profiles.built]
backend = "modal"
slots_per_sandbox = 1
max_sandboxes = 1
start_timeout = 3

[profiles.built.modal]
app_name = "kernel-tests"
pip = ["sandbox-magics-slow-build-4"]

[profiles.s]
backend = "modal"
slots_per_sandbox = 1
max_sandboxes = 1
secrets = ["canary"]

[profiles.s.modal]
app_name = "kernel-tests"
"""
CLIENT = "get_ipython().magics_manager.registry['SandboxMagics'].client"


def start_kernel(root: Path, url: str) -> Kernel:
    profiles = root / "profiles.toml"
    profiles.write_text(PROFILES)
    env = {**kernel_env(profiles, root / "ws"), **modal_environment(url, root / "modal.toml")}
    k = Kernel(env)
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    return k


@pytest.fixture(scope="module")
def kernel(standin: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    k = start_kernel(tmp_path_factory.mktemp("modal-kernel"), standin.url)
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


def client_id(k: Kernel) -> str:
    return k.execute(f"print({CLIENT}.id)").stdout.strip()


def boxes_of(standin: Running, client: str) -> list[str]:
    return [b.id for b in standin.standin.boxes.values() if b.tags.get(identity.CLIENT) == client]


def test_a_modal_cell_streams_its_output_line_by_line(kernel: Kernel, tmp_path: Path) -> None:
    seen = tmp_path / "seen"

    def on_stream(text: str) -> None:
        if "tick 1" in text:
            seen.touch()
    reply = kernel.execute(f"""
        %%sandbox bash --profile m
        echo "tick 1"
        for i in $(seq 300); do [ -e {seen} ] && break; sleep 0.05; done
        [ -e {seen} ] && echo "tick 2: the cell showed tick 1 while this ran"
        echo "to stderr" >&2
    """, on_stream=on_stream)
    assert reply.status == "ok", reply.error
    assert reply.stdout == "tick 1\ntick 2: the cell showed tick 1 while this ran\n"
    assert reply.stderr == "to stderr\n"


def test_three_sandboxes_of_four_slots_serve_thirty_runs(kernel: Kernel, standin: Running) -> None:
    client = client_id(kernel)
    before = set(boxes_of(standin, client))
    reply = kernel.execute(f"""
        runs = [{CLIENT}.submit("sleep 0.2; echo $SANDBOX_RUN_ID; pwd", profile="m")
                for _ in range(30)]
        for r in runs:
            r.wait(120)
        import json
        print(json.dumps([[r.state.value, r.sandbox, r.stdout] for r in runs]))
    """, timeout=180)
    assert reply.status == "ok", reply.error
    rows = json.loads(reply.stdout)
    assert [state for state, _, _ in rows] == ["succeeded"] * 30
    created = set(boxes_of(standin, client)) - before
    concurrency = min(30, 3 * 4)
    assert len(created) + len(before) == math.ceil(concurrency / 4) == 3
    assert len({sandbox for _, sandbox, _ in rows}) == 3
    assert len({out.split()[1] for _, _, out in rows}) == 12, "runs did not spread over the 12 slots"


def test_uploads_sessions_and_artifacts_work_on_modal(kernel: Kernel, tmp_path: Path) -> None:
    local = tmp_path / "input.txt"
    local.write_text("uploaded\n")
    first = kernel.execute(f"""
        %%sandbox bash --profile m --session keep --name arts --upload {local}:in/input.txt
        cat in/input.txt; echo 42 > answer.txt; mkdir -p out; echo made > out/made.txt
    """)
    assert first.stdout == "uploaded\n", first.error
    arts = kernel.execute(f"r = {CLIENT}.get_run('arts'); "
                          "print(sorted((a.path, a.read_bytes().decode()) for a in r.artifacts))")
    assert arts.stdout.strip() == "[('answer.txt', '42\\n'), ('out/made.txt', 'made\\n')]"
    second = kernel.execute("%%sandbox bash --profile m --session keep\ncat answer.txt")
    assert second.stdout == "42\n"
    assert kernel.execute("%sandbox end-session keep").status == "ok"
    fresh = kernel.execute("%%sandbox bash --profile m --session keep\nls")
    assert fresh.status == "ok" and fresh.stdout == ""


def test_an_interrupt_kills_the_remote_process_group(kernel: Kernel, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"

    def on_stream(text: str) -> None:
        if "started" in text:
            threading.Thread(target=kernel.manager.interrupt_kernel).start()
    reply = kernel.execute(f"""
        %%sandbox bash --profile m
        sleep 300 & echo $! > {pid_file}
        echo started
        wait
    """, on_stream=on_stream, timeout=60)
    assert reply.status == "error" and reply.error is not None
    assert reply.error["ename"] == "KeyboardInterrupt"
    child = int(pid_file.read_text())
    assert wait_until(lambda: not pid_alive(child), 10), "the run's background child survived"
    again = kernel.execute("%%sandbox bash --profile m\necho still serving")
    assert again.stdout == "still serving\n"


def test_a_timeout_kills_the_remote_process_group(kernel: Kernel, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    reply = kernel.execute(f"""
        %%sandbox bash --profile m --timeout 1
        sleep 300 & echo $! > {pid_file}
        wait
    """, timeout=60)
    assert reply.status == "error" and reply.error is not None
    assert "exceeded its timeout of 1 s; its process group was killed" in reply.error["evalue"]
    assert wait_until(lambda: not pid_alive(int(pid_file.read_text())), 10)


def when_working(standin: Running, client: str, end: Callable[[str], Any]
                 ) -> tuple[list[str], Callable[[str], None]]:
    """An ``on_stream`` that, once the run prints "working", calls ``end(box)`` on the
    stand-in for each running sandbox of profile s of ``client``; and those boxes' ids."""
    ended: list[str] = []

    def on_stream(text: str) -> None:
        if "working" in text and not ended:
            ended.extend(b.id for b in standin.standin.running()
                         if b.tags.get(identity.CLIENT) == client
                         and b.tags.get(identity.PROFILE) == "s")
            for box in ended:
                standin.call(end(box))
    return ended, on_stream


def test_a_sandbox_terminated_underneath_fails_the_run_with_a_sentence_and_is_replaced(
        kernel: Kernel, standin: Running) -> None:
    client = client_id(kernel)
    killed, on_stream = when_working(
        standin, client, lambda box: standin.standin.terminate(box, "the worker was preempted"))
    reply = kernel.execute("%%sandbox bash --profile s\necho working; sleep 300", on_stream=on_stream)
    assert killed
    assert reply.replied - reply.sent < 15
    assert reply.error is not None and reply.error["ename"] == "RunFailedError"
    assert "Modal terminated it (the worker was preempted)" in reply.error["evalue"]
    assert len(reply.error["traceback"]) == 1
    after = kernel.execute("%%sandbox bash --profile s\necho replaced")
    assert after.stdout == "replaced\n", after.error
    live = [b.id for b in standin.standin.running() if b.tags.get(identity.CLIENT) == client
            and b.tags.get(identity.PROFILE) == "s"]
    assert len(live) == 1 and live[0] not in killed


def test_a_canary_secrets_value_never_shows_in_any_output(kernel: Kernel) -> None:
    replies = [
        kernel.execute('%%sandbox bash --profile s\necho "secret has ${#CANARY_SECRET} chars"'),
        kernel.execute("%sandbox profiles"),
        kernel.execute("%sandbox runs"),
        kernel.execute("%sandbox status"),
        kernel.execute("%%sandbox bash --profile s\nexit 7"),
    ]
    assert replies[0].stdout == f"secret has {len(CANARY_VALUE)} chars\n"
    everything = json.dumps([msg for _, msg in kernel.messages], default=str)
    assert CANARY_VALUE not in everything
    assert "canary" in everything   # the secret's name may show, as in %sandbox profiles


def test_a_restarted_kernel_adopts_its_sandboxes_and_shutdown_terminates_all(
        standin: Running, tmp_path: Path) -> None:
    k = start_kernel(tmp_path, standin.url)
    try:
        assert k.execute("%%sandbox bash --profile m\necho first").stdout == "first\n"
        first = client_id(k)
        mine = boxes_of(standin, first)
        assert len(mine) == 1
        creates = standin.standin.calls["SandboxCreateV2"]
        k.manager.restart_kernel(now=True)        # killed: no shutdown ran
        k.client.wait_for_ready(timeout=60)
        assert standin.standin.boxes[mine[0]].result is None
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        reply = k.execute("%%sandbox bash --profile m\necho adopted")
        assert reply.stdout == "adopted\n", reply.error
        assert standin.standin.calls["SandboxCreateV2"] == creates, "a new sandbox was started"
        events = k.execute(f"print([e['kind'] for p in {CLIENT}.status() for e in p['events']])")
        assert "adopted" in events.stdout
        assert k.execute("%%sandbox bash --profile s\necho second").status == "ok"
        live = [b for b in standin.standin.running()
                if b.tags.get(identity.KERNEL) == standin_kernel(k)]
        assert len(live) == 2
        assert k.execute("%sandbox shutdown", timeout=120).status == "ok"
        assert wait_until(lambda: all(b.result is not None for b in live), 15)
    finally:
        k.shutdown()


def standin_kernel(k: Kernel) -> str:
    return k.execute(f"print({CLIENT}.identity.kernel_id)").stdout.strip()


def test_the_modal_notebook_runs_against_the_stand_in(standin: Running, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_notebooks import execute, text
    for key, value in modal_environment(standin.url, tmp_path / "modal.toml").items():
        monkeypatch.setenv(key, value)
    nb = execute("modal.ipynb", tmp_path)
    outputs = [text(c) for c in nb.cells if c.cell_type == "code"]
    assert "hello from a Modal sandbox, in slot-" in outputs[2] and "tick 3" in outputs[2]
    assert outputs[3] == "fast True\n"
    assert outputs[5] == "15\n"
    assert "succeeded" in outputs[6]
    assert "Stopped" in outputs[7]
    assert not [b for b in standin.standin.running() if b.app_id == standin.standin.apps.get(
        ("main", "sandbox-magics-demo"))]


def test_no_modal_credentials_fail_a_cell_with_one_sentence_within_seconds(
        standin: Running, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    env = {**kernel_env(profiles, tmp_path / "ws"), **modal_environment(standin.url, tmp_path / "m.toml")}
    del env["MODAL_TOKEN_ID"], env["MODAL_TOKEN_SECRET"]
    k = Kernel(env)
    try:
        assert k.execute("%load_ext sandbox_magics").status == "ok"
        reply = k.execute("%%sandbox bash --profile m\necho never")
        assert reply.replied - reply.sent < 10
        assert reply.error is not None and len(reply.error["traceback"]) == 1
        assert reply.error["evalue"].endswith(
            "No Modal credentials were found: run `modal token new` (or set MODAL_TOKEN_ID and "
            "MODAL_TOKEN_SECRET) and try again.")
    finally:
        k.shutdown()


def test_a_sweep_runs_every_item_on_modal(kernel: Kernel) -> None:
    check_a_sweep_runs_every_item(kernel, "m")


def test_a_kernel_session_keeps_state_and_shows_rich_output_on_modal(kernel: Kernel) -> None:
    check_a_kernel_session_keeps_state_and_shows_rich_output(kernel, "m", "live", sys.executable)


def test_a_kernel_session_on_an_image_without_ipython_fails_with_what_to_add(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox /usr/bin/python3 --kernel --session bare --profile m\nx = 1")
    assert reply.status == "error" and reply.error["ename"] == "KernelError", reply.error
    assert "has no IPython" in reply.error["evalue"]
    assert 'pip = ["ipython"] in [profiles.m.modal]' in reply.error["evalue"]


def test_a_kernel_session_whose_python_is_missing_is_one_sentence(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox /no/such/python3 --kernel --session nopython --profile m\n"
                           "x = 1")
    assert reply.status == "error" and reply.error["ename"] == "KernelError", reply.error
    assert "could not start" in reply.error["evalue"] and "/no/such/python3" in reply.error["evalue"]
    assert len(reply.error["traceback"]) == 1


def test_a_cell_waiting_on_an_image_build_shows_it_and_runs_past_start_timeout(
        kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox bash --profile built\necho built and ran", timeout=90)
    assert reply.status == "ok", reply.error or reply.stderr
    assert reply.stdout == "built and ran\n"
    assert "to start: preparing the image (a first start builds it)" in reply.stderr
    assert reply.replied - reply.sent > 4  # the build alone takes 4 s; start_timeout is 3 s
    assert kernel.execute("%sandbox scale built 0").status == "ok"


def test_a_run_with_no_timeout_whose_worker_vanishes_ends_by_the_health_check(
        kernel: Kernel, standin: Running) -> None:
    """The exec's streams never end: the pool's health check, which polls Modal, retires
    the sandbox, and the run ends lost with Modal's reason instead of hanging."""
    gone, on_stream = when_working(
        standin, client_id(kernel), lambda box: standin.standin.vanish(box, "the worker vanished"))
    reply = kernel.execute("%%sandbox bash --profile s\necho working; sleep 300",
                           on_stream=on_stream, timeout=60)
    assert gone
    assert reply.error is not None and reply.error["ename"] == "RunFailedError", reply.error
    assert "sandbox lost" in reply.error["evalue"] and "the worker vanished" in reply.error["evalue"]
