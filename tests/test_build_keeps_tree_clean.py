"""Building the JupyterLab extension leaves the tracked files as they were: the npm
command that `pip install -e .` runs (pyproject's jupyter-builder ``npm``) installs what the
lock file says and writes nothing back to it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "labextension" / "package-lock.json"


def builder_npm() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(config["tool"]["hatch"]["build"]["hooks"]["jupyter-builder"]["build-kwargs"]["npm"])


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not on PATH")
def test_the_builders_npm_install_leaves_the_lock_file_as_committed() -> None:
    before = LOCK.read_bytes()
    try:
        done = subprocess.run([*builder_npm(), "install", "--ignore-scripts", "--no-audit",
                               "--no-fund"], cwd=LOCK.parent, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert LOCK.read_bytes() == before, "the build's npm install rewrote package-lock.json"
    finally:
        LOCK.write_bytes(before)
