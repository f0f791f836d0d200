"""sandbox_magics: run notebook cells in pooled sandboxes, locally, on Nomad or on Modal.

``%load_ext sandbox_magics`` registers ``%%sandbox``/``%sandbox``; ``from sandbox_magics
import Client`` gives the same operations as a Python API, sync and await-able.
"""

from __future__ import annotations

import importlib
from typing import Any

from .exceptions import (
    AcquireTimeoutError,
    AgentAuthError,
    AgentRequestError,
    BudgetError,
    ClosedError,
    KernelError,
    KernelInterruptedError,
    ProfileError,
    RemoteError,
    RunFailedError,
    SandboxError,
    SandboxLostError,
    SandboxStartError,
    SweepError,
    SweepFailedError,
    UnknownProfileError,
    UnknownRunError,
    UnknownSandboxError,
    VariableError,
    WaitTimeoutError,
)

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeoutError", "AgentAuthError", "AgentRequestError", "BudgetError", "Client",
    "ClosedError", "KernelError", "KernelInterruptedError", "RemoteError", "VariableError",
    "Profile", "ProfileError", "Run", "RunFailedError", "RunSpec", "RunState",
    "SandboxError", "SandboxLostError", "SandboxStartError", "Sweep", "SweepError",
    "SweepFailedError", "UnknownProfileError",
    "UnknownRunError", "UnknownSandboxError", "WaitTimeoutError", "load_profiles", "load_ipython_extension", "unload_ipython_extension",
]

_LAZY = {"Client": ".kernel", "Profile": ".profiles", "load_profiles": ".profiles",
         "Run": ".runs", "RunSpec": ".runs", "RunState": ".runs", "Sweep": ".sweeps"}


def __getattr__(name: str) -> Any:
    """Import the kernel side on first use, so ``python -m sandbox_magics.agent`` (which
    ships into sandboxes) never loads pandas, IPython or the pool."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics; the manager and its loop start on first use."""
    from .magics import SandboxMagics
    from .runs import Run
    from .sweeps import Sweep
    magics = SandboxMagics(shell=ipython)
    ipython.register_magics(magics)
    ipython.configurables.append(magics)
    ipython.display_formatter.ipython_display_formatter.for_type(Run, magics.display_run)
    ipython.display_formatter.ipython_display_formatter.for_type(Sweep, magics.display_sweep)
    from .widgets._kernel_status import keep_busy_while_shells_run
    from .widgets.lab import LabBridge
    keep_busy_while_shells_run()  # the panels' clicks on subshells must not make it look idle
    magics.lab = LabBridge.register(magics)  # the JupyterLab sidebar's comm; None outside a kernel


def unload_ipython_extension(ipython: Any) -> None:
    """Stop every sandbox of this kernel and remove the magics."""
    from .magics import SandboxMagics
    from .runs import Run
    from .sweeps import Sweep
    for magics in list(ipython.magics_manager.registry.values()):
        if isinstance(magics, SandboxMagics):
            if getattr(magics, "lab", None) is not None:
                magics.lab.close()
            magics.close()
    ipython.display_formatter.ipython_display_formatter.pop(Run, None)
    ipython.display_formatter.ipython_display_formatter.pop(Sweep, None)
    ipython.magics_manager.registry.pop("SandboxMagics", None)
    ipython.magics_manager.magics["line"].pop("sandbox", None)
    ipython.magics_manager.magics["cell"].pop("sandbox", None)
