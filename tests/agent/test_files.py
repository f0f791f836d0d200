"""The file API stays inside the slot's workspace: hard links, sizes, odd entries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.agent.agent_driver import Agent


def test_a_hard_link_to_an_outside_file_is_not_served_written_or_listed(
        agent: Agent, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    before = os.stat(outside)
    assert agent.run(0, f"ln {outside} h && echo x > mine.txt").exit_code == 0
    get = agent.request("GET", "/slots/0/files/h")
    assert get.status == 403 and b"secret" not in get.body
    assert "hard link" in get.json()["error"] and "\n" not in get.json()["error"]
    put = agent.request("PUT", "/slots/0/files/h", b"overwritten")
    assert put.status == 403 and "hard link" in put.json()["error"]
    listing = agent.request("GET", "/slots/0/files").json()
    assert [f["path"] for f in listing["files"]] == ["mine.txt"]
    after = os.stat(outside)
    assert outside.read_text() == "secret" and after.st_mtime_ns == before.st_mtime_ns
    assert agent.request("POST", "/slots/0/reset").status == 200
    assert outside.read_text() == "secret" and os.stat(outside).st_nlink == 1
    assert list(agent.slot(0).iterdir()) == []


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "missing.txt", 404),
    ("GET", "folder", 409),
    ("PUT", "folder", 409),
    ("GET", "fifo", 409),
    ("PUT", "fifo", 409),
    ("GET", "file.txt/below", 409),
    ("PUT", "file.txt/below", 409),
    ("PUT", "file.txt/below/deeper", 409),
    ("GET", "x" * 300, 400),
    ("PUT", "x" * 300, 400),
    ("PUT", "a/" * 3000 + "b", 400),
])
def test_file_requests_on_what_is_no_regular_file_are_refused_with_a_reason(
        agent: Agent, method: str, path: str, status: int) -> None:
    (agent.slot(0) / "folder").mkdir()
    (agent.slot(0) / "file.txt").write_text("text")
    os.mkfifo(agent.slot(0) / "fifo")
    reply = agent.request(method, f"/slots/0/files/{path}", b"data" if method == "PUT" else None)
    error = reply.json()["error"]
    assert reply.status == status and "\n" not in error and len(error) < 300
    assert (agent.slot(0) / "file.txt").read_text() == "text"
