"""Kernel sessions in a real IPython kernel: ``%%sandbox python --kernel`` keeps state across
cells, relays rich output as MIME bundles, interrupts keep state, a dead kernel says so,
variables move both ways, routing sends plain cells there. The same checks run on the
Nomad and Modal stand-ins (`check_a_kernel_session_keeps_state_and_shows_rich_output`)."""

from __future__ import annotations

import base64
import os
import re
import signal
import threading
from collections.abc import Iterator

import pytest

from tests.kernel_driver import Kernel, pid_alive, wait_until

CLIENT = "get_ipython().magics_manager.registry['SandboxMagics'].client"


@pytest.fixture(autouse=True)
def sessions_ended(kernel: Kernel) -> Iterator[None]:
    """Each test's kernel sessions end with it: each holds a slot of the module's pool."""
    yield
    kernel.execute(f"for s in set({CLIENT}.kernels().session): {CLIENT}.end_session(s)")


def check_a_kernel_session_keeps_state_and_shows_rich_output(kernel: Kernel, profile: str,
                                                             session: str,
                                                             python: str = "python") -> None:
    """Three cells in one session share their variables; a DataFrame as the last
    expression comes back as the cell's execute_result in text/html; a remote exception
    fails the cell with the remote traceback; the kernel process is not this kernel's."""
    head = f"%%sandbox {python} --kernel --session {session} --profile {profile}\n"
    first = kernel.execute(head + "import os\nmodel = {'weights': 41}\nprint('loaded', os.getpid())")
    assert first.status == "ok", first.error or first.stderr
    assert first.stdout.startswith("loaded "), first.stdout
    remote_pid = int(first.stdout.split()[1])
    assert remote_pid != kernel.pid
    second = kernel.execute(head + "model['weights'] += 1")
    assert second.status == "ok", second.error or second.stderr
    third = kernel.execute(head + "import pandas as pd\n"
                                  "pd.DataFrame({'w': [model['weights']], 'pid': [os.getpid()]})")
    assert third.status == "ok", third.error or third.stderr
    results = [o for o in third.outputs if "execution_count" in o]  # execute_result
    assert len(results) == 1, third.outputs
    assert "<table" in results[0]["data"]["text/html"]
    assert "42" in results[0]["data"]["text/plain"] and str(remote_pid) in results[0]["data"]["text/plain"]
    failed = kernel.execute(head + "def f():\n    return 1 / 0\nf()")
    assert failed.status == "error" and failed.error["ename"] == "RemoteError"
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(failed.error["traceback"]))
    assert "ZeroDivisionError" in traceback and "return 1 / 0" in traceback
    assert traceback.count("ZeroDivisionError") <= 2  # the remote traceback, once
    assert kernel.execute(f"%sandbox end-session {session}").status == "ok"
    assert wait_until(lambda: not pid_alive(remote_pid), 30), "the kernel outlived its session"


def test_a_kernel_session_keeps_state_and_shows_rich_output_on_local(kernel: Kernel) -> None:
    check_a_kernel_session_keeps_state_and_shows_rich_output(kernel, "default", "rich")


def test_a_matplotlib_figure_arrives_as_a_png_display_of_over_a_megabyte(kernel: Kernel) -> None:
    reply = kernel.execute("""
        %%sandbox python --kernel --session plots
        import numpy as np, matplotlib.pyplot as plt
        plt.figure(figsize=(8, 8))
        plt.imshow(np.random.default_rng(0).random((700, 700, 3)))
        plt.show()
    """, timeout=120)
    assert reply.status == "ok", reply.error or reply.stderr
    pngs = [o["data"]["image/png"] for o in reply.outputs  # display_data, not a result
            if "execution_count" not in o and "image/png" in o["data"]]
    assert len(pngs) == 1, [sorted(o["data"]) for o in reply.outputs]
    png = base64.b64decode(pngs[0])
    assert png.startswith(b"\x89PNG") and len(png) > 1_000_000


