"""The agent as a real process: token, streaming exec, signals, confined files, exit rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_magics.agent import protocol
from tests.agent.agent_driver import Agent, exec_body, start_agent, start_agent_under_a_parent
from tests.kernel_driver import pid_alive, wait_until


def test_requests_without_or_with_wrong_token_are_refused(agent: Agent) -> None:
    assert agent.request("GET", "/health", token=None).status == 401
    assert agent.request("GET", "/health", token="wrong").status == 401
    reply = agent.request("POST", "/slots/0/exec", token="wrong",
                          body=json.dumps({"argv": ["touch", "pwned"], "run_id": "x"}).encode())
    assert reply.status == 401 and not (agent.slot(0) / "pwned").exists()
    reply = agent.request("GET", "/health")
    assert reply.status == 200 and reply.json()["slots"] == 2


def test_agent_binds_loopback_only(agent: Agent) -> None:
    out = subprocess.run(["cat", "/proc/net/tcp"], capture_output=True, text=True).stdout
    listening = [line.split()[1] for line in out.splitlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{agent.port:04X}" in listening


def test_exec_streams_output_as_produced_then_exit_code(agent: Agent, tmp_path: Path) -> None:
    seen = tmp_path / "first-seen"
    script = (f"echo first; for i in $(seq 200); do [ -e {seen} ] && break; sleep 0.1; done; "
              f"[ -e {seen} ] && echo second >&2; exit 7")
    frames = []
    for kind, payload in agent.frames(0, exec_body(script)):
        if (kind, payload) == (protocol.STDOUT, b"first\n"):
            seen.touch()
        frames.append((kind, payload))
    assert frames[0][0] == protocol.START
    assert frames[1:-1] == [(protocol.STDOUT, b"first\n"), (protocol.STDERR, b"second\n")]
    assert frames[-1][0] == protocol.EXIT and json.loads(frames[-1][1])["exit_code"] == 7


def test_a_signal_reaches_the_whole_process_group(agent: Agent) -> None:
    script = "sleep 300 & a=$!; sleep 301 & echo $a $!; wait"
    pids: list[int] = []
    for kind, payload in agent.frames(1, exec_body(script, run_id="r9")):
        if kind == protocol.STDOUT:
            pids.extend(int(pid) for pid in payload.split())
            sent = agent.request("POST", "/slots/1/signal",
                                 json.dumps({"run_id": "r9", "signal": 15}).encode())
        elif kind == protocol.EXIT:
            exited = json.loads(payload)
    assert sent.json() == {"delivered": True, "running": True} and exited["reason"] == "cancelled"
    assert len(pids) == 2
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), 3)


def test_files_put_get_list_within_the_workspace(agent: Agent) -> None:
    assert agent.request("PUT", "/slots/0/files/data/in.txt", b"hello").status == 200
    listing = agent.request("GET", "/slots/0/files").json()
    assert [f["path"] for f in listing["files"]] == ["data/in.txt"]
    assert agent.request("GET", "/slots/0/files/data/in.txt") == (200, b"hello")
    assert not (agent.slot(1) / "data").exists()


@pytest.mark.parametrize("path", ["..%2F..%2Fescape", "%2Fetc%2Fpasswd", "a%2F..%2F..%2Fx",
                                  "link%2Fpasswd", "link-file"])
def test_paths_escaping_the_workspace_are_refused(agent: Agent, path: str) -> None:
    (agent.slot(0) / "link").symlink_to("/etc")
    (agent.slot(0) / "link-file").symlink_to(agent.slot(1) / "secret.txt")
    (agent.slot(1) / "secret.txt").write_text("slot one's")
    assert agent.request("GET", f"/slots/0/files/{path}").status in (403, 404)
    assert agent.request("PUT", f"/slots/0/files/{path}", b"x").status in (403, 404)
    assert (agent.slot(1) / "secret.txt").read_text() == "slot one's"
    assert not (agent.root / "escape").exists()


def test_reset_empties_the_workspace_but_not_what_links_point_to(agent: Agent, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (agent.slot(0) / "dir").mkdir()
    (agent.slot(0) / "dir" / "f").write_text("x")
    (agent.slot(0) / "out").symlink_to(outside)
    assert agent.request("POST", "/slots/0/reset").status == 200
    assert list(agent.slot(0).iterdir()) == [] and outside.read_text() == "keep"


def test_agent_exits_after_idle_timeout(tmp_path: Path) -> None:
    a = start_agent(tmp_path, "--idle-timeout", "1")
    assert a.process.wait(timeout=10) == 0
    a.stop()


def test_agent_exits_when_its_parent_dies(tmp_path: Path) -> None:
    agent = start_agent_under_a_parent(tmp_path)
    assert pid_alive(agent.pid)
    agent.stop()
    assert wait_until(lambda: not pid_alive(agent.pid), 15)


def test_agent_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != protocol.TOKEN_ENV}
    out = subprocess.run([sys.executable, "-m", "sandbox_magics.agent", "--root", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "bearer token as the first line of stdin" in out.stderr


def test_reset_removes_what_a_run_made_read_only_or_deleted(agent: Agent) -> None:
    assert agent.run(0, "mkdir -p d/e; touch d/e/x; chmod 500 d/e d").exit_code == 0
    assert agent.request("POST", "/slots/0/reset").status == 200
    assert list(agent.slot(0).iterdir()) == []
    assert agent.run(0, 'rm -rf "$PWD"').exit_code == 0
    assert agent.run(0, "echo still here").stdout == b"still here\n"


def test_files_are_refused_while_a_run_is_live(agent: Agent) -> None:
    for kind, _ in agent.frames(0, exec_body("echo go; sleep 5", run_id="r5")):
        if kind == protocol.STDOUT:
            put = agent.request("PUT", "/slots/0/files/x", b"1").status
            listing = agent.request("GET", "/slots/0/files").status
            agent.request("POST", "/slots/0/signal", json.dumps({"run_id": "r5", "signal": 9}).encode())
    assert (put, listing) == (409, 409)


def test_a_daemon_that_escaped_with_setsid_is_killed_once_the_slot_is_idle(agent: Agent) -> None:
    result = agent.run(1, "setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo $!")
    pid = int(result.stdout)
    assert wait_until(lambda: not pid_alive(pid), 15)


def test_agent_refuses_to_start_with_an_upload_limit_below_one_mib(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "sandbox_magics.agent", "--root", str(tmp_path),
                          "--max-upload-mb", "0"], capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "--max-upload-mb must be at least 1, got 0" in out.stderr
