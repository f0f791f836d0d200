"""Kernel lifecycle in real kernels: an interrupt during a blocking run, during a queued
acquire and during a sandbox start; a graceful restart (also while a sandbox starts); a
SIGKILL of the kernel. Afterwards, within a bounded window, nothing is left: no agent, no
process of a run, no workspace folder.

Every run gets ``--env MARK=<token>``; its processes, and whatever they start, are found by
that token in ``/proc/<pid>/environ``. A sandbox start is held open by a gate: the
kernel's ``PYTHONPATH`` holds a ``sitecustomize`` that makes an agent process wait, once
started, until the test opens the gate (a file), after telling it so (another file).

Narrower tests elsewhere: the interrupt of a run (tests/magics/test_sandbox_cell.py), the
folder after a restart (tests/kernel/test_kernel_identity.py), agents after a killed kernel
(tests/magics/test_faults.py). Nomad and Modal lifecycles are in tests/magics/
test_nomad_cell.py and test_modal_cell.py.
"""

from __future__ import annotations

import os
import secrets
import signal
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from tests.conftest import kernel_env
from tests.kernel_driver import Kernel, Reply, agent_pids, pid_alive, wait_until

WINDOW = 20.0
CLIENT = "get_ipython().magics_manager.registry['SandboxMagics'].client"
PROFILES = """
[profiles.default]
slots_per_sandbox = 2
max_sandboxes = 2
idle_timeout = 60
start_timeout = 120

[profiles.tiny]
slots_per_sandbox = 1
max_sandboxes = 1
idle_timeout = 60
start_timeout = 120
"""
GATE = """
import os, time
from pathlib import Path

if b"sandbox_magics.agent" in Path("/proc/self/cmdline").read_bytes():
    gate = Path({gate!r})
    (gate / f"starting-{{os.getpid()}}").touch()
    end = time.monotonic() + 120
    while not (gate / "open").exists() and time.monotonic() < end:
        time.sleep(0.02)
"""
# Run in the kernel: a thread that touches FLAG once the kernel's client has the run named
# "waiting" in its queue.
WATCH_QUEUE = """
import pathlib, threading, time
def _watch_queue(flag, client):
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if client.get_run("waiting").state.value == "queued":
                break
        except KeyError:
            pass
        time.sleep(0.01)
    flag.touch()
threading.Thread(target=_watch_queue, args=(pathlib.Path({flag!r}), {client}), daemon=True).start()
"""


class LoggedKernel(Kernel):
    """A `Kernel` whose stdout and stderr go to a file (the asyncio log lands there)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in shutdown
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env, stdout=self._log, stderr=self._log)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.messages = []

    def shutdown(self) -> None:
        super().shutdown()
        self._log.close()


class Lab:
    """A kernel with the extension loaded, the gate, the workspace base and the run mark."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mark = secrets.token_hex(8)
        self.gate = root / "gate"
        self.gate.mkdir()
        hooks = root / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(GATE.format(gate=str(self.gate)))
        self.workspaces = root / "ws"
        profiles = root / "profiles.toml"
        profiles.write_text(PROFILES)
        env = kernel_env(profiles, self.workspaces)
        env["SANDBOX_MAGICS__TINY__LOCAL__WORKSPACE_BASE"] = str(self.workspaces)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))
        self.kernel = LoggedKernel(env, root / "kernel.log")
        self.pids = [self.kernel.pid]
        self.load()
        self.open_gate()

    def load(self) -> None:
        assert self.kernel.execute("%load_ext sandbox_magics").status == "ok"

    def open_gate(self) -> None:
        (self.gate / "open").touch()

    def close_gate(self) -> None:
        (self.gate / "open").unlink(missing_ok=True)
        for started in self.gate.glob("starting-*"):
            started.unlink()

    def agent_starting(self) -> bool:
        return any(self.gate.glob("starting-*"))

    def cell(self, body: str, flags: str = "", on_stream: Callable[[str], None] | None = None,
             timeout: float = 120) -> Reply:
        return self.kernel.execute(f"%%sandbox bash --env MARK={self.mark} {flags}\n"
                                   + textwrap.dedent(body).strip(), timeout, on_stream)

    def interrupt_when(self, ready: Callable[[], bool]) -> threading.Thread:
        """Interrupt the kernel from another thread once ``ready()`` holds (bounded)."""
        def interrupt() -> None:
            if wait_until(ready, 60, interval=0.01):
                self.kernel.manager.interrupt_kernel()
        thread = threading.Thread(target=interrupt, daemon=True)
        thread.start()
        return thread

    def run_processes(self) -> list[int]:
        """Pids of live processes that carry this lab's mark in their environment."""
        needle = f"MARK={self.mark}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    environ = (entry / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if needle in environ and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
        return found

    def agents(self) -> list[int]:
        return [pid for kernel in self.pids for pid in agent_pids(parent=kernel)]

    def folders(self) -> list[Path]:
        return sorted(self.workspaces.glob("kernel-*")) if self.workspaces.is_dir() else []

    def leftovers(self) -> dict[str, list[object]]:
        """What is still there: agents, run processes, workspace folders (only what exists)."""
        found = {"agents": self.agents(), "run processes": self.run_processes(),
                 "workspace folders": self.folders()}
        return {kind: items for kind, items in found.items() if items}

    def stray_log_lines(self) -> list[str]:
        """Lines of the kernel's own output that tell of lost children or tasks."""
        strays = ("Unknown child process", "Task was destroyed", "Exception ignored",
                  "Task exception was never retrieved")
        return [line for line in self.log_text().splitlines() if any(s in line for s in strays)]

    def log_text(self) -> str:
        return self.kernel.log.read_text(errors="replace")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.open_gate()
    if lab.kernel.manager.is_alive():
        lab.kernel.execute("%sandbox shutdown", timeout=120)
    lab.kernel.shutdown()


