"""An exec's stdin is the rest of its body, after the JSON line: streamed to disk, of any
size, byte for byte, and a run starts only once all of it has arrived."""

from __future__ import annotations

import hashlib
import itertools
import random
import socket
from collections.abc import Iterator
from pathlib import Path

from tests.agent.agent_driver import TOKEN, Agent, exec_body, exec_line, start_agent
from tests.kernel_driver import peak_rss, wait_until

MIB = 2**20
BIG_MB = 50


def _random_mib(count: int) -> Iterator[bytes]:
    """``count`` MiB of random bytes, the same each time, made a MiB at a time."""
    rng = random.Random(0)
    return (rng.randbytes(MIB) for _ in range(count))


def test_a_50_mb_stdin_reaches_the_process_intact_while_the_agent_stays_small(agent: Agent) -> None:
    sent = hashlib.sha256()
    for chunk in _random_mib(BIG_MB):
        sent.update(chunk)
    body = itertools.chain([exec_line(argv=["sha256sum"])], _random_mib(BIG_MB))
    with peak_rss(agent.process.pid) as peak:
        before = peak[0]
        result = agent.run_body(0, body)
    grew = peak[0] - before
    print(f"\nagent RSS {before / MIB:.1f} MiB before, +{grew / MIB:.1f} MiB at most while "
          f"taking {BIG_MB} MiB on stdin")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{sent.hexdigest()}  -\n".encode()
    assert grew < 8 * MIB


def test_stdin_is_raw_bytes_and_empty_without_anything_after_the_json_line(agent: Agent) -> None:
    raw = b"\x00\xff\xfe not UTF-8\r\n\n"
    assert agent.run_body(0, exec_body(raw, argv=["cat"])).stdout == raw
    assert agent.run_body(0, exec_line(argv=["wc", "-c"])).stdout.strip() == b"0"
    assert agent.run_body(0, exec_line(argv=["wc", "-c"]).rstrip(b"\n")).stdout.strip() == b"0"


def test_stdin_over_max_upload_mb_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "root", "--max-upload-mb", "1")
    try:
        body = exec_body(b"touch ran\n" + b"#" * MIB, argv=["bash"])
        reply = agent.request("POST", "/slots/0/exec", body)
        assert reply.status == 413
        assert reply.json()["error"].startswith("stdin is larger than the agent takes (1 MiB, "
                                                "its --max-upload-mb)")
        assert not (agent.slot(0) / "ran").exists()
        assert agent.request("GET", "/health").json()["running"] == []
        assert agent.run(0, "echo still serving").stdout == b"still serving\n"
    finally:
        agent.stop()


def test_an_exec_whose_body_breaks_off_runs_nothing_and_frees_the_slot(agent: Agent) -> None:
    head = exec_body("touch ran\n")
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/slots/0/exec HTTP/1.1\r\nHost: agent\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Length: %d\r\n\r\n" % (len(head) + MIB) + head)
        assert wait_until(lambda: agent.request("GET", "/health").json()["running"] == [0], 10)
    assert wait_until(lambda: agent.request("GET", "/health").json()["running"] == [], 10)
    assert not (agent.slot(0) / "ran").exists()
    assert "Traceback" not in agent.log
