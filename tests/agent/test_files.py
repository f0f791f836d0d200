"""The file API stays inside the slot's workspace: hard links, sizes, odd entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox_magics.agent import app
from tests.agent.agent_driver import Agent, start_agent


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


def test_an_upload_larger_than_max_upload_mb_is_refused_and_leaves_no_partial_file(
        tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "root", "--max-upload-mb", "1")
    try:
        mib = 2**20
        assert agent.request("PUT", "/slots/0/files/fits", b"x" * mib).status == 200
        declared = agent.request("PUT", "/slots/0/files/declared", b"x" * (mib + 1))
        streamed = agent.request("PUT", "/slots/0/files/streamed", (b"x" * 65536 for _ in range(48)))
        for reply in (declared, streamed):
            assert reply.status == 413
            assert reply.json()["error"].startswith("the upload is larger than the agent takes (1 MiB")
        assert sorted(p.name for p in agent.slot(0).iterdir()) == ["fits"]
        assert agent.request("GET", "/health").json()["running"] == []
    finally:
        agent.stop()


def test_uploads_larger_than_the_json_body_limit_stream_to_disk(agent: Agent) -> None:
    size = app.MAX_JSON_BODY + 2**20
    reply = agent.request("PUT", "/slots/0/files/big.bin", (b"y" * 2**20 for _ in range(size // 2**20)))
    assert reply.status == 200 and reply.json()["size"] == size
    assert (agent.slot(0) / "big.bin").stat().st_size == size
