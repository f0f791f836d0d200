"""Drive a real agent process over plain HTTP, speaking its wire protocol directly.

The agent tests do not go through the kernel-side client (`AgentSandbox`): they check what
the agent itself answers, byte for byte, including to requests no client would send.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sandbox_magics.agent import protocol

TOKEN = "test-token-" + "x" * 20
LOG_NAME = "agent.log"


class Reply(NamedTuple):
    """An HTTP answer: status and body."""

    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Result:
    """What one stream of frames held: START, the output (each stream, and all of it in
    order as (kind, bytes) frames), DROPPED frames, EXIT, and when each frame arrived."""

    start: dict[str, Any] | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    output: list[tuple[int, bytes]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    exit: dict[str, Any] | None = None
    times: list[float] = field(default_factory=list)

    def add(self, kind: int, payload: bytes) -> None:
        """Take in one frame."""
        self.times.append(time.monotonic())
        if kind == protocol.START:
            self.start = json.loads(payload)
        elif kind == protocol.STDOUT:
            self.stdout += payload
        elif kind == protocol.STDERR:
            self.stderr += payload
        elif kind == protocol.EXIT:
            self.exit = json.loads(payload)
        elif kind == protocol.DROPPED:
            self.dropped.append(json.loads(payload))
        if kind in (protocol.STDOUT, protocol.STDERR):
            self.output.append((kind, payload))

    @property
    def exit_code(self) -> int | None:
        """The EXIT frame's exit code; fails if the stream ended without one."""
        assert self.exit is not None, "the stream ended without an EXIT frame"
        return self.exit["exit_code"]  # type: ignore[no-any-return]


@dataclass
class Agent:
    """An agent listening on ``port``, serving workspaces below ``root``: process ``pid``,
    started by ``process`` (the agent itself, or the parent it watches)."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path
    pid: int

    def slot(self, index: int) -> Path:
        return self.root / f"slot-{index}"

    def _connect(self, method: str, path: str, headers: Mapping[str, str | bytes],
                 token: str | bytes | None) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.putrequest(method, protocol.API + path, skip_accept_encoding=True)
        if token is not None:
            prefix = b"Bearer " if isinstance(token, bytes) else "Bearer "
            conn.putheader("Authorization", prefix + token)  # type: ignore[operator]
        for name, value in headers.items():
            conn.putheader(name, value)
        return conn

    def _send(self, method: str, path: str, body: bytes | Iterable[bytes] | None,
              token: str | bytes | None,
              headers: Mapping[str, str | bytes] | None) -> http.client.HTTPConnection:
        """Send one request below ``/v1``, an iterable body chunked; return the connection
        to read the answer from. If the agent answers and closes before the body is sent
        (a 413), the rest of the body is dropped and the answer can still be read."""
        headers = dict(headers or {})
        if isinstance(body, bytes):
            headers.setdefault("Content-Length", str(len(body)))
        elif body is not None:
            headers["Transfer-Encoding"] = "chunked"
        conn = self._connect(method, path, headers, token)
        try:
            conn.endheaders()
            if isinstance(body, bytes):
                conn.send(body)
            elif body is not None:
                for chunk in body:
                    conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except BaseException:
            conn.close()
            raise
        return conn

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None, *,
                token: str | bytes | None = TOKEN,
                headers: Mapping[str, str | bytes] | None = None) -> Reply:
        """Send one request below ``/v1`` (see `_send`) and read its answer."""
        conn = self._send(method, path, body, token, headers)
        try:
            resp = conn.getresponse()
            return Reply(resp.status, resp.read())
        finally:
            conn.close()

    def frames(self, slot: int, body: bytes | Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
        """POST an exec body (`exec_body`) and yield its frames as they arrive; fail on any
        answer but 200."""
        return self.stream("POST", f"/slots/{slot}/exec", body)

    def output_frames(self, slot: int, run_id: str, offset: int = 0) -> Iterator[tuple[int, bytes]]:
        """Follow a run's output from ``offset``: yield its frames as they arrive."""
        return self.stream("GET", f"/slots/{slot}/runs/{run_id}/output?offset={offset}")

    def stream(self, method: str, path: str,
               body: bytes | Iterable[bytes] | None = None) -> Iterator[tuple[int, bytes]]:
        """Send one request below ``/v1`` and yield the frames of its answer as they
        arrive; fail on any answer but 200. Closing the generator closes the connection."""
        conn = self._send(method, path, body, TOKEN, None)
        try:
            resp = conn.getresponse()
            if resp.status != 200:
                raise AssertionError(f"{method} {path} answered {resp.status}: {resp.read()!r}")
            while header := resp.read(protocol.HEADER.size):
                kind, length = protocol.HEADER.unpack(header)
                yield kind, resp.read(length)
        finally:
            conn.close()

    def run(self, slot: int, script: str, **fields: Any) -> Result:
        """Run ``script`` with bash in ``slot`` and collect every frame."""
        return self.run_body(slot, exec_body(script, **fields))

    def run_body(self, slot: int, body: bytes | Iterable[bytes]) -> Result:
        """POST an exec body (`exec_body`) to ``slot`` and collect every frame."""
        return collect(self.frames(slot, body))

    def replay(self, slot: int, run_id: str, offset: int = 0) -> Result:
        """A run's output from ``offset``, followed to its end, every frame collected."""
        return collect(self.output_frames(slot, run_id, offset))

    def state(self, slot: int, run_id: str) -> dict[str, Any]:
        """The run-state route's answer; fails unless it is a 200."""
        reply = self.request("GET", f"/slots/{slot}/runs/{run_id}")
        assert reply.status == 200, reply
        return reply.json()  # type: ignore[no-any-return]

    @property
    def log(self) -> str:
        """What the agent wrote on stderr so far."""
        return (self.root / LOG_NAME).read_text(errors="replace")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


