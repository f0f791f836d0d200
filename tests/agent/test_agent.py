"""The agent as a real process: token, streaming exec, cancel, confined files, exit rules."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from sandbox_magics.backends.agent_client import AgentSandbox
from sandbox_magics.backends.base import ExecRequest, Exited, Output, Started
from tests.kernel_driver import pid_alive, wait_until

TOKEN = "test-token-" + "x" * 20


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    url: str
    root: Path

    def request(self, method: str, path: str, body: bytes | None = None,
                token: str | None = TOKEN) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def start_agent(root: Path, *extra: str, preexec: list[str] | None = None) -> Agent:
    env = {**os.environ, "SANDBOX_AGENT_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "sandbox_magics.agent", "--root", str(root), "--slots", "2", *extra]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    return Agent(process, f"http://127.0.0.1:{ready['port']}/v1", root)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = start_agent(tmp_path)
    yield a
    a.process.kill()
    a.process.wait()


async def _exec(agent: Agent, slot: int, code: str, **kw: object) -> list[tuple[float, object]]:
    async with aiohttp.ClientSession() as session:
        sandbox = AgentSandbox("t", 2, agent.url.removesuffix("/v1"), TOKEN, session)
        return [(time.monotonic(), e) async for e in
                sandbox.exec(slot, ExecRequest("r1", ("bash",), stdin=code, **kw))]  # type: ignore[arg-type]


def test_requests_without_or_with_wrong_token_are_refused(agent: Agent) -> None:
    assert agent.request("GET", "/health", token=None)[0] == 401
    assert agent.request("GET", "/health", token="wrong")[0] == 401
    status, _ = agent.request("POST", "/slots/0/exec", token="wrong",
                              body=json.dumps({"argv": ["touch", "pwned"], "run_id": "x"}).encode())
    assert status == 401 and not (agent.root / "slot-0" / "pwned").exists()
    status, body = agent.request("GET", "/health")
    assert status == 200 and json.loads(body)["slots"] == 2


def test_agent_binds_loopback_only(agent: Agent) -> None:
    assert agent.url.startswith("http://127.0.0.1:")
    out = subprocess.run(["cat", "/proc/net/tcp"], capture_output=True, text=True).stdout
    port = int(agent.url.rsplit(":", 1)[1].split("/")[0])
    listening = [line.split()[1] for line in out.splitlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in listening


def test_exec_streams_output_as_produced_then_exit_code(agent: Agent, tmp_path: Path) -> None:
    seen = tmp_path / "first-seen"
    script = (f"echo first; for i in $(seq 200); do [ -e {seen} ] && break; sleep 0.1; done; "
              f"[ -e {seen} ] && echo second >&2; exit 7")

    async def scenario() -> list[object]:
        async with aiohttp.ClientSession() as session:
            sandbox = AgentSandbox("t", 2, agent.url.removesuffix("/v1"), TOKEN, session)
            events = []
            async for event in sandbox.exec(0, ExecRequest("r1", ("bash",), stdin=script)):
                if isinstance(event, Output) and event.data == b"first\n":
                    seen.touch()
                events.append(event)
            return events
    events = asyncio.run(scenario())
    assert isinstance(events[0], Started)
    assert [(e.stream, e.data) for e in events if isinstance(e, Output)] == [
        ("stdout", b"first\n"), ("stderr", b"second\n")]
    assert isinstance(events[-1], Exited) and events[-1].exit_code == 7


def test_cancel_kills_the_whole_process_group(agent: Agent) -> None:
    async def scenario() -> tuple[str, list[int], Exited]:
        async with aiohttp.ClientSession() as session:
            sandbox = AgentSandbox("t", 2, agent.url.removesuffix("/v1"), TOKEN, session)
            stream = sandbox.exec(1, ExecRequest("r9", ("bash",),
                                                 stdin="sleep 300 & a=$!; sleep 301 & echo $a $!; wait"))
            pids: list[int] = []
            async for event in stream:
                if isinstance(event, Output):
                    pids.extend(int(pid) for pid in event.data.split())
                    step = await sandbox.cancel(1, "r9", grace=10)
                if isinstance(event, Exited):
                    return step, pids, event
            raise AssertionError("no exit")
    step, pids, exited = asyncio.run(scenario())
    assert step == "SIGINT" and exited.reason == "cancelled" and len(pids) == 2
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), 3)


def test_timeout_kills_the_run(agent: Agent) -> None:
    events = asyncio.run(_exec(agent, 0, "sleep 30", timeout=0.5))
    exited = events[-1][1]
    assert isinstance(exited, Exited) and exited.reason == "timeout"
    assert events[-1][0] - events[0][0] < 5


def test_files_put_get_list_within_the_workspace(agent: Agent) -> None:
    assert agent.request("PUT", "/slots/0/files/data/in.txt", b"hello")[0] == 200
    status, body = agent.request("GET", "/slots/0/files")
    assert [f["path"] for f in json.loads(body)["files"]] == ["data/in.txt"]
    assert agent.request("GET", "/slots/0/files/data/in.txt") == (200, b"hello")
    assert not (agent.root / "slot-1" / "data").exists()


@pytest.mark.parametrize("path", ["..%2F..%2Fescape", "%2Fetc%2Fpasswd", "a%2F..%2F..%2Fx",
                                  "link%2Fpasswd", "link-file"])
def test_paths_escaping_the_workspace_are_refused(agent: Agent, path: str) -> None:
    slot = agent.root / "slot-0"
    (slot / "link").symlink_to("/etc")
    (slot / "link-file").symlink_to(agent.root / "slot-1" / "secret.txt")
    (agent.root / "slot-1" / "secret.txt").write_text("slot one's")
    assert agent.request("GET", f"/slots/0/files/{path}")[0] in (403, 404)
    assert agent.request("PUT", f"/slots/0/files/{path}", b"x")[0] in (403, 404)
    assert (agent.root / "slot-1" / "secret.txt").read_text() == "slot one's"
    assert not (agent.root / "escape").exists()


def test_reset_empties_the_workspace_but_not_what_links_point_to(agent: Agent, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_text("keep")
    (agent.root / "slot-0" / "dir").mkdir()
    (agent.root / "slot-0" / "dir" / "f").write_text("x")
    (agent.root / "slot-0" / "out").symlink_to(outside)
    assert agent.request("POST", "/slots/0/reset")[0] == 200
    assert list((agent.root / "slot-0").iterdir()) == [] and outside.read_text() == "keep"


def test_agent_exits_after_idle_timeout(tmp_path: Path) -> None:
    a = start_agent(tmp_path, "--idle-timeout", "1")
    assert a.process.wait(timeout=10) == 0


def test_agent_exits_when_its_parent_dies(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, os, json;"
        f"p = subprocess.Popen([sys.executable, '-m', 'sandbox_magics.agent', '--root', {str(tmp_path)!r},"
        " '--parent-pid', str(os.getpid())], stdout=subprocess.PIPE);"
        "print(json.loads(p.stdout.readline())['pid'], flush=True); import time; time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              env={**os.environ, "SANDBOX_AGENT_TOKEN": TOKEN})
    assert parent.stdout is not None
    agent_pid = int(parent.stdout.readline())
    assert pid_alive(agent_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_until(lambda: not pid_alive(agent_pid), 15)


def test_agent_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_AGENT_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "sandbox_magics.agent", "--root", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "bearer token as the first line of stdin" in out.stderr


def test_reset_removes_what_a_run_made_read_only_or_deleted(agent: Agent) -> None:
    events = asyncio.run(_exec(agent, 0, "mkdir -p d/e; touch d/e/x; chmod 500 d/e d"))
    assert events[-1][1].exit_code == 0
    assert agent.request("POST", "/slots/0/reset")[0] == 200
    assert list((agent.root / "slot-0").iterdir()) == []
    events = asyncio.run(_exec(agent, 0, 'rm -rf "$PWD"'))
    assert events[-1][1].exit_code == 0
    events = asyncio.run(_exec(agent, 0, "echo still here"))
    assert [e.data for _, e in events if isinstance(e, Output)] == [b"still here\n"]


def test_files_are_refused_while_a_run_is_live(agent: Agent) -> None:
    async def scenario() -> tuple[int, int]:
        async with aiohttp.ClientSession() as session:
            sandbox = AgentSandbox("t", 2, agent.url.removesuffix("/v1"), TOKEN, session)
            stream = sandbox.exec(0, ExecRequest("r5", ("bash",), stdin="echo go; sleep 5"))
            async for event in stream:
                if isinstance(event, Output):
                    loop = asyncio.get_running_loop()
                    put = await loop.run_in_executor(
                        None, lambda: agent.request("PUT", "/slots/0/files/x", b"1")[0])
                    listing = await loop.run_in_executor(
                        None, lambda: agent.request("GET", "/slots/0/files")[0])
                    await sandbox.cancel(0, "r5")
                    return put, listing
        raise AssertionError("no output")
    assert asyncio.run(scenario()) == (409, 409)


def test_a_daemon_that_escaped_with_setsid_is_killed_once_the_slot_is_idle(agent: Agent) -> None:
    events = asyncio.run(_exec(agent, 1, "setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo $!"))
    pid = int(next(e.data for _, e in events if isinstance(e, Output)))
    assert wait_until(lambda: not pid_alive(pid), 15)
