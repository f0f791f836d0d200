"""Fixtures for tests of the Python API on real local agents: each test module names its
profiles in ``PROFILES`` (``{ws}`` stands for a workspace folder of the test's own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_magics import Client


@pytest.fixture
def profiles(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(request.module.PROFILES.format(ws=tmp_path / "ws"))
    return path


@pytest.fixture
def client(profiles: Path) -> Iterator[Client]:
    c = Client(profiles)
    yield c
    c.shutdown()
