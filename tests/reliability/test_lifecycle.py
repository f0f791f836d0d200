"""Kernel lifecycle in real kernels, per backend (local; Nomad and Modal on their stand-ins):
an interrupt during a blocking run, during a queued acquire and during a sandbox start; a
graceful restart (also while a sandbox starts); a SIGKILL of the kernel. Afterwards, within
a bounded window, nothing is left: no agent, no process of a run, no workspace folder, no
running allocation, no running sandbox.

Every run gets ``--env MARK=<token>``; its processes, and whatever they start, are found by
that token in ``/proc/<pid>/environ`` (the stand-ins run commands as local processes). A
sandbox start is held open by a gate the test opens (a file), after the start told it so
(another file): for agents (local, Nomad) a ``sitecustomize`` on their ``PYTHONPATH`` that
waits; for Modal the stand-in's create call, wrapped to wait.

A ``--bg`` run outlives its kernel by design (a graceful restart or a SIGKILL): the next
kernel attaches it, and its ``%sandbox shutdown`` stops it; with no next kernel, it is
stopped ``heartbeat_window`` after its kernel went. A blocking cell's run ends with its
kernel. After a SIGKILL each backend has its own window: a local agent stops its runs and
exits once no client has come for the window (the next kernel removes the folder); so does
a Nomad agent; a Modal sandbox's detached runs are stopped by their watchdog after the
window, and the sandbox ends at its ``timeout``.

Narrower tests elsewhere: the interrupt of a run (tests/magics/test_sandbox_cell.py,
test_modal_cell.py), the folder after a restart (tests/kernel/test_kernel_identity.py),
agents after a killed kernel (tests/magics/test_faults.py), adoption after a killed kernel
(test_nomad_cell.py, test_modal_cell.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from tests.conftest import kernel_env
from tests.kernel_driver import Kernel, Reply, agent_pids, pid_alive, wait_until
from tests.modal_standin.fixtures import Running, modal_environment
from tests.modal_standin.server import ControlPlane
from tests.nomad_standin.cluster import Cluster, start_standin

WINDOW = 20.0
KILLED_WINDOW = 4.0
"""The heartbeat window of a lab whose kernel is SIGKILLed (no restart has to fit in it)."""
CLIENT = "get_ipython().magics_manager.registry['SandboxMagics'].client"
PROFILES = """
[profiles.default]
backend = "{backend}"
slots_per_sandbox = 2
max_sandboxes = 2
idle_timeout = 60
start_timeout = 120
heartbeat_window = {window}
{default_table}

[profiles.tiny]
backend = "{backend}"
slots_per_sandbox = 1
max_sandboxes = 1
idle_timeout = 60
start_timeout = 120
heartbeat_window = {window}
{tiny_table}
"""
GATE_ENV = "LIFECYCLE_GATE"
GATE = f"""
import os, time
from pathlib import Path

gate = os.environ.get({GATE_ENV!r})
if gate and b"sandbox_magics.agent" in Path("/proc/self/cmdline").read_bytes():
    gate = Path(gate)
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


