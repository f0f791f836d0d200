"""Drive a real IPython kernel over ZMQ and watch processes from outside (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import queue
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class Reply:
    """What one execute_request produced, as the frontend saw it."""

    status: str
    streams: list[tuple[float, str, str]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    sent: float = 0.0
    replied: float = 0.0

    @property
    def stdout(self) -> str:
        return "".join(text for _, name, text in self.streams if name == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(text for _, name, text in self.streams if name == "stderr")

    @property
    def usage_error(self) -> str | None:
        """The message of a UsageError, which IPython prints to stderr instead of raising."""
        if self.status == "error" and self.stderr.startswith("UsageError: "):
            return self.stderr[len("UsageError: "):].strip()
        return None

    @property
    def data(self) -> list[dict[str, Any]]:
        return [o["data"] for o in self.outputs if "data" in o]


class Kernel:
    """An ipykernel process and a blocking client, with an ``execute`` that keeps timings."""

    def __init__(self, env: dict[str, str]) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.messages: list[tuple[float, dict[str, Any]]] = []

    @property
    def pid(self) -> int:
        return self.manager.provisioner.process.pid  # type: ignore[union-attr]

    def execute(self, code: str, timeout: float = 60, on_stream: Any = None) -> Reply:
        code = textwrap.dedent(code).strip("\n")
        reply = Reply(status="?", sent=time.monotonic())
        msg_id = self.client.execute(code)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            self.messages.append((time.monotonic(), msg))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                reply.streams.append((time.monotonic(), content["name"], content["text"]))
                if on_stream is not None:
                    on_stream(content["text"])
            elif kind in ("execute_result", "display_data"):
                reply.outputs.append(content)
            elif kind == "error":
                reply.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                break
        shell = self.client.get_shell_msg(timeout=max(1, deadline - time.monotonic()))
        reply.status = shell["content"]["status"]
        reply.replied = time.monotonic()
        return reply

    def drain(self, seconds: float) -> None:
        """Keep recording iopub messages (widget updates from background threads) for a while."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                msg = self.client.get_iopub_msg(timeout=left)
            except queue.Empty:
                return
            self.messages.append((time.monotonic(), msg))

    def drain_until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        """Keep recording iopub messages until ``predicate()`` holds; False after ``timeout``."""
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= end:
                return False
            self.drain(0.2)
        return True

    def widgets(self) -> dict[str, dict[str, Any]]:
        """Every widget model's state, rebuilt from the comm_open/comm_msg the kernel sent."""
        states: dict[str, dict[str, Any]] = {}
        for _, msg in self.messages:
            content = msg["content"]
            if msg["msg_type"] == "comm_open" and content.get("target_name") == "jupyter.widget":
                states[content["comm_id"]] = dict(content["data"].get("state", {}))
            elif msg["msg_type"] == "comm_msg" and content["comm_id"] in states:
                data = content["data"]
                if data.get("method") == "update":
                    states[content["comm_id"]].update(data.get("state", {}))
        return states

    def comm_updates(self, model_id: str) -> list[float]:
        """Arrival times of the update messages the kernel sent for one widget model."""
        return [t for t, msg in self.messages if msg["msg_type"] == "comm_msg"
                and msg["content"]["comm_id"] == model_id
                and msg["content"]["data"].get("method") == "update"]

    def shutdown(self) -> None:
        self.client.stop_channels()
        if self.manager.is_alive():
            self.manager.shutdown_kernel(now=False)


def agent_pids(parent: int | None = None) -> list[int]:
    """Pids of running sandbox agents (children of ``parent`` if given), read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"sandbox_magics.agent" not in argv or status[0] == "Z":
            continue
        if parent is not None and (b"--parent-pid" not in argv or
                                   argv[argv.index(b"--parent-pid") + 1] != str(parent).encode()):
            continue
        pids.append(int(entry.name))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes, read from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


@contextmanager
def peak_rss(pid: int, interval: float = 0.05) -> Iterator[list[int]]:
    """Sample a process's RSS from outside; ``peak[0]`` is the highest seen so far."""
    peak = [rss(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(ProcessLookupError):
                peak[0] = max(peak[0], rss(pid))
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()