def collect(frames: Iterable[tuple[int, bytes]]) -> Result:
    """Every frame of a stream, taken into one `Result`."""
    result = Result()
    for kind, payload in frames:
        result.add(kind, payload)
    return result


def exec_line(run_id: str = "r1", **fields: Any) -> bytes:
    """An exec's first line: its JSON, running bash unless ``fields`` say otherwise."""
    return json.dumps({"run_id": run_id, "argv": ["bash"], **fields}).encode() + b"\n"


def exec_body(script: str | bytes, run_id: str = "r1", **fields: Any) -> bytes:
    """An exec body: the JSON line, then ``script`` for the run's stdin."""
    stdin = script.encode() if isinstance(script, str) else script
    return exec_line(run_id, **fields) + stdin


def start_agent(root: Path, *extra: str, slots: int = 2, launcher: Sequence[str] = ()) -> Agent:
    """Start an agent with ``slots`` workspaces below ``root``; its stderr goes to
    ``root/agent.log``, beside the workspaces. A ``launcher`` (a command that runs the
    argv it is given) starts it, if given."""
    return _start(list(launcher), root, extra, slots)


def start_agent_under_a_parent(root: Path, *extra: str, slots: int = 2) -> Agent:
    """Start an agent as `start_agent` does, but from a parent process that it watches
    (``--parent-pid``), as a kernel starts it; the `Agent`'s ``process`` is that parent,
    for the test to kill."""
    parent = ("import os, subprocess, sys, time; "
              "subprocess.Popen(sys.argv[1:] + ['--parent-pid', str(os.getpid())]); time.sleep(600)")
    return _start([sys.executable, "-c", parent], root, extra, slots)


def _start(launcher: list[str], root: Path, extra: Iterable[str], slots: int) -> Agent:
    """Start an agent through ``launcher`` (which runs the argv it is given, its output
    going where the launcher's goes), and wait for its ready line."""
    env = {**os.environ, protocol.TOKEN_ENV: TOKEN}
    argv = [*launcher, sys.executable, "-m", "sandbox_magics.agent", "--root", str(root),
            "--slots", str(slots), *extra]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOG_NAME, "wb") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env)
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    return Agent(process, ready["port"], root, ready["pid"])
