"""The example notebooks run top to bottom in a real kernel, as a user would run them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.conftest import agent_pids

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def execute(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    shutil.copy(NOTEBOOKS / name, tmp_path / name)
    nb = nbformat.read(tmp_path / name, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_MAGICS")}
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with _environ(env):
        client.execute()
    return nb


class _environ:
    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.saved = env, dict(os.environ)

    def __enter__(self) -> None:
        os.environ.clear()
        os.environ.update(self.env)

    def __exit__(self, *exc: object) -> None:
        os.environ.clear()
        os.environ.update(self.saved)


def text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_quickstart_notebook_runs_and_leaves_nothing_running(tmp_path: Path) -> None:
    before = set(agent_pids())
    nb = execute("quickstart.ipynb", tmp_path)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [text(c) for c in cells]
    assert "hello from " in outputs[1] and "tick 3" in outputs[1]
    assert outputs[2] == "fast\n"
    assert outputs[4] == "42\n"
    assert "about to fail" in outputs[5]
    assert "reserves no GPU" in outputs[6]
    assert "succeeded" in outputs[7] and "failed" in outputs[7]
    assert "pytorch-gpu" in outputs[8]
    assert "0 45" in outputs[10] and "async" in outputs[10]
    assert "Stopped" in outputs[11]
    assert set(agent_pids()) <= before
