"""Faults seen from a real kernel: dead agents, shutdown, a killed kernel, bad profile files."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests.kernel_driver import Kernel, agent_pids, pid_alive, wait_until


def test_agent_killed_mid_run_fails_the_run_fast_and_next_run_uses_a_new_agent(
        fresh_kernel: Kernel) -> None:
    k = fresh_kernel
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    killed: list[int] = []

    def on_stream(text: str) -> None:
        if "running" in text and not killed:
            killed.extend(agent_pids(parent=k.pid))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    reply = k.execute("%%sandbox bash --profile tiny\necho running; sleep 120", on_stream=on_stream)
    assert killed, "no agent was found to kill"
    assert reply.replied - reply.sent < 10
    assert reply.error is not None and reply.error["ename"] == "RunFailedError"
    assert "sandbox lost" in reply.error["evalue"]
    after = k.execute("%%sandbox bash --profile tiny\necho recovered")
    assert after.stdout == "recovered\n", after.error
    assert set(agent_pids(parent=k.pid)).isdisjoint(killed)


def test_shutdown_leaves_no_agent_process(fresh_kernel: Kernel) -> None:
    k = fresh_kernel
    k.execute("%load_ext sandbox_magics")
    reply = k.execute("""
        %%sandbox bash --profile high-memory
        echo one
    """)
    assert reply.status == "ok"
    assert k.execute("%%sandbox bash\necho two").status == "ok"
    before = agent_pids(parent=k.pid)
    assert len(before) == 2
    reply = k.execute("%sandbox shutdown")
    assert "Stopped 2 sandbox(es)" in reply.stdout
    assert wait_until(lambda: not any(pid_alive(p) for p in before), 15)
    again = k.execute("%%sandbox bash\necho after shutdown")
    assert again.stdout == "after shutdown\n"


def test_killed_kernel_leaves_no_agent_behind(fresh_kernel: Kernel) -> None:
    k = fresh_kernel
    k.execute("%load_ext sandbox_magics")
    assert k.execute("%%sandbox bash\necho hi").status == "ok"
    agents = agent_pids(parent=k.pid)
    assert agents
    os.kill(k.pid, signal.SIGKILL)
    assert wait_until(lambda: not any(pid_alive(p) for p in agents), 15)


def test_malformed_profiles_file_is_one_sentence_naming_file(fresh_kernel: Kernel,
                                                              tmp_path: Path) -> None:
    k = fresh_kernel
    bad = tmp_path / "bad.toml"
    bad.write_text("[profiles.default\nslots_per_sandbox = 2\n")
    k.execute("%load_ext sandbox_magics")
    k.execute(f"%config SandboxMagics.profiles_file = {str(bad)!r}")
    reply = k.execute("%%sandbox bash\necho hi")
    assert reply.error is not None and reply.error["ename"] == "ProfileError"
    assert str(bad) in reply.error["evalue"] and "not valid TOML" in reply.error["evalue"]
    assert len(reply.error["traceback"]) == 1

    bad.write_text("[profiles.default]\nslots_per_sandbox = 0\n")
    reply = k.execute("%%sandbox bash\necho hi")
    assert reply.error is not None
    assert re.search(rf"{re.escape(str(bad))}.*profile 'default' key 'slots_per_sandbox' "
                     r"must be greater than zero, got 0", reply.error["evalue"])
    bad.write_text("[profiles.default]\nslots_per_sandbox = 1\n")
    assert k.execute("%%sandbox bash\necho fixed").stdout == "fixed\n"
