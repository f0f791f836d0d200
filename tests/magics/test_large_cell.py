"""A cell far larger than any request limit runs whole, on local and on Nomad: the agent
gets its body as a stream after the exec's JSON, never as one JSON string."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator

import pytest

from tests.kernel_driver import Kernel
from tests.magics.test_nomad_cell import nomad_kernel
from tests.nomad_standin.cluster import Cluster, cluster  # noqa: F401

CELL_MB = 20  # more than the 16 MiB any request was once limited to


@pytest.fixture(scope="module")
def heredoc() -> tuple[str, str]:
    """About `CELL_MB` MB of base64 lines, and the hex SHA-256 of them."""
    data = base64.encodebytes(os.urandom(CELL_MB * 10**6 * 3 // 4)).decode()
    return data, hashlib.sha256(data.encode()).hexdigest()


@pytest.fixture(scope="module")
def nomad(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """A kernel on ``cluster`` whose sandboxes hold what bash needs for such a heredoc: bash
    keeps the document in memory several times over (~250 MB for 50 MB), and the stand-in,
    which sums the RSS of a task's processes, counts those pages again in the child bash
    forks for ``sha256sum`` until it execs."""
    k = nomad_kernel(cluster, tmp_path_factory.mktemp("nomad-large"), f"big{os.getpid()}-",
                     memory_mb=1500)
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


def _run_heredoc(kernel: Kernel, flags: str, heredoc: tuple[str, str]) -> None:
    data, digest = heredoc
    reply = kernel.execute(f"%%sandbox bash {flags}\nsha256sum <<'EOF'\n{data}EOF\n", timeout=300)
    assert reply.status == "ok", reply.error
    assert reply.stdout == f"{digest}  -\n"


def test_a_20_mb_heredoc_cell_runs_whole_on_local(kernel: Kernel, heredoc: tuple[str, str]) -> None:
    _run_heredoc(kernel, "", heredoc)


def test_a_20_mb_heredoc_cell_runs_whole_on_nomad(nomad: Kernel, heredoc: tuple[str, str]) -> None:
    _run_heredoc(nomad, "--profile cluster", heredoc)
