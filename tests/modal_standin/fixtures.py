"""Pytest fixtures for the Modal stand-in: use with ``from tests.modal_standin.fixtures import *``.

``standin`` is one stand-in per test module, on its own loop thread; ``modal_env`` points
the real ``modal`` package at it (any token values) with no config file, and resets
Modal's cached client before and after the test so no test sees another's server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .server import StandIn, serve_in_thread

CANARY_VALUE = "canary-7f3a9c-value-never-shown"


class Running:
    """A stand-in served on a thread, with ``call(coro)`` to run on its loop."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.standin, self.loop, self._stop = serve_in_thread(root, **options)

    @property
    def url(self) -> str:
        return self.standin.url

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self._stop()


def modal_environment(url: str, config: Path) -> dict[str, str]:
    config.write_text("")
    return {"MODAL_SERVER_URL": url, "MODAL_TOKEN_ID": "ak-standin", "MODAL_TOKEN_SECRET": "as-standin",
            "MODAL_CONFIG_PATH": str(config)}


def reset_modal_client() -> None:
    import modal
    modal.Client._set_env_client(None)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = Running(tmp_path_factory.mktemp("modal-standin"),
                      secrets_={"canary": {"CANARY_SECRET": CANARY_VALUE}})
    yield running
    running.stop()
    unserved = sorted(set(running.standin.unserved))
    assert not unserved, f"the modal client called RPCs the stand-in does not serve: {', '.join(unserved)}"


@pytest.fixture
def modal_env(standin: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    for key, value in modal_environment(standin.url, tmp_path / "modal.toml").items():
        monkeypatch.setenv(key, value)
    reset_modal_client()
    yield standin
    reset_modal_client()


__all__ = ["CANARY_VALUE", "Running", "StandIn", "modal_env", "modal_environment",
           "reset_modal_client", "standin"]
