"""Argument groups shared by the magics, as IPython's ``script_args`` and ipyparallel's
``exec_args``: each a decorator stacking `magic_arguments.argument` calls."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

F = TypeVar("F", bound=Callable[..., Any])


def run_args(f: F) -> F:
    """Where and how a cell runs: profile, limits, environment, session, errors."""
    decorators = [
        argument("interpreter", nargs="?", default="bash",
                 help="program that reads the cell on stdin in the sandbox (bash, sh, python, ...)"),
        argument("--profile", "-p", default="default",
                 help="the pool to run in (see %%sandbox profiles); default: default"),
        argument("--timeout", type=_positive_seconds, default=None,
                 help="seconds after which the run's process group is killed"),
        argument("--env", action="append", default=[], metavar="K=V",
                 help="set an environment variable for this run (repeatable)"),
        argument("--session", default=None, metavar="NAME",
                 help="a sticky slot: later cells with the same NAME share its workspace"),
        argument("--raise-error", action="store_true", dest="raise_error", default=None,
                 help="raise an error if the run fails (the default, see SandboxMagics.raise_error)"),
        argument("--no-raise-error", action="store_false", dest="raise_error",
                 help="do not raise an error if the run exits non-zero, times out or is lost"),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout takes a number of seconds, got {text!r}.") from None
    if not value > 0:
        raise UsageError(f"--timeout must be more than 0 seconds, got {text!r}.")
    return value


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; a pair without ``=`` or with a bad name is a UsageError."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--env takes NAME=VALUE with NAME a variable name, got {pair!r}.")
        env[key] = value
    return env
