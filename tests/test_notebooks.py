"""The example notebooks run top to bottom in a real kernel, as a user would run them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.kernel_driver import agent_pids, wait_until

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def execute(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    shutil.copy(NOTEBOOKS / name, tmp_path / name)
    return execute_path(tmp_path / name, tmp_path)


def execute_path(path: Path, tmp_path: Path) -> nbformat.NotebookNode:
    """Run the notebook at ``path`` in a fresh kernel whose working folder is ``tmp_path``."""
    nb = nbformat.read(path, as_version=4)
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
    assert "step  loss" in outputs[5]  # the kernel session's DataFrame, as its result
    assert "<table" in cells[5].outputs[0]["data"]["text/html"]
    assert outputs[7] == "1.8\n"  # pulled after the kernel session doubled it
    assert "about to fail" in outputs[8]
    assert "reserves no GPU" in outputs[9]
    assert "succeeded" in outputs[10] and "failed" in outputs[10]
    assert "pytorch-gpu" in outputs[11]
    assert "0 45" in outputs[13] and "async" in outputs[13]
    assert "Stopped" in outputs[14]
    assert wait_until(lambda: set(agent_pids()) <= before, 15)


def test_parallel_sweep_notebook_runs_headless(tmp_path: Path) -> None:
    nb = execute("parallel_sweep.ipynb", tmp_path)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [text(c) for c in cells]
    assert outputs[1].startswith("Run r1 (sweep-1e-4, profile default): succeeded, exit code 0")
    assert "lr=0.0001 step=8" in outputs[1], "the headless output kept a stale state"
    assert "default (local)" in outputs[5]
    assert outputs[6] == "4 run(s) finished.\n"
    assert outputs[7].count("succeeded") == 4
    assert "metrics.csv" in outputs[8]
    assert "0.05" in outputs[9] and "0.001" in outputs[9]
    assert "lr=0.001 step=8" in outputs[10]
    assert sorted(p.name for p in tmp_path.glob("metrics-*.csv")) == [
        "metrics-1e-3.csv", "metrics-1e-4.csv", "metrics-3e-3.csv", "metrics-3e-4.csv"]
    widget_state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    assert widget_state.get("state"), "the widgets' state was not saved in the notebook"


def test_failed_bg_run_that_is_waited_on_fails_a_headless_notebook(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%load_ext sandbox_magics"),
                nbformat.v4.new_code_cell("%%sandbox bash --bg --name doomed\necho trying; exit 3"),
                nbformat.v4.new_code_cell("_.wait(60)"),
                nbformat.v4.new_code_cell("print('never reached')")]
    nbformat.write(nb, tmp_path / "doomed.ipynb")
    with pytest.raises(CellExecutionError, match=r"RunFailedError: Run r\d+ .* exited with code 3"):
        execute_path(tmp_path / "doomed.ipynb", tmp_path)