def write_hooks(folder: Path) -> Path:
    """A folder holding the gate's ``sitecustomize``, for a ``PYTHONPATH``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(GATE)
    return folder


def with_path(env: dict[str, str], hooks: Path) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), env.get("PYTHONPATH")]))}


class Engine:
    """The local backend: agents are children of the kernel, gated through its PYTHONPATH."""

    name = "local"
    window = 10.0
    after_kill = window + 20

    def tables(self, lab: Lab, kill: bool) -> tuple[str, str]:
        return "", ""

    def env(self, lab: Lab) -> dict[str, str]:
        return {GATE_ENV: str(lab.gate), **with_path({}, write_hooks(lab.root / "hooks"))}

    def gate(self, root: Path) -> Path:
        return root / "gate"

    def remote(self, lab: Lab) -> list[str]:
        """What the engine still runs for this lab (allocations, sandboxes)."""
        return []

    @contextlib.contextmanager
    def gated(self, lab: Lab) -> Iterator[None]:
        yield


class Nomad(Engine):
    """The Nomad stand-in of this module, started with the gate on its PYTHONPATH (its
    raw_exec tasks, the agents, inherit its environment)."""

    name = "nomad"
    window = 10.0
    after_kill = window + 20

    def __init__(self, cluster: Cluster, gate: Path) -> None:
        self.cluster = cluster
        self._gate = gate

    def tables(self, lab: Lab, kill: bool) -> tuple[str, str]:
        table = (f'\n[profiles.{{name}}.nomad]\naddress = "{self.cluster.address}"\n'
                 f'driver = "raw_exec"\npython = "{sys.executable}"\njob_prefix = "{lab.mark}-"\n')
        return table.format(name="default"), table.format(name="tiny")

    def env(self, lab: Lab) -> dict[str, str]:
        return {"XDG_STATE_HOME": str(lab.root / "state")}

    def gate(self, root: Path) -> Path:
        return self._gate

    def remote(self, lab: Lab) -> list[str]:
        return [f"allocation {a['ID'][:8]} of {a['JobID']}" for a in self.cluster.running(lab.mark)]


class Modal(Engine):
    """The Modal stand-in of this module; a start is gated by wrapping its create call."""

    name = "modal"
    lifetime = 8
    after_kill = lifetime + 20

    def __init__(self, standin: Running) -> None:
        self.standin = standin

    def tables(self, lab: Lab, kill: bool) -> tuple[str, str]:
        timeout = f"timeout = {self.lifetime}\n" if kill else ""
        table = f'\n[profiles.{{name}}.modal]\napp_name = "lifecycle-{lab.mark}"\n{timeout}'
        return table.format(name="default"), table.format(name="tiny")

    def env(self, lab: Lab) -> dict[str, str]:
        return modal_environment(self.standin.url, lab.root / "modal.toml")

    def remote(self, lab: Lab) -> list[str]:
        app = self.standin.standin.apps.get(("main", f"lifecycle-{lab.mark}"))
        return [f"sandbox {b.id}" for b in self.standin.standin.running() if b.app_id == app]

    @contextlib.contextmanager
    def gated(self, lab: Lab) -> Iterator[None]:
        create = ControlPlane._create

        async def gated_create(servicer: Any, *args: Any, **kwargs: Any) -> None:
            (lab.gate / f"starting-{time.monotonic_ns()}").touch()
            end = time.monotonic() + 120
            while not (lab.gate / "open").exists() and time.monotonic() < end:
                await asyncio.sleep(0.02)
            await create(servicer, *args, **kwargs)
        ControlPlane._create = gated_create  # type: ignore[method-assign]
        try:
            yield
        finally:
            ControlPlane._create = create  # type: ignore[method-assign]


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
    """A kernel of one engine with the extension loaded, the gate, and the run mark."""

    def __init__(self, root: Path, engine: Engine, kill: bool = False) -> None:
        self.root = root
        self.engine = engine
        self.mark = "lc" + secrets.token_hex(4)
        self.gate = engine.gate(root)
        self.gate.mkdir(parents=True, exist_ok=True)
        self.workspaces = root / "ws"
        default_table, tiny_table = engine.tables(self, kill)
        profiles = root / "profiles.toml"
        window = KILLED_WINDOW if kill else engine.window  # no next kernel to wait for
        profiles.write_text(PROFILES.format(backend=engine.name, window=window,
                                            default_table=default_table, tiny_table=tiny_table))
        env = {**kernel_env(profiles, self.workspaces), **engine.env(self)}
        env["SANDBOX_MAGICS__TINY__LOCAL__WORKSPACE_BASE"] = str(self.workspaces)
        if engine.name != "local":
            env = {k: v for k, v in env.items() if "__LOCAL__" not in k}
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

    def start_seen(self) -> bool:
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

    def live_kernel(self) -> int:
        """Start a kernel session (a slot of the default profile); return its process id."""
        reply = self.kernel.execute(f"%%sandbox {sys.executable} --kernel --session lc\n"
                                    "import os\nprint(os.getpid())", 60)
        assert reply.status == "ok", (reply.error, reply.stderr)
        return int(reply.stdout.strip())

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
        """What is still there: agents, run processes, workspace folders, and what the
        engine still runs (only the kinds that have something)."""
        found = {"agents": self.agents(), "run processes": self.run_processes(),
                 "workspace folders": self.folders(), "on the engine": self.engine.remote(self)}
        return {kind: items for kind, items in found.items() if items}

    def stray_log_lines(self) -> list[str]:
        """Lines of the kernel's own output that tell of lost children or tasks."""
        strays = ("Unknown child process", "Task was destroyed", "Exception ignored",
                  "Task exception was never retrieved")
        text = self.kernel.log.read_text(errors="replace")
        return [line for line in text.splitlines() if any(s in line for s in strays)]