def assert_clean(lab: Lab, keep_workspace: bool = False) -> None:
    """Nothing of the runs is left within the window; with ``keep_workspace``, the live
    kernel's own folder (and its agents) may stay."""
    def clean() -> bool:
        left = lab.leftovers()
        if keep_workspace:
            left.pop("agents", None)
            left.pop("workspace folders", None)
        return not left
    assert wait_until(clean, WINDOW), lab.leftovers()
    assert not lab.stray_log_lines(), lab.stray_log_lines()


def shut_down(lab: Lab) -> None:
    assert lab.kernel.execute("%sandbox shutdown", timeout=120).status == "ok"
    assert_clean(lab)


def test_an_interrupt_during_a_blocking_run_kills_its_processes_and_frees_the_slot(
        lab: Lab) -> None:
    reply = lab.cell("sleep 300 & sleep 301 & echo started; wait", "--profile tiny",
                     on_stream=lambda text: "started" in text and lab.kernel.manager.interrupt_kernel())
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    assert "process group was stopped (SIGINT)" in reply.stderr
    assert_clean(lab, keep_workspace=True)
    assert lab.cell("echo slot free", "--profile tiny").stdout == "slot free\n"
    shut_down(lab)


def test_an_interrupt_during_a_queued_acquire_dequeues_the_run_which_never_starts(
        lab: Lab) -> None:
    ran = lab.root / "ran"
    holder = lab.cell("sleep 300", "--profile tiny --bg --name holder")
    assert holder.status == "ok"
    assert wait_until(lab.run_processes, 60), "the holder did not start"
    flag = lab.root / "queued"
    assert lab.kernel.execute(WATCH_QUEUE.format(flag=str(flag), client=CLIENT)).status == "ok"
    lab.interrupt_when(flag.exists)
    reply = lab.cell(f"touch {ran}", "--profile tiny --name waiting")
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    assert "(dequeued)" in reply.stderr, reply.stderr
    assert lab.kernel.execute("%sandbox cancel holder").status == "ok"
    assert_clean(lab, keep_workspace=True)
    assert lab.cell("echo next", "--profile tiny").stdout == "next\n"
    assert not ran.exists(), "the interrupted run started after all"
    shut_down(lab)


def test_an_interrupt_during_a_sandbox_start_cancels_the_run_and_the_sandbox_still_serves(
        lab: Lab) -> None:
    ran = lab.root / "ran"
    lab.close_gate()
    lab.interrupt_when(lab.agent_starting)
    reply = lab.cell(f"touch {ran}")
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    assert "(dequeued)" in reply.stderr, reply.stderr
    lab.open_gate()
    assert lab.cell("echo served").stdout == "served\n"
    assert not ran.exists(), "the interrupted run started after all"
    shut_down(lab)


def test_a_restart_while_a_sandbox_starts_leaves_no_agent_and_no_folder(lab: Lab) -> None:
    lab.close_gate()
    assert lab.cell("sleep 300", "--bg").status == "ok"
    assert wait_until(lab.agent_starting, 60)
    lab.kernel.manager.restart_kernel(now=False)
    lab.kernel.client.wait_for_ready(timeout=60)
    lab.pids.append(lab.kernel.pid)
    assert_clean(lab)
    lab.open_gate()
    lab.load()
    assert lab.cell("echo after the restart").stdout == "after the restart\n"
    shut_down(lab)


def test_a_restart_stops_running_runs_and_agents_and_removes_the_folder(lab: Lab) -> None:
    assert lab.cell("sleep 300", "--bg").status == "ok"
    assert lab.cell("sleep 300 & wait", "--bg --profile tiny").status == "ok"
    assert wait_until(lambda: len(lab.run_processes()) >= 3 and len(lab.agents()) == 2, 60)
    lab.kernel.manager.restart_kernel(now=False)
    lab.kernel.client.wait_for_ready(timeout=60)
    lab.pids.append(lab.kernel.pid)
    assert_clean(lab)
    lab.load()
    assert lab.cell("echo after the restart").stdout == "after the restart\n"
    shut_down(lab)


def test_a_sigkilled_kernel_leaves_no_agent_nor_run_and_the_next_kernel_removes_its_folder(
        lab: Lab) -> None:
    assert lab.cell("sleep 300", "--bg").status == "ok"
    assert lab.cell("sleep 300 & wait", "--bg --profile tiny").status == "ok"
    assert wait_until(lambda: len(lab.run_processes()) >= 3 and len(lab.agents()) == 2, 60)
    killed = lab.kernel.pid
    folders = lab.folders()
    assert [f.name.split("-")[1] for f in folders] == [str(killed)]
    os.kill(killed, signal.SIGKILL)
    assert wait_until(lambda: not lab.agents() and not lab.run_processes(), WINDOW), \
        lab.leftovers()
    lab.kernel.manager.restart_kernel(now=True)
    lab.kernel.client.wait_for_ready(timeout=60)
    lab.pids.append(lab.kernel.pid)
    lab.load()
    assert lab.cell("echo next kernel").stdout == "next kernel\n"
    assert not any(f.exists() for f in folders), "the killed kernel's folder outlived the next"
    assert pid_alive(lab.kernel.pid) and not pid_alive(killed)
    shut_down(lab)
