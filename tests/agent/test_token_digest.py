"""An agent given only its token's SHA-256 (as a Nomad job carries it) serves that token
and refuses others; the digest does not reach the runs' environment."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

from sandbox_magics.agent import protocol
from tests.agent.agent_driver import exec_body

TOKEN = "digest-token-" + "y" * 24


def _start(root: Path, digest: str) -> tuple[subprocess.Popen[bytes], int]:
    env = {k: v for k, v in os.environ.items() if k != protocol.TOKEN_ENV}
    env["SANDBOX_AGENT_TOKEN_SHA256"] = digest
    root.mkdir(parents=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox_magics.agent", "--root", str(root), "--slots", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise AssertionError(process.stderr.read().decode() if process.stderr else "no output")
    return process, json.loads(line)["port"]


def _get(port: int, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"{protocol.API}/health", headers={"Authorization": f"Bearer {token}"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_agent_started_with_a_token_digest_accepts_only_that_token(tmp_path: Path) -> None:
    process, port = _start(tmp_path / "ws", hashlib.sha256(TOKEN.encode()).hexdigest().upper())
    try:
        assert _get(port, TOKEN) == 200
        assert _get(port, TOKEN + "x") == 401
        assert _get(port, hashlib.sha256(TOKEN.encode()).hexdigest()) == 401
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = exec_body('echo "[${SANDBOX_AGENT_TOKEN_SHA256-unset}]"')
        conn.request("POST", f"{protocol.API}/slots/0/exec", body=body,
                     headers={"Authorization": f"Bearer {TOKEN}"})
        assert b"[unset]" in conn.getresponse().read()
    finally:
        process.terminate()
        process.wait(10)


def test_agent_refuses_to_start_with_a_digest_that_is_no_sha256(tmp_path: Path) -> None:
    env = {**os.environ, "SANDBOX_AGENT_TOKEN_SHA256": "not-a-digest"}
    done = subprocess.run([sys.executable, "-m", "sandbox_magics.agent", "--root",
                           str(tmp_path)], env=env, capture_output=True, timeout=30)
    assert done.returncode == 2
    assert b"must be 64 hex digits" in done.stderr
