"""The agent a Nomad docker job brings (`agent_bundle`): it serves from a bare interpreter
(``-I -S``: no site-packages, so neither sandbox_magics nor aiohttp can be imported), and
on a Python older than its sources need it exits with one line saying so."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from sandbox_magics.backends.agent_bundle import BUNDLE_FILE, TOO_OLD, boot, bundle_text, oldest_python


def start(python: str, folder: Path) -> subprocess.Popen[str]:
    (folder / BUNDLE_FILE).write_text(bundle_text())
    return subprocess.Popen(
        [python, "-I", "-S", "-c", boot(), str(folder), "--root", str(folder / "ws"),
         "--slots", "1", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "SANDBOX_AGENT_TOKEN": "token"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_bundled_agent_serves_from_a_bare_interpreter(tmp_path: Path) -> None:
    agent = start(sys.executable, tmp_path)
    try:
        port = json.loads(agent.stdout.readline())["port"]  # its first line, once it listens
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/health",
                                         headers={"Authorization": "Bearer token"})
        assert json.loads(urllib.request.urlopen(request, timeout=10).read())["ok"] is True
    finally:
        agent.terminate()
        agent.wait(10)


def older_python() -> str | None:
    """A Python 3 on this machine (on PATH, or one pyenv keeps) older than the bundle
    needs, if there is one."""
    _, minor = oldest_python()
    for older in range(minor - 1, 7, -1):
        candidates = [shutil.which(f"python3.{older}"),
                      *map(str, Path.home().glob(f".pyenv/versions/3.{older}.*/bin/python3"))]
        for found in filter(None, candidates):
            if subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0:
                return found
    return None


@pytest.mark.skipif(older_python() is None, reason="no Python older than the bundle needs here")
def test_on_a_python_too_old_for_the_bundle_the_agent_says_so_in_one_line(tmp_path: Path) -> None:
    agent = start(str(older_python()), tmp_path)
    _, err = agent.communicate(timeout=30)
    assert agent.returncode == TOO_OLD
    major, minor = oldest_python()
    assert err.startswith(f"agent: the agent the job brings needs Python {major}.{minor} or "
                          "later, and this image's is 3.")
    assert err.count("\n") == 1
