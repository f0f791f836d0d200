"""Shared fixtures: real kernels with the extension and test profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel_driver import Kernel

TEST_PROFILES = """
[profiles.default]
slots_per_sandbox = 4
max_sandboxes = 2
idle_timeout = 30

[profiles.tiny]
slots_per_sandbox = 1
max_sandboxes = 1
acquire_timeout = 60
artifact_limit_mb = 0.01

[profiles.priced]
slots_per_sandbox = 1
max_sandboxes = 1
idle_timeout = 60
price_per_hour = 3.6
"""


@pytest.fixture(scope="session", autouse=True)
def private_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The state files of every client and kernel of the test run (secrets, run ledgers)
    go to a folder of the run, not the user's home."""
    folder = tmp_path_factory.mktemp("state")
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_STATE_HOME", str(folder))
    yield folder
    patch.undo()


@pytest.fixture
def profiles_file(tmp_path: Path) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(TEST_PROFILES)
    return path


def kernel_env(profiles_file: Path, workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_MAGICS")}
    env["SANDBOX_MAGICS_PROFILES"] = str(profiles_file)
    env["SANDBOX_MAGICS__DEFAULT__LOCAL__WORKSPACE_BASE"] = str(workspace)
    env["SANDBOX_MAGICS__TINY__LOCAL__WORKSPACE_BASE"] = str(workspace)
    return env


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    """One kernel per test module, with the extension loaded and test profiles."""
    root = tmp_path_factory.mktemp("kernel")
    profiles = root / "profiles.toml"
    profiles.write_text(TEST_PROFILES)
    k = Kernel(kernel_env(profiles, root / "ws"))
    assert k.execute("%load_ext sandbox_magics").status == "ok"
    yield k
    k.execute("%sandbox shutdown", timeout=120)
    k.shutdown()


@pytest.fixture
def fresh_kernel(profiles_file: Path, tmp_path: Path) -> Iterator[Kernel]:
    """A kernel of its own, for tests that break or kill it."""
    k = Kernel(kernel_env(profiles_file, tmp_path / "ws"))
    yield k
    k.shutdown()
