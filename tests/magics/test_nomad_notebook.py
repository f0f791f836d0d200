"""``notebooks/nomad.ipynb`` runs top to bottom against the Nomad stand-in (or a real Nomad),
its cluster settings overridden the way a user would: NOMAD_ADDR and SANDBOX_MAGICS__ variables."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.nomad_standin.cluster import Cluster, cluster  # noqa: F401
from tests.test_notebooks import NOTEBOOKS, _environ, text


def test_the_nomad_notebook_runs_headless_and_leaves_no_job(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    shutil.copy(NOTEBOOKS / "nomad.ipynb", tmp_path / "nomad.ipynb")
    nb = nbformat.read(tmp_path / "nomad.ipynb", as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SANDBOX_MAGICS", "NOMAD_"))}
    env.update(NOMAD_ADDR=cluster.address, XDG_STATE_HOME=str(tmp_path / "state"),
               SANDBOX_MAGICS__CLUSTER__NOMAD__DRIVER="raw_exec",
               SANDBOX_MAGICS__CLUSTER__NOMAD__PYTHON=sys.executable,
               SANDBOX_MAGICS__CLUSTER__CPU="0.1")
    if cluster.token:
        env["NOMAD_TOKEN"] = cluster.token
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with _environ(env):
        client.execute()
    outputs = [text(c) for c in nb.cells if c.cell_type == "code"]
    assert "cluster" in outputs[1] and "nomad" in outputs[1]
    assert "job sandbox-magics-" in outputs[2] and "tick 3" in outputs[2]
    assert outputs[3].endswith("saved\n") and outputs[4].endswith("42\n")
    assert outputs[5] == "6 run(s) finished.\n"
    assert outputs[6].count("succeeded") == 6
    assert outputs[7].splitlines() and all(line.endswith("True 8")
                                           for line in outputs[7].splitlines())
    (error,) = [o for o in [c for c in nb.cells if c.cell_type == "code"][9].outputs
                if o.output_type == "error"]
    assert error.ename == "RunFailedError"
    assert "cannot be placed: memory exhausted on 1 node(s)" in error.evalue, error.evalue
    assert cluster.jobs("sandbox-magics-") == []
    assert cluster.running("sandbox-magics-") == []
