"""Every public entry point fails with a `SandboxError` of one sentence: an unknown run,
sandbox or profile, a wait that ends first, a scale that cannot be, a closed client; through
the Python API on a real local agent and through the magics in a real kernel."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sandbox_magics
from sandbox_magics import (
    Client, ClosedError, ProfileError, RunFailedError, SandboxError, UnknownProfileError,
    UnknownRunError, UnknownSandboxError, WaitTimeoutError,
)
from sandbox_magics.kernel.loop import LoopThread
from tests.kernel_driver import Kernel

PROFILES = """
[profiles.default]
slots_per_sandbox = 1
max_sandboxes = 1

[profiles.default.local]
workspace_base = "{ws}"
"""


def assert_one_sentence(text: str) -> None:
    """One line, one sentence, not wrapped in quotes as a `KeyError`'s ``str()`` would be."""
    assert text and text[0] not in "'\"" and text.endswith("."), text
    assert "\n" not in text and not re.search(r"[.!?] [A-Z]", text), text


def held_run(client: Client, flag: Path) -> sandbox_magics.Run:
    """A run that goes on until ``flag`` exists."""
    return client.submit(f"while [ ! -e {flag} ]; do sleep 0.02; done", raise_error=False)


def wait_on_held(client: Client, flag: Path) -> None:
    run = held_run(client, flag)
    try:
        run.wait(timeout=0.01)
    finally:
        flag.touch()
        run.join(60)


def closed(call: Callable[[Client], Any]) -> Callable[[Client, Path], Any]:
    def on_a_closed_client(client: Client, _: Path) -> Any:
        client.shutdown()
        return call(client)
    return on_a_closed_client


def manager_that_does_not_answer(*_: Any) -> None:
    loop = LoopThread()
    try:
        loop.run(asyncio.Event().wait(), 0.01)
    finally:
        loop.stop()


CLIENT_CASES: dict[str, tuple[Callable[..., Any], type[SandboxError], type[Exception]]] = {
    "get_run of an unknown run": (lambda c, _: c.get_run("NOPE"), UnknownRunError, KeyError),
    "cancel of an unknown run": (lambda c, _: c.cancel("NOPE"), UnknownRunError, KeyError),
    "acancel of an unknown run": (lambda c, _: asyncio.run(c.acancel("NOPE")),
                                  UnknownRunError, KeyError),
    "sandbox_log of an unknown sandbox": (lambda c, _: c.sandbox_log("NOPE"),
                                          UnknownSandboxError, KeyError),
    "run in an unknown profile": (lambda c, _: c.run("true", profile="nope"),
                                  UnknownProfileError, ValueError),
    "submit to an unknown profile": (lambda c, _: c.submit("true", profile="nope"),
                                     UnknownProfileError, ValueError),
    "scale of an unknown profile": (lambda c, _: c.scale("nope", 1), UnknownProfileError,
                                    ValueError),
    "scale to a word": (lambda c, _: c.scale("default", "many"), ProfileError, ValueError),
    "scale to a fraction": (lambda c, _: c.scale("default", 0.5), ProfileError, ValueError),
    "scale to True": (lambda c, _: c.scale("default", True), ProfileError, ValueError),
    "ascale to a word": (lambda c, _: asyncio.run(c.ascale("default", "many")),
                         ProfileError, ValueError),
    "scale above max_sandboxes": (lambda c, _: c.scale("default", 2), ProfileError, ValueError),
    "run that fails": (lambda c, _: c.run("exit 3"), RunFailedError, SandboxError),
    "wait that ends first": (lambda c, tmp: wait_on_held(c, tmp / "go"),
                             WaitTimeoutError, TimeoutError),
    "manager that does not answer": (manager_that_does_not_answer, WaitTimeoutError,
                                     TimeoutError),
    "end_session on a closed client": (closed(lambda c: c.end_session("s")), ClosedError,
                                       SandboxError),
    "submit on a closed client": (closed(lambda c: c.submit("true")), ClosedError,
                                  SandboxError),
}


@pytest.mark.parametrize("case", CLIENT_CASES)
def test_each_client_entry_point_fails_with_a_sandbox_error_of_one_sentence(
        client: Client, tmp_path: Path, case: str) -> None:
    call, error, builtin = CLIENT_CASES[case]
    with pytest.raises(error) as caught:
        call(client, tmp_path)
    assert isinstance(caught.value, builtin)
    assert_one_sentence(str(caught.value))
    assert caught.value._render_traceback_() == [f"{error.__name__}: {caught.value}"]


def test_scale_takes_auto_as_the_magic_does(client: Client) -> None:
    client.scale("default", 1)
    assert client.manager.pools["default"].target == 1
    client.scale("default", "auto")
    assert client.manager.pools["default"].target is None
    client.scale("default", 0)
    asyncio.run(client.ascale("default", "auto"))
    assert client.manager.pools["default"].target is None


MAGIC_CASES = {
    "%sandbox logs NOPE": UnknownRunError,
    "%sandbox cancel NOPE": UnknownRunError,
    "%sandbox artifacts NOPE": UnknownRunError,
    "%sandbox wait NOPE": UnknownRunError,
    "%sandbox sandbox-log NOPE": UnknownSandboxError,
    "%sandbox scale default 99": ProfileError,
    "%sandbox scale nope 1": UnknownProfileError,
    "%%sandbox bash --profile nope\ntrue": UnknownProfileError,
}


@pytest.mark.parametrize("cell", MAGIC_CASES)
def test_each_magic_fails_with_a_sandbox_error_shown_as_one_line(
        kernel: Kernel, cell: str) -> None:
    reply = kernel.execute(cell)
    assert_shown_as_one_line(reply.error, MAGIC_CASES[cell])


def assert_shown_as_one_line(error: dict[str, Any] | None, expected: type[SandboxError]) -> None:
    assert error is not None and error["ename"] == expected.__name__, error
    assert_one_sentence(error["evalue"])
    assert error["traceback"] == [f"{expected.__name__}: {error['evalue']}"]


def test_a_wait_that_ends_first_is_a_wait_timeout_error_in_the_magic_and_the_stream(
        kernel: Kernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    started = kernel.execute(f"%%sandbox bash --bg --name held --out held_out\n"
                             f"while [ ! -e {go} ]; do sleep 0.02; done")
    assert started.status == "ok", started.error
    try:
        assert_shown_as_one_line(kernel.execute("%sandbox wait held --timeout 0.01").error,
                                 WaitTimeoutError)
        assert_shown_as_one_line(kernel.execute("held_out.read(timeout=0.01)").error,
                                 WaitTimeoutError)
    finally:
        go.touch()
    assert kernel.execute("%sandbox wait held --timeout 60").status == "ok"
