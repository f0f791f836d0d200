"""The helpers that lean on ipykernel internals (widgets/_comm.py, _kernel_status.py) do
nothing, and break nothing, when a kernel lacks those internals: controls then act when the
cell ends, as with subshells turned off, and the kernel's status is left as ipykernel
publishes it."""

from __future__ import annotations

import contextvars
from typing import Any

import pytest

from sandbox_magics.widgets import _comm, _kernel_status


class BareKernel:
    """A kernel object with none of the private attributes the helpers look for."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []


class BareComm:
    """A comm with no per-subshell reply routing."""


class Panel:
    def __init__(self) -> None:
        self.comm = BareComm()
        self.keys = ["children"]
        self.children: tuple[Any, ...] = ()


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> BareKernel:
    kernel = BareKernel()
    monkeypatch.setattr(_comm, "_kernel", lambda: kernel)
    monkeypatch.setattr(_kernel_status, "_kernel", lambda: kernel)
    return kernel


def test_detach_and_unpin_do_nothing_without_ipykernels_routing(bare: BareKernel) -> None:
    context = contextvars.copy_context()
    context.run(_comm.detach)
    panel = Panel()
    _comm.unpin(panel)
    assert vars(panel.comm) == {} and not hasattr(bare, "_shell_parent")


def test_the_status_publisher_is_left_alone_without_ipykernels_publisher(bare: BareKernel) -> None:
    assert _kernel_status.keep_busy_while_shells_run() is False
    assert not hasattr(bare, "_publish_status")


def test_outside_a_kernel_nothing_is_installed() -> None:
    assert _kernel_status.keep_busy_while_shells_run() is False
