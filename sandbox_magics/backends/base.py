"""The backend protocol: the small surface every engine (local, Nomad, Modal) implements.

The unit is a *sandbox*: something that can run a command in one of its K slot workspaces,
stream the output as it is produced, signal it, and move files in and out. It does not
assume an agent or an HTTP address (Modal has neither). Backends do I/O; the core decides
policy (how many, when, which slot, when to escalate a cancel, when a run timed out).
Sandboxes are safe to use from one event loop only.

``await sandbox.exec(slot, request)`` returns a `Process`, shaped like
`asyncio.subprocess.Process` and Modal's ``ContainerProcess``: iterate it for `Started`
once the command runs, any number of `Output` chunks, then exactly one `Exited` (if the
sandbox dies mid-run, iteration raises `SandboxLostError`); ``signal(sig)`` delivers one
signal to the command's process group; ``aclose()`` lets go of the stream. Whoever calls
``exec`` calls ``aclose``.

Every sandbox carries ``tags`` (see `sandbox_magics.identity`): who owns it, for which
profile, and when its owner last said it was alive, so that ``discover`` can find the
sandboxes a restarted kernel left behind.
"""

from __future__ import annotations

import abc
import contextvars
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, Union

from ..exceptions import SandboxError
from ..profiles import Profile


STAGE: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "sandbox_magics_stage", default=None)
"""Where a backend's ``create`` says what a start waits for (set by the pool's start task)."""


def report_stage(stage: str) -> None:
    """Tell whoever starts this sandbox what the start now waits for ("waiting for
    capacity: memory exhausted on 1 node(s)", "pulling the image")."""
    if (listener := STAGE.get()) is not None:
        listener(stage)


@dataclass(frozen=True)
class ExecRequest:
    """A command for one slot: ``argv`` run in the slot's workspace, ``stdin`` fed to it.
    ``detach`` asks that the command go on when its `Process` stream breaks off or is
    closed early, for a later client to follow (the agent backends keep it and its
    output; they stop a command that is not detached then). Past ``timeout`` seconds the
    sandbox itself stops the command, whether a client watches or not (its `Exited`
    then gives the reason "timeout"). ``files`` (plain file name → text, small) are in the
    workspace when the command starts and gone when it ends. An ``interactive`` command's
    stdin stays open (``stdin`` is not sent): `Process.write` feeds it while it runs."""

    run_id: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    stdin: str | None = None
    detach: bool = False
    timeout: float | None = None
    files: Mapping[str, str] = field(default_factory=dict, repr=False)
    interactive: bool = False


@dataclass(frozen=True)
class Started:
    """The process is running; ``pgid`` is its process group."""

    pgid: int | None


@dataclass(frozen=True)
class Output:
    """A chunk of output, exactly as the process wrote it."""

    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class Exited:
    """How the process ended. ``reason`` is "not-found" when the program could not be
    started (``error`` says why); ``signal`` is set when a signal ended it.

    ``workspace_empty`` is True if the slot's workspace held nothing when the run ended
    (then there are no artifacts to collect and nothing to reset), None if unknown.
    """

    exit_code: int | None
    signal: int | None = None
    reason: str | None = None
    error: str | None = None
    workspace_empty: bool | None = None


ExecEvent = Union[Started, Output, Exited]


@dataclass(frozen=True)
class KeptRun:
    """A run a sandbox keeps for a later client: one exec'd with ``detach`` that is still
    ``running``, or that ended and whose end no client has read yet."""

    run_id: str
    slot: int
    running: bool


@dataclass(frozen=True)
class Health:
    """A sandbox's answer to a health check: ``ok``, or a sentence saying what is wrong
    ("the agent process exited with code -9", "OOM killed", "image pull failed")."""

    ok: bool
    reason: str = ""


class Process(abc.ABC):
    """A command running in a slot, as `asyncio.subprocess.Process` is one on this machine."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[ExecEvent]:
        """Yield Started, Output..., Exited; raise `SandboxLostError` if the sandbox dies."""

    @abc.abstractmethod
    async def signal(self, sig: int) -> bool:
        """Send ``sig`` to the command's process group; False if it had already ended.

        Raises:
            SandboxError: the sandbox could not be reached to deliver it.
        """

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the stdin of a command exec'd ``interactive``, in order.

        Raises:
            SandboxError: the command takes no more input (not interactive, or ended).
            SandboxLostError: the sandbox could not be reached.
        """
        raise SandboxError("This command takes no input while it runs: it was not started "
                           "interactive.")

    async def kill(self) -> bool:
        """Send SIGKILL, as `asyncio.subprocess.Process.kill` does."""
        return await self.signal(signal.SIGKILL)

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop reading and release the stream; safe to call twice."""


def in_workspace(path: str) -> bool:
    """Whether ``path`` names a place inside a slot's workspace: relative, no ``..``."""
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    mtime: float


