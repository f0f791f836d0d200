"""A kernel running a blocking cell stays busy for Jupyter Server while its subshells and
control channel answer requests (an idle culler would otherwise shut it down mid-cell).

The state is folded from iopub as Jupyter Server folds it (``record_activity``): the last
status whose request type is tracked. JupyterLab's status bar uses the same rule.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.services.kernels.kernelmanager import MappingKernelManager

from tests.conftest import kernel_env
from tests.kernel_driver import Kernel

UNTRACKED = set(MappingKernelManager.untracked_message_types.make_dynamic_default())


def server_state(messages: list[tuple[float, dict[str, Any]]]) -> str:
    state = "starting"
    for _, msg in messages:
        if msg["msg_type"] == "status" and msg["parent_header"].get("msg_type") not in UNTRACKED:
            state = msg["content"]["execution_state"]
    return state


def control(k: Kernel, msg_type: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    msg = k.client.session.msg(msg_type, content or {})
    k.client.control_channel.send(msg)
    reply = k.client.get_control_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
    return reply


def idle_seen(k: Kernel, msg_id: str) -> bool:
    return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
               and m["parent_header"].get("msg_id") == msg_id for _, m in k.messages)


@pytest.fixture
def blocked(profiles_file: Path, tmp_path: Path) -> Iterator[tuple[Kernel, Path]]:
    """A kernel with the extension, running a blocking cell that waits on a FIFO."""
    k = Kernel(kernel_env(profiles_file, tmp_path / "ws"))
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    k.cell_id = k.client.execute(f"%%sandbox bash\necho started\ncat {gate}\necho released")
    assert k.drain_until(lambda: any(
        m["msg_type"] == "stream" and "started" in m["content"]["text"] for _, m in k.messages))
    yield k, gate
    k.shutdown()


def test_a_blocking_cell_stays_busy_while_a_subshell_and_the_control_channel_answer(
        blocked: tuple[Kernel, Path]) -> None:
    k, gate = blocked
    assert server_state(k.messages) == "busy"

    subshell = control(k, "create_subshell_request")["content"]["subshell_id"]
    comm = k.client.session.msg("comm_msg", {"comm_id": "no-such-comm", "data": {}})
    comm["header"]["subshell_id"] = subshell
    k.client.shell_channel.send(comm)
    assert k.drain_until(lambda: idle_seen(k, comm["header"]["msg_id"]))
    # A request whose statuses the server ignores: once its idle is in, so is all before it.
    marker = control(k, "kernel_info_request")
    assert k.drain_until(lambda: idle_seen(k, marker["parent_header"]["msg_id"]))
    assert server_state(k.messages) == "busy"

    gate.write_text("go\n")
    assert k.drain_until(lambda: idle_seen(k, k.cell_id), timeout=60)
    assert server_state(k.messages) == "idle"
