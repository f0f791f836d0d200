"""The public surface is exactly ``__all__``, and the agent stays free of the kernel side."""

from __future__ import annotations

import subprocess
import sys

import sandbox_magics

EXPECTED = {
    "AcquireTimeoutError", "AgentAuthError", "AgentRequestError", "Client", "ClosedError",
    "Profile", "ProfileError", "Run", "RunFailedError", "RunSpec", "RunState", "SandboxError",
    "SandboxLostError", "SandboxStartError", "Sweep", "SweepError", "SweepFailedError",
    "BudgetError", "KernelError", "KernelInterruptedError", "RemoteError", "VariableError",
    "UnknownProfileError", "UnknownRunError",
    "UnknownSandboxError", "WaitTimeoutError", "load_profiles", "load_ipython_extension",
    "unload_ipython_extension",
}


def test_all_lists_exactly_the_public_names_and_each_resolves() -> None:
    assert set(sandbox_magics.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(sandbox_magics, name) is not None


def test_every_error_derives_from_sandbox_error() -> None:
    for name in EXPECTED:
        obj = getattr(sandbox_magics, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sandbox_magics.SandboxError)


def test_agent_imports_neither_pandas_nor_ipython_nor_the_pool() -> None:
    code = ("import sys, sandbox_magics.agent.__main__, sandbox_magics.agent.app\n"
            "print(sorted(m for m in ('pandas', 'IPython', 'ipywidgets', 'sandbox_magics.pool',"
            " 'sandbox_magics.kernel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
