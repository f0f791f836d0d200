"""Each engine's SDK comes with an extra (`sandbox_magics[modal]`, `[nomad]`): a profile on
an engine whose package is missing is one sentence naming the extra, and the local backend
needs neither package."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Runs with the engine's SDK made unimportable, as in an install without its extra.
SCRIPT = """
import sys
for module in {blocked!r}:
    sys.modules[module] = None
from sandbox_magics.backends import settings_of
from sandbox_magics.exceptions import SandboxError
from sandbox_magics.profiles import Profile
try:
    settings_of(Profile(name="p", backend={engine!r}))
except SandboxError as exc:
    print(type(exc).__name__ + ": " + str(exc))
else:
    print("accepted")
"""


def without(blocked: tuple[str, ...], engine: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(
        SCRIPT.format(blocked=blocked, engine=engine))], capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.parametrize(("engine", "module", "package"), [
    ("modal", "modal", "modal"), ("nomad", "nomad", "python-nomad")])
def test_a_profile_on_an_engine_without_its_package_names_the_extra(
        engine: str, module: str, package: str) -> None:
    assert without((module,), engine) == (
        f"SandboxStartError: The {engine} backend needs the {package} package, which is not "
        f"installed: pip install 'sandbox_magics[{engine}]'.")


def test_the_local_backend_needs_neither_engine_package() -> None:
    assert without(("modal", "nomad"), "local") == "accepted"
