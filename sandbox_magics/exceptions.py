"""Errors raised by sandbox_magics; every message says what happened and what to do.

The tree (a builtin base in brackets, so ``except KeyError`` or ``except TimeoutError``
written for the builtin still catches ours)::

    SandboxError
    ├── ProfileError [ValueError]       a profiles file, profile or key is invalid, or a
    │   │                               scale target does not fit the profile
    │   └── UnknownProfileError         no profile has the name asked for
    ├── UnknownRunError [KeyError]      no run has the id or name asked for
    ├── UnknownSandboxError [KeyError]  no pool has a sandbox of the name asked for
    ├── SandboxStartError               a sandbox could not be started
    ├── SandboxLostError                a sandbox died or stopped answering mid-run
    ├── AgentAuthError                  the agent refused the token
    ├── AgentRequestError               the agent refused a request (bad path, busy slot, ...)
    │   └── SlotBusyError               the slot still runs a command
    ├── AcquireTimeoutError [TimeoutError]  no slot became free within the acquire timeout
    ├── WaitTimeoutError [TimeoutError]     a wait for a run or the manager ended first
    ├── ClosedError                     the client or pool has been shut down
    ├── BudgetError                     the kernel's or profile's budget is spent: no new
    │                                   sandbox starts
    ├── SweepError [ValueError]         a sweep's parameters make no grid (empty, malformed,
    │                                   too large); nothing ran
    ├── RunFailedError                  a run ended with a non-zero exit, a timeout or a cancel
    │   └── SweepFailedError            items of a sweep did not succeed (their parameters)
    ├── KernelError                     a kernel session could not start, or its kernel died
    │   ├── KernelInterruptedError      a cell was interrupted; the kernel keeps its state
    │   └── VariableError               a value could not be pushed or pulled (named)
    └── RemoteError                     a cell in a kernel session raised: its remote
                                        traceback, shown once

In IPython every error renders as its one-line message, not a traceback wall
(``_render_traceback_``, the hook ipyparallel's remote errors use too).
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every error this package raises on purpose."""

    def __str__(self) -> str:
        """The message as written (a `KeyError` base would wrap it in quotes)."""
        return Exception.__str__(self)

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class ProfileError(SandboxError, ValueError):
    """Raised when a profiles file, a profile or one of its keys is invalid."""


class UnknownProfileError(ProfileError):
    """Raised when a run or command names a profile that does not exist."""


class UnknownRunError(SandboxError, KeyError):
    """Raised when no run of this client has the id or name asked for."""


class UnknownSandboxError(SandboxError, KeyError):
    """Raised when no pool of this client has a sandbox of the name asked for."""


class SandboxStartError(SandboxError):
    """Raised when a backend cannot start a sandbox."""


class SandboxLostError(SandboxError):
    """Raised when a sandbox dies or stops answering while a run uses it."""


class AgentAuthError(SandboxError):
    """Raised when the sandbox agent refuses the bearer token."""


class AgentRequestError(SandboxError):
    """Raised when the sandbox agent refuses a request (path escape, busy slot, ...)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SlotBusyError(AgentRequestError):
    """Raised when a slot still runs a command (a run whose connection broke, until the
    agent notices and stops it)."""


class AcquireTimeoutError(SandboxError, TimeoutError):
    """Raised when no slot of a pool becomes free within the acquire timeout."""


class WaitTimeoutError(SandboxError, TimeoutError):
    """Raised when a wait for a run, or for the sandbox manager to answer, ends first."""


class ClosedError(SandboxError):
    """Raised when an operation is attempted on a client or pool that has been shut down."""


class RunFailedError(SandboxError):
    """Raised when a run exits non-zero, times out, is cancelled or loses its sandbox."""

    def __init__(self, message: str, run_id: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.exit_code = exit_code


class SweepError(SandboxError, ValueError):
    """Raised when a sweep's parameters cannot make a grid (the sentence says why)."""


class SweepFailedError(RunFailedError):
    """Raised by a sweep's wait when items did not succeed: the sentence lists their
    parameter sets."""


class BudgetError(SandboxError):
    """Raised for a run that waits for a sandbox when the budget is spent: the sentence
    says the budget and what it was spent on."""


class KernelError(SandboxError):
    """Raised when a kernel session's kernel could not start or died (the sentence says
    why and what to do)."""


class KernelInterruptedError(KernelError):
    """Raised for a kernel-session cell that was interrupted: the kernel keeps its state."""


class VariableError(KernelError):
    """Raised when values could not be pushed into or pulled out of a kernel session; the
    sentence names each one, and every other value was moved."""


class RemoteError(SandboxError):
    """Raised when a cell in a kernel session raised: ``ename`` and ``evalue`` as the
    sandbox's Python saw them; IPython shows the remote ``traceback`` once, as its own."""

    def __init__(self, ename: str, evalue: str, traceback: list[str]) -> None:
        super().__init__(f"{ename}: {evalue}" if evalue else ename)
        self.ename, self.evalue, self.traceback = ename, evalue, list(traceback)

    def _render_traceback_(self) -> list[str]:
        return self.traceback or [str(self)]
