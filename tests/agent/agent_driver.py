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
from collections.abc import Iterable, Iterator, Mapping
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
    """What one exec streamed: START, the output, EXIT, and when each frame arrived."""

    start: dict[str, Any] | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    exit: dict[str, Any] | None = None
    times: list[float] = field(default_factory=list)

    @property
    def exit_code(self) -> int | None:
        """The EXIT frame's exit code; fails if the stream ended without one."""
        assert self.exit is not None, "the stream ended without an EXIT frame"
        return self.exit["exit_code"]  # type: ignore[no-any-return]


@dataclass
class Agent:
    """An agent process listening on ``port``, serving workspaces below ``root``."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path

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
        conn = self._send("POST", f"/slots/{slot}/exec", body, TOKEN, None)
        try:
            resp = conn.getresponse()
            if resp.status != 200:
                raise AssertionError(f"exec answered {resp.status}: {resp.read()!r}")
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
        result = Result()
        for kind, payload in self.frames(slot, body):
            result.times.append(time.monotonic())
            if kind == protocol.START:
                result.start = json.loads(payload)
            elif kind == protocol.STDOUT:
                result.stdout += payload
            elif kind == protocol.STDERR:
                result.stderr += payload
            elif kind == protocol.EXIT:
                result.exit = json.loads(payload)
        return result

    @property
    def log(self) -> str:
        """What the agent wrote on stderr so far."""
        return (self.root / LOG_NAME).read_text(errors="replace")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


def exec_line(run_id: str = "r1", **fields: Any) -> bytes:
    """An exec's first line: its JSON, running bash unless ``fields`` say otherwise."""
    return json.dumps({"run_id": run_id, "argv": ["bash"], **fields}).encode() + b"\n"


def exec_body(script: str | bytes, run_id: str = "r1", **fields: Any) -> bytes:
    """An exec body: the JSON line, then ``script`` for the run's stdin."""
    stdin = script.encode() if isinstance(script, str) else script
    return exec_line(run_id, **fields) + stdin


def start_agent(root: Path, *extra: str, slots: int = 2) -> Agent:
    """Start an agent with ``slots`` workspaces below ``root``; its stderr goes to
    ``root/agent.log``, beside the workspaces."""
    env = {**os.environ, protocol.TOKEN_ENV: TOKEN}
    argv = [sys.executable, "-m", "sandbox_magics.agent", "--root", str(root),
            "--slots", str(slots), *extra]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOG_NAME, "wb") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env)
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    return Agent(process, ready["port"], root)