def test_no_raise_error_prints_the_remote_traceback_and_the_cell_succeeds(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox python --kernel --session quiet --no-raise-error\n"
                           "raise ValueError('bad input 7')")
    assert reply.status == "ok"
    assert "ValueError" in reply.stderr and "bad input 7" in reply.stderr


def test_interrupting_a_sleep_keeps_the_variables_set_before_it_in_20_of_20_trials(
        kernel: Kernel) -> None:
    head = "%%sandbox python --kernel --session interrupts\n"
    assert kernel.execute(head + "import time").status == "ok"
    kept = 0
    for trial in range(20):
        started = threading.Event()

        def on_stream(text: str) -> None:
            if "sleeping" in text:
                started.set()
                kernel.manager.interrupt_kernel()
        reply = kernel.execute(head + f"mark = {trial}\nprint('sleeping', flush=True)\n"
                                      "time.sleep(60)", on_stream=on_stream, timeout=30)
        assert started.is_set() and reply.status == "error", reply.stdout
        assert reply.error["ename"] == "KernelInterruptedError", reply.error
        assert "keeps its state" in reply.error["evalue"]
        kept += kernel.execute(head + "print(mark)").stdout.strip() == str(trial)
    assert kept == 20


def test_a_kernel_killed_mid_cell_is_one_sentence_and_the_next_cell_starts_fresh(
        kernel: Kernel) -> None:
    head = "%%sandbox python --kernel --session doomed\n"
    assert kernel.execute(head + "state = 1").status == "ok"
    died = kernel.execute(head + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert died.status == "error" and died.error["ename"] == "KernelError"
    assert "killed by SIGKILL" in died.error["evalue"] and "fresh kernel" in died.error["evalue"]
    assert len(died.error["traceback"]) == 1
    fresh = kernel.execute(head + "print('state' in dir())")
    assert fresh.status == "ok" and fresh.stdout.strip() == "False"
    assert "fresh kernel" in fresh.stderr and "killed by SIGKILL" in fresh.stderr


def test_push_and_pull_of_a_million_row_dataframe_round_trip_equal(kernel: Kernel) -> None:
    made = kernel.execute("import numpy as np, pandas as pd\n"
                          "frame = pd.DataFrame({'x': np.arange(10**6), "
                          "'y': np.random.default_rng(1).random(10**6)})")
    assert made.status == "ok"
    moved = kernel.execute("%%sandbox python --kernel --session data --push frame --pull back\n"
                           "back = frame.assign(z=frame.x * 2)", timeout=180)
    assert moved.status == "ok", moved.error or moved.stderr
    same = kernel.execute("print(back[['x', 'y']].equals(frame), (back.z == frame.x * 2).all(), "
                          "len(back))")
    assert same.stdout.split() == ["True", "True", "1000000"], same.stdout + same.stderr


def test_a_value_that_cannot_be_pulled_is_named_and_the_others_arrive(kernel: Kernel) -> None:
    reply = kernel.execute("%%sandbox python --kernel --session some --pull good,lock,missing\n"
                           "import threading\ngood = [1, 2]\nlock = threading.Lock()")
    assert reply.status == "error" and reply.error["ename"] == "VariableError"
    assert "lock: it cannot be pickled" in reply.error["evalue"]
    assert "missing: it is not defined" in reply.error["evalue"]
    assert kernel.execute("print(good)").stdout.strip() == "[1, 2]"


def test_the_python_api_runs_pushes_and_pulls_sync_and_awaited(kernel: Kernel) -> None:
    reply = kernel.execute(f"""
        k = {CLIENT}.kernel("api")
        k.push({{"a": 20}})
        k.run("b = a + 1")
        out = await k.arun("print(b * 2)\\nb")
        print(k.pull("b"), repr(out.stdout), out.result, (await k.apull(["a"])))
    """)
    assert reply.status == "ok", reply.error or reply.stderr
    assert reply.stdout.strip() == "{'b': 21} '42\\n' 21 {'a': 20}"


def test_routing_sends_plain_cells_to_the_kernel_until_it_is_turned_off(kernel: Kernel) -> None:
    assert kernel.execute("%sandbox route --kernel --session routed").status == "ok"
    try:
        cells = [kernel.execute(code) for code in (
            "import os\nwhere = os.environ.get('SANDBOX_RUN_ID')",
            "count = 2",
            "print(where is not None, count + 1)")]
        assert [c.status for c in cells] == ["ok"] * 3
        assert cells[2].stdout.strip() == "True 3"
        assert all("→ kernel 'routed'" in c.stderr for c in cells)
    finally:
        assert kernel.execute("%sandbox route off").status == "ok"
    local = kernel.execute("print('count' in dir())")
    assert local.stdout.strip() == "False" and "→ kernel" not in local.stderr


def test_a_plain_cell_in_a_kernel_session_is_refused_with_a_sentence(kernel: Kernel) -> None:
    assert kernel.execute("%%sandbox python --kernel --session busy\nx = 1").status == "ok"
    reply = kernel.execute("%%sandbox bash --session busy\nls")
    assert reply.status == "error" and "holds a live Python kernel" in reply.error["evalue"]


@pytest.mark.parametrize("flag", ["--bg", "--timeout 5", "--out x"])
def test_flags_a_kernel_cell_cannot_take_are_a_usage_error(kernel: Kernel, flag: str) -> None:
    reply = kernel.execute(f"%%sandbox python --kernel {flag}\npass")
    assert reply.usage_error and "--kernel runs the cell in a live kernel" in reply.usage_error


def test_a_pushed_canary_shows_in_no_log_repr_or_listing(kernel: Kernel) -> None:
    canary = "canary-7d1c5e0b"
    reply = kernel.execute(f"""
        secret = "{canary}"
        %sandbox end-session vault
    """)
    reply = kernel.execute("%%sandbox python --kernel --session vault --push secret\n"
                           "length = len(secret)")
    assert reply.status == "ok", reply.error
    seen = kernel.execute(f"""
        c = {CLIENT}
        texts = [r.stdout + r.stderr + repr(r) + str(r.as_row()) for r in c.manager.runs]
        texts += [repr(c.kernel("vault")), c.kernels().to_string()]
        print(sum("{canary}" in t for t in texts), len(texts))
    """)
    assert seen.stdout.split()[0] == "0", seen.stdout


def test_shutdown_leaves_no_kernel_process(fresh_kernel: Kernel) -> None:
    assert fresh_kernel.execute("%load_ext sandbox_magics").status == "ok"
    pid = fresh_kernel.execute("%%sandbox python --kernel\nimport os\nprint(os.getpid())")
    remote = int(pid.stdout.strip())
    assert pid_alive(remote)
    assert fresh_kernel.execute("%sandbox shutdown").status == "ok"
    assert wait_until(lambda: not pid_alive(remote), 20)


def test_a_sigkilled_notebook_kernel_leaves_no_kernel_session_process(fresh_kernel: Kernel) -> None:
    assert fresh_kernel.execute("%load_ext sandbox_magics").status == "ok"
    pid = fresh_kernel.execute("%%sandbox python --kernel\nimport os\nprint(os.getpid())")
    remote = int(pid.stdout.strip())
    os.kill(fresh_kernel.pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(remote), 30), "the kernel session outlived its notebook"


def test_a_display_updated_remotely_is_updated_in_the_cell(kernel: Kernel) -> None:
    first = len(kernel.messages)
    reply = kernel.execute("%%sandbox python --kernel --session displays\n"
                           "from IPython.display import display\n"
                           "handle = display('first', display_id=True)\nhandle.update('second')")
    assert reply.status == "ok", reply.error or reply.stderr
    sent = [m for _, m in kernel.messages[first:]
            if m["msg_type"] in ("display_data", "update_display_data")]
    assert [(m["msg_type"], m["content"]["data"]["text/plain"]) for m in sent] == [
        ("display_data", "'first'"), ("update_display_data", "'second'")]
    ids = {m["content"]["transient"]["display_id"] for m in sent}
    assert len(ids) == 1