@pytest.fixture(scope="module")
def nomad_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    """A Nomad stand-in of our own, started with the gate on its PYTHONPATH."""
    root = tmp_path_factory.mktemp("nomad-lifecycle")
    gate = root / "gate"
    gate.mkdir()
    saved = dict(os.environ)
    os.environ.update(with_path({GATE_ENV: str(gate), "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                                write_hooks(root / "hooks")))
    try:
        cluster = start_standin(root / "standin")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    (gate / "open").touch()
    yield cluster, gate
    cluster.stop()


@pytest.fixture(scope="module")
def modal_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = Running(tmp_path_factory.mktemp("modal-lifecycle"))
    yield running
    running.stop()
    assert not running.standin.unserved, sorted(set(running.standin.unserved))


@pytest.fixture(params=["local", "nomad", "modal"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "nomad":
        cluster, gate = request.getfixturevalue("nomad_cluster")
        return Nomad(cluster, gate)
    if request.param == "modal":
        return Modal(request.getfixturevalue("modal_standin"))
    return Engine()


def open_lab(root: Path, engine: Engine, kill: bool = False) -> Iterator[Lab]:
    lab = Lab(root, engine, kill)
    try:
        with engine.gated(lab):
            yield lab
    finally:
        lab.open_gate()
        if lab.kernel.manager.is_alive():
            lab.kernel.execute("%sandbox shutdown", timeout=120)
        lab.kernel.shutdown()


@pytest.fixture
def lab(tmp_path: Path, engine: Engine) -> Iterator[Lab]:
    yield from open_lab(tmp_path, engine)


@pytest.fixture
def doomed_lab(tmp_path: Path, engine: Engine) -> Iterator[Lab]:
    """A lab whose kernel will be SIGKILLed (Modal sandboxes get a short timeout)."""
    yield from open_lab(tmp_path, engine, kill=True)


def assert_clean(lab: Lab, keep_sandboxes: bool = False, window: float = WINDOW) -> None:
    """Nothing of the runs is left within ``window``; with ``keep_sandboxes``, the live
    kernel's own sandboxes (agents, folder, what the engine runs) may stay."""
    def left() -> dict[str, list[object]]:
        found = lab.leftovers()
        if keep_sandboxes:
            found = {k: v for k, v in found.items() if k == "run processes"}
        return found
    assert wait_until(lambda: not left(), window), left()
    assert not lab.stray_log_lines(), lab.stray_log_lines()


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []


def shut_down(lab: Lab) -> None:
    assert lab.kernel.execute("%sandbox shutdown", timeout=120).status == "ok"
    assert_clean(lab)


def test_an_interrupt_during_a_blocking_run_kills_its_processes_and_frees_the_slot(
        lab: Lab) -> None:
    reply = lab.cell("sleep 300 & sleep 301 & echo started; wait", "--profile tiny",
                     on_stream=lambda text: "started" in text and lab.kernel.manager.interrupt_kernel())
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    assert "process group was interrupted (SIGINT)" in reply.stderr, reply.stderr
    assert_clean(lab, keep_sandboxes=True)
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
    assert "taken out of the queue before it started" in reply.stderr, reply.stderr
    assert lab.kernel.execute("%sandbox cancel holder").status == "ok"
    assert_clean(lab, keep_sandboxes=True)
    assert lab.cell("echo next", "--profile tiny").stdout == "next\n"
    assert not ran.exists(), "the interrupted run started after all"
    shut_down(lab)


def test_an_interrupt_during_a_sandbox_start_cancels_the_run_and_the_sandbox_still_serves(
        lab: Lab) -> None:
    ran = lab.root / "ran"
    lab.close_gate()
    lab.interrupt_when(lab.start_seen)
    reply = lab.cell(f"touch {ran}")
    assert reply.error is not None and reply.error["ename"] == "KeyboardInterrupt"
    assert "taken out of the queue before it started" in reply.stderr, reply.stderr
    lab.open_gate()
    assert lab.cell("echo served").stdout == "served\n"
    assert not ran.exists(), "the interrupted run started after all"
    shut_down(lab)


def test_a_restart_while_a_sandbox_starts_leaves_nothing_behind(lab: Lab) -> None:
    lab.close_gate()
    assert lab.cell("sleep 300", "--bg").status == "ok"
    assert wait_until(lab.start_seen, 60)
    lab.kernel.manager.restart_kernel(now=False)
    lab.kernel.client.wait_for_ready(timeout=60)
    lab.pids.append(lab.kernel.pid)
    lab.open_gate()
    assert_clean(lab)
    lab.load()
    assert lab.cell("echo after the restart").stdout == "after the restart\n"
    shut_down(lab)


def test_a_restart_ends_a_blocking_run_keeps_a_bg_run_whose_next_kernel_attaches_and_stops_it(
        lab: Lab) -> None:
    def sleeping() -> set[int]:
        return {pid for pid in lab.run_processes() if _argv(pid) == [b"sleep", b"300"]}
    assert lab.cell("sleep 300", "--bg --name kept").status == "ok"
    # its own sleep too, not only the shells before it (Modal's supervisor is a chain of them)
    assert wait_until(lambda: len(lab.run_processes()) >= 2 and len(sleeping()) == 1, 60)
    kept = set(lab.run_processes())
    live = lab.live_kernel()
    lab.kernel.client.execute(f"%%sandbox bash --env MARK={lab.mark} --profile tiny\nsleep 300")
    assert wait_until(lambda: len(lab.run_processes()) >= len(kept) + 2
                      and len(sleeping()) == 2, 60)
    sleepers = sleeping()
    sleeper, blocking = sleepers & kept, sleepers - kept
    assert len(sleeper) == len(blocking) == 1, (sleepers, kept)
    lab.kernel.manager.restart_kernel(now=False)
    lab.kernel.client.wait_for_ready(timeout=60)
    lab.pids.append(lab.kernel.pid)
    assert wait_until(lambda: not blocking & set(lab.run_processes()), WINDOW), lab.leftovers()
    assert wait_until(lambda: not pid_alive(live), WINDOW), "a kernel session outlived its kernel"
    assert sleeper <= set(lab.run_processes()), "the --bg run did not outlive its kernel"
    lab.load()
    listed = lab.kernel.execute(f"print({CLIENT}.runs().loc['r1', 'state'])").stdout
    assert "running (started by the previous kernel" in listed, listed
    attached = lab.kernel.execute(f"print({CLIENT}.attach('kept').state.value)").stdout
    assert attached.strip() == "running", attached
    assert lab.cell("echo after the restart").stdout == "after the restart\n"
    reply = lab.kernel.execute("%sandbox shutdown", timeout=120)
    assert "and 1 run(s) (1 of them --bg)" in reply.stdout, reply.stdout
    assert_clean(lab)


def test_a_sigkilled_kernels_bg_runs_end_after_the_heartbeat_window_and_the_next_kernel_cleans_up(
        doomed_lab: Lab) -> None:
    lab = doomed_lab
    assert lab.cell("sleep 300", "--bg").status == "ok"
    assert lab.cell("sleep 300 & wait", "--bg --profile tiny").status == "ok"
    assert wait_until(lambda: len(lab.run_processes()) >= 3, 60)
    live = lab.live_kernel()
    killed = lab.kernel.pid
    folders = lab.folders()
    os.kill(killed, signal.SIGKILL)
    window = lab.engine.after_kill
    assert wait_until(lambda: not lab.agents() and not lab.run_processes()
                      and not lab.engine.remote(lab) and not pid_alive(live), window), \
        {**lab.leftovers(), "kernel session alive": pid_alive(live)}
    lab.kernel.manager.restart_kernel(now=True)
    lab.kernel.client.wait_for_ready(timeout=60)
    lab.pids.append(lab.kernel.pid)
    lab.load()
    assert lab.cell("echo next kernel").stdout == "next kernel\n"
    assert not any(f.exists() for f in folders), "the killed kernel's folder outlived the next"
    assert not pid_alive(killed)
    shut_down(lab)
