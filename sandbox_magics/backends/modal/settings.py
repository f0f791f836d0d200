"""Keys of a profile's ``[profiles.NAME.modal]`` table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ...profiles import non_empty_text, positive
from ...profiles._values import FrozenMapping

MAX_TIMEOUT = 24 * 3600
"""Modal's longest sandbox lifetime, in seconds."""


def _absolute(value: str) -> None:
    non_empty_text(value)
    if not PurePosixPath(value).is_absolute() or ".." in PurePosixPath(value).parts:
        raise ValueError("must be an absolute path without '..'")


def _mounts(value: Mapping[str, str]) -> None:
    for name, path in value.items():
        if not name or "\0" in name:
            raise ValueError("must name each volume (a non-empty name without NUL characters)")
        try:
            _absolute(path)
        except ValueError:
            raise ValueError(f"entry {name!r} must be an absolute mount path") from None


def _names(values: tuple[str, ...]) -> None:
    if not all(v and "\0" not in v for v in values):
        raise ValueError("must list non-empty names without NUL characters")


def _lifetime(value: float) -> None:
    positive(value)
    if value > MAX_TIMEOUT:
        raise ValueError(f"must be at most {MAX_TIMEOUT} seconds (Modal's limit)")


@dataclass(frozen=True)
class Settings:
    """Keys of ``[profiles.NAME.modal]``; cpu, memory_mb and gpu come from the profile itself.

    Args:
        app_name: the Modal app the sandboxes belong to (made if missing).
        environment: the Modal environment (default: the one your Modal config selects).
        image: a registry image (``python:3.12-slim``...); default: the profile's ``image``,
            else Modal's debian-slim image.
        python_version: Python of the debian-slim image (default: Modal's choice).
        pip: pip packages installed into the image.
        region, cloud: where Modal may place the sandboxes.
        timeout: a sandbox's lifetime in seconds (default: the profile's ``lifetime``, at most
            24 h); always set, so a sandbox never outlives it.
        idle_timeout: seconds without any command after which Modal stops a sandbox (default:
            twice the profile's ``idle_timeout``); always set, so a forgotten sandbox stops
            costing money even if this kernel dies.
        secrets: names of Modal secrets attached besides the profile's ``secrets``.
        volumes: Modal volume name → absolute mount path.
        workdir: the folder in the sandbox that holds the slot workspaces.
        build_timeout: seconds the image may take to build on a first start; a build does
            not count against the profile's ``start_timeout``.
    """

    app_name: str = field(default="sandbox-magics", metadata={"check": non_empty_text})
    environment: str | None = field(default=None, metadata={"check": non_empty_text})
    image: str | None = field(default=None, metadata={"check": non_empty_text})
    python_version: str | None = field(default=None, metadata={"check": non_empty_text})
    pip: tuple[str, ...] = field(default=(), metadata={"check": _names})
    region: tuple[str, ...] = field(default=(), metadata={"check": _names})
    cloud: str | None = field(default=None, metadata={"check": non_empty_text})
    timeout: float | None = field(default=None, metadata={"check": _lifetime})
    idle_timeout: float | None = field(default=None, metadata={"check": _lifetime})
    secrets: tuple[str, ...] = field(default=(), metadata={"check": _names})
    volumes: Mapping[str, str] = field(default_factory=lambda: FrozenMapping({}),
                                         metadata={"check": _mounts})
    workdir: str = field(default="/root/sandbox_magics", metadata={"check": _absolute})
    build_timeout: float = field(default=1800.0, metadata={"check": _lifetime})