class Sandbox(abc.ABC):
    """One running sandbox with ``slots`` workspaces, labelled with ``tags``."""

    id: str
    slots: int
    tags: Mapping[str, str]

    @abc.abstractmethod
    async def exec(self, slot: int, request: ExecRequest) -> Process:
        """Start ``request`` in ``slot`` and return its `Process`.

        Raises:
            SandboxError: the sandbox refused the request (busy slot, bad argv).
            SandboxLostError: the sandbox could not be reached.
        """

    @abc.abstractmethod
    async def list_files(self, slot: int) -> list[FileInfo]:
        """Every file in the slot's workspace."""

    @abc.abstractmethod
    async def upload(self, slot: int, local: Path, remote: str) -> None:
        """Copy the local file ``local`` to ``remote`` (relative to the workspace)."""

    @abc.abstractmethod
    async def download(self, slot: int, remote: str, local: Path) -> None:
        """Copy ``remote`` (relative to the workspace) to the local file ``local``."""

    @abc.abstractmethod
    async def reset(self, slot: int) -> None:
        """Empty the slot's workspace."""

    @abc.abstractmethod
    async def health(self) -> Health:
        """Whether the sandbox serves, and if not why; never raises, bounded in time."""

    async def log(self) -> str:
        """The engine's own log of this sandbox (what its agent or container printed), also
        after it ended where the engine keeps it: for the status of a dead sandbox. Empty
        where the engine keeps none.

        Raises:
            SandboxError: the engine could not be asked.
        """
        return ""

    async def kept_runs(self) -> list[KeptRun]:
        """The detached runs this sandbox keeps for a client (`KeptRun`); none by default.

        Raises:
            SandboxError: the sandbox could not be asked.
        """
        return []

    async def follow(self, slot: int, run_id: str) -> Process:
        """Follow ``run_id``, the detached run ``slot`` keeps, from its first byte of
        output: `Started` (if its process started), its output kept so far, then live,
        then `Exited`, as the `Process` an exec returns (``signal`` reaches it too).

        Raises:
            SandboxError: the slot keeps no such run, or the sandbox keeps no runs.
            SandboxLostError: the sandbox could not be reached.
        """
        raise SandboxError(f"Sandbox {self.id} keeps no run for a later client, so run "
                           f"{run_id} cannot be followed there.")

    async def heartbeat(self, tags: Mapping[str, str]) -> None:
        """Record ``tags`` (a fresh heartbeat) where the engine keeps them; by default the
        engine has no such place and the owner's liveness is seen another way."""

    @abc.abstractmethod
    async def terminate(self) -> None:
        """Stop the sandbox and everything running in it; safe to call twice."""

    def describe(self) -> dict[str, object]:
        """Non-secret facts for status views (address, pid, job id...)."""
        return {}


class Backend(abc.ABC):
    """Starts sandboxes on one engine, with one set of engine settings."""

    name: str

    @abc.abstractmethod
    async def create(self, profile: Profile, tags: Mapping[str, str]) -> Sandbox:
        """Start a sandbox for ``profile`` labelled with ``tags``; its ``id`` is the engine's.

        The pool bounds this with the profile's ``start_timeout`` and may cancel it (on
        shutdown too): a cancelled ``create`` must stop whatever it had started.

        Raises:
            SandboxStartError: with a readable reason.
        """

    async def discover(self, profile: Profile) -> list[Sandbox]:
        """Sandboxes of ``profile`` that carry our tags and are still running, whoever
        started them (the pool adopts, reaps or leaves each); none by default."""
        return []

    def notices(self, profile: Profile) -> list[str]:
        """Sentences a user should see when this backend serves ``profile``."""
        return []

    def preparation_timeout(self, profile: Profile) -> float:
        """Seconds preparing ``profile``'s image (a pull, a build) may add to a start on
        top of its ``start_timeout``: the engine bounds that itself. None by default."""
        return 0.0

    async def price_per_hour(self, profile: Profile) -> float | None:
        """Dollars one sandbox of ``profile`` costs an hour: the profile's
        ``price_per_hour``, else the engine's own rates where it has them; None if
        unknown (never a guess)."""
        return profile.price_per_hour

    async def aclose(self) -> None:
        """Release the backend's own resources (sessions, clients)."""
