"""The JSON of the agent's routes, read and checked before anything runs (stdlib only).

Each route that takes JSON reads it with one function here (`exec_body` for the exec's
first line, `signal_body` for the signal's body): from the raw bytes to a typed record, or
`BadBody` with one sentence that names the field, shows what was sent and says what it
should be. Fields a route does not know are ignored, but for an exec's ``stdin``: the
run's input is the rest of the exec body, after the JSON line, never a JSON string.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass, field
from typing import Any

# Signals sent to stop a run (a run given one through the signal route ends "cancelled");
# the others pause, resume or notify it.
STOPPING = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGHUP,
                      signal.SIGQUIT})
SIGNALS = STOPPING | {signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGSTOP}
_SHOWN = 60
_FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
MAX_FILES_BYTES = 1024 * 1024


class BadBody(ValueError):
    """Raised when a request body is not what its route takes."""


@dataclass(frozen=True)
class ExecBody:
    """``POST /slots/{slot}/exec``'s JSON line: run ``argv`` with ``env`` added to the
    agent's own, the rest of the body as its stdin; a ``detach``-ed run goes on when its
    client goes away; past ``timeout`` seconds the agent stops the run (SIGINT, SIGTERM,
    SIGKILL), whether a client watches or not. ``files`` (name → text) are written into
    the workspace before the run starts and removed when it ends. An ``interactive`` run's
    stdin is a pipe that stays open: the stdin route writes to it while the run goes."""

    run_id: str
    argv: list[str]
    env: dict[str, str]
    detach: bool = False
    timeout: float | None = None
    files: dict[str, str] = field(default_factory=dict)
    interactive: bool = False


@dataclass(frozen=True)
class SignalBody:
    """``POST /slots/{slot}/signal``: deliver ``signal`` to ``run_id``'s process group."""

    run_id: str
    signal: signal.Signals


def exec_body(raw: bytes) -> ExecBody:
    body = _object(raw, "the exec's first line")
    run_id = _run_id(body)
    argv = body.get("argv")
    if not isinstance(argv, list) or not argv:
        raise BadBody(f"argv must be a non-empty list of strings, got: {_shown(argv)}")
    env = {} if body.get("env") is None else body["env"]
    if not isinstance(env, dict):
        raise BadBody(f"env must be an object of strings, got: {_shown(env)}")
    for name in env:
        if not name or "=" in name:
            raise BadBody(f"env names must be non-empty and without '=', got: {_shown(name)}")
    if "stdin" in body:
        raise BadBody("stdin is the rest of the exec body, after the JSON line; "
                      "send it there instead of as a JSON field")
    detach = body.get("detach", False)
    if not isinstance(detach, bool):
        raise BadBody(f"detach must be true or false, got: {_shown(detach)}")
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout < float("inf")):
        raise BadBody(f"timeout must be a positive number of seconds or null, got: {_shown(timeout)}")
    interactive = body.get("interactive", False)
    if not isinstance(interactive, bool):
        raise BadBody(f"interactive must be true or false, got: {_shown(interactive)}")
    files = {} if body.get("files") is None else body["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BadBody(f"files must be an object of file names to text, got: {_shown(files)}")
    for name in files:
        if not _FILE_NAME.fullmatch(name) or name in (".", ".."):
            raise BadBody(f"files are named by a plain file name (letters, digits, . _ -), "
                          f"got: {_shown(name)}")
    if sum(len(v.encode()) for v in files.values()) > MAX_FILES_BYTES:
        raise BadBody(f"files hold at most {MAX_FILES_BYTES // 1024} KiB in all; "
                      "upload larger files instead")
    return ExecBody(
        run_id=run_id,
        argv=[_os_text(arg, "argv items") for arg in argv],
        env={_os_text(name, "env names"): _os_text(value, f"the value of env {name!r}",
                                                    shown=False)
             for name, value in env.items()},
        detach=detach,
        timeout=None if timeout is None else float(timeout),
        files=dict(files),
        interactive=interactive,
    )


def signal_body(raw: bytes) -> SignalBody:
    body = _object(raw)
    run_id = _run_id(body)
    number = body.get("signal")
    if isinstance(number, bool) or not isinstance(number, int) or number not in SIGNALS:
        names = ", ".join(f"{sig.name} ({int(sig)})" for sig in sorted(SIGNALS))
        raise BadBody(f"signal must be one of {names}; got: {_shown(number)}")
    return SignalBody(run_id=run_id, signal=signal.Signals(number))


def _object(raw: bytes, what: str = "the request body") -> dict[str, Any]:
    """``raw`` as a JSON object; ``what`` names it in a refusal."""
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        raise BadBody(f"{what} is not valid UTF-8 JSON; send a JSON object on one line") from None
    if not isinstance(body, dict):
        raise BadBody(f"{what} must be a JSON object, got: {_shown(body)}")
    return body


def _run_id(body: dict[str, Any]) -> str:
    run_id = body.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise BadBody(f"run_id must be a non-empty string, got: {_shown(run_id)}")
    return run_id


def _os_text(value: Any, field: str, shown: bool = True) -> str:
    """A string a process can be given: valid Unicode without NUL. With ``shown`` False the
    refusal never quotes the value (an environment value may be a secret)."""
    got = f", got: {_shown(value)}" if shown else " (the value is not shown)"
    if not isinstance(value, str):
        raise BadBody(f"{field} must be text{got}")
    if "\x00" in value:
        raise BadBody(f"{field} must not contain NUL characters{got}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadBody(f"{field} must be valid Unicode text{got}") from None
    return value


def _shown(value: Any) -> str:
    """``value`` as JSON for a message, cut short if long."""
    try:
        text = json.dumps(value)
    except RecursionError:
        text = "a deeply nested value"
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
