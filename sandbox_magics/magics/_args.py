"""Argument groups shared by the magics, as IPython's ``script_args`` and ipyparallel's
``exec_args``: each a decorator stacking `magic_arguments.argument` calls."""

from __future__ import annotations

import keyword
import re
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ..backends.base import in_workspace

F = TypeVar("F", bound=Callable[..., Any])

_SPLIT_ERRORS = {"No closing quotation": "a quote is not closed",
                 "No escaped character": "it ends with a backslash that escapes nothing"}


def split_line(line: str) -> list[str]:
    """The words of a magic line, split as a POSIX shell splits them (`shlex.split`).

    Quotes group words and are removed, a backslash escapes the next character and ``#`` is
    an ordinary character. IPython has already expanded ``$var`` and ``{expr}`` in ``line``,
    so unbalanced quoting is a `UsageError` of one sentence that does not quote the line
    (``--env "TOKEN=$secret`` would show the secret).
    """
    try:
        return shlex.split(line)
    except ValueError as exc:
        reason = _SPLIT_ERRORS.get(str(exc), str(exc))
        raise UsageError("Cannot split the line into words (it is not shown: $var and {expr} "
                         f"may have put a secret in it): {reason}; check the quotes.") from None


def run_args(f: F) -> F:
    """Where and how a cell runs: profile, limits, environment, session, output, errors."""
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
        argument("--bg", action="store_true",
                 help="return at once with a Run handle; the cell shows the run's live log"),
        argument("--out", type=_variable("--out"), default=None, metavar="VAR",
                 help="store the run's stdout in VAR instead of printing it "
                      "(with --bg: a RunStream, its text so far)"),
        argument("--err", type=_variable("--err"), default=None, metavar="VAR",
                 help="store the run's stderr in VAR instead of printing it "
                      "(with --bg: a RunStream, its text so far)"),
        argument("--name", default=None, metavar="RUN",
                 help="a name for the run (%%sandbox logs RUN, artifacts RUN, cancel RUN)"),
        argument("--upload", action="append", default=[], metavar="LOCAL[:REMOTE]",
                 help="copy a local file or folder into the workspace first (repeatable)"),
        argument("--download", action="append", default=[], metavar="REMOTE[:LOCAL]",
                 help="copy a workspace file here after the run (repeatable)"),
        argument("--raise-error", action="store_true", dest="raise_error", default=None,
                 help="raise an error if the run fails (the default, see SandboxMagics.raise_error)"),
        argument("--no-raise-error", action="store_false", dest="raise_error",
                 help="do not raise an error if the run exits non-zero, times out or is lost"),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def kernel_args(f: F) -> F:
    """A cell in a kernel session's live Python kernel, and the variables it moves."""
    decorators = [
        argument("--kernel", action="store_true",
                 help="run the cell in the live Python kernel of --session (default: the "
                      "profile's 'default' session): variables persist across cells"),
        argument("--push", type=names("--push"), default=(), metavar="A,B",
                 help="with --kernel: send these notebook variables into the kernel first"),
        argument("--pull", type=names("--pull"), default=(), metavar="X,Y",
                 help="with --kernel: bind these kernel variables in the notebook after"),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def names(flag: str) -> Callable[[str], tuple[str, ...]]:
    """The argparse type of ``flag``: comma-separated Python names."""
    check = _variable(flag)

    def split(text: str) -> tuple[str, ...]:
        return tuple(check(name.strip()) for name in text.split(",") if name.strip())
    return split


def sweep_args(f: F) -> F:
    """A sweep: the cell run once per point of a parameter grid."""
    decorators = [
        argument("--map", action="append", default=[], metavar="NAME=VALUES",
                 help="sweep NAME over VALUES (a,b,c or an inclusive integer range A..B); "
                      "several --map make a grid of every combination (repeatable)"),
        argument("--zip", action="store_true",
                 help="pair the --map lists (the i-th values together) instead of combining them"),
        argument("--map-from", default=None, metavar="VAR",
                 help="one item per row of VAR, a list of dicts or a DataFrame"),
        argument("--retries", type=_count("--retries", 0), default=0, metavar="N",
                 help="run an item whose command failed again, up to N times"),
        argument("--fail-fast", action="store_true",
                 help="cancel the rest of the sweep at the first item that fails for good"),
        argument("--max-parallel", type=_count("--max-parallel", 1), default=None, metavar="K",
                 help="at most K items in flight"),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def _count(flag: str, least: int) -> Callable[[str], int]:
    """The argparse type of ``flag``: a whole number of at least ``least``."""
    def check(text: str) -> int:
        if not text.strip().isdigit() or int(text) < least:
            raise UsageError(f"{flag} takes a whole number of at least {least}, got {text!r}.")
        return int(text)
    return check


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout takes a number of seconds, got {text!r}.") from None
    if not value > 0:
        raise UsageError(f"--timeout must be more than 0 seconds, got {text!r}.")
    return value


def _variable(flag: str) -> Callable[[str], str]:
    """The argparse type of ``flag``: a name Python can bind in the user's namespace."""
    def check(text: str) -> str:
        if not text.isidentifier() or keyword.iskeyword(text):
            raise UsageError(f"{flag} takes a Python variable name, got {text!r}.")
        return text
    return check


def parse_uploads(specs: list[str]) -> list[tuple[str, str]]:
    """``LOCAL[:REMOTE]`` pairs; LOCAL must exist, REMOTE defaults to its name."""
    pairs = []
    for spec in specs:
        local, _, remote = spec.partition(":")
        path = _local("--upload", spec, local)
        if not path.exists():
            raise UsageError(f"--upload {spec}: no file or folder {local!r} here ({Path.cwd()}).")
        pairs.append((str(path), _relative("--upload", spec, remote or path.name)))
    return pairs


def parse_downloads(specs: list[str]) -> list[tuple[str, str]]:
    """``REMOTE[:LOCAL]`` pairs; LOCAL defaults to REMOTE's name in the current folder."""
    pairs = []
    for spec in specs:
        remote, _, local = spec.partition(":")
        remote = _relative("--download", spec, remote)
        pairs.append((remote, str(_local("--download", spec, local or PurePosixPath(remote).name))))
    return pairs


def _local(flag: str, spec: str, path: str) -> Path:
    """``path`` on this machine with ``~`` expanded; an unknown ``~user`` is a UsageError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise UsageError(f"{flag} {spec}: cannot expand {path!r}: "
                         f"{path.split('/')[0]!r} names no home folder here.") from None


def _relative(flag: str, spec: str, remote: str) -> str:
    if not in_workspace(remote):
        raise UsageError(f"{flag} {spec}: the sandbox path must be relative to the workspace "
                         f"and stay inside it, got {remote!r}.")
    return remote


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; a pair without ``=`` or with a bad name is a UsageError
    that names the name and never shows the value (the notebook keeps the error)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError("--env takes NAME=VALUE, got a word without '=' (not shown: it may "
                             "be a secret); write NAME=VALUE.")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UsageError(f"--env takes NAME=VALUE with NAME a variable name (letters, digits "
                             f"and _, not starting with a digit), got the name {key!r} (the "
                             "value is not shown).")
        env[key] = value
    return env
