"""The `Profile`: what a pool of sandboxes looks like (engine, size, limits, env).

A profile is plain data, frozen all the way down once built (lists are tuples, tables
read-only mappings); `_loader` builds and validates it from the built-in TOML, the user's
profiles file and environment variables. Each field's annotation and ``check`` metadata
say which values its key takes (read by `_values.read_setting`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ._values import freeze, shown_env_name

Backend = Literal["local", "modal", "nomad"]
BACKENDS: tuple[str, ...] = ("local", "modal", "nomad")

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def non_empty_text(value: str) -> None:
    """Check for a string setting that an engine or the OS receives: no empty, no NUL."""
    if not value or "\0" in value:
        raise ValueError("must be a non-empty string without NUL characters")


def positive(value: float) -> None:
    """Check for a count, size or duration that must be above zero."""
    if value <= 0:
        raise ValueError("must be greater than zero")


def not_negative(value: float) -> None:
    """Check for a count or size that may be zero."""
    if value < 0:
        raise ValueError("must be zero or more")


def _backend(value: str) -> None:
    if value not in BACKENDS:
        raise ValueError(f"must be one of {', '.join(BACKENDS)}")


def _names(values: tuple[str, ...]) -> None:
    if not all(name and "\0" not in name for name in values):
        raise ValueError("must list non-empty names without NUL characters")


def _variables(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not _VARIABLE.fullmatch(name):
            raise ValueError(f"entry {shown_env_name(name)} is not a variable name: use letters, "
                             "digits and _, not starting with a digit")
        if "\0" in value:
            raise ValueError(f"entry {shown_env_name(name)} must not contain a NUL character")


def _checked(default: Any, check: Any) -> Any:
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class Profile:
    """One pool's definition.

    Args:
        name: the profile's name, as given to ``--profile``.
        backend: the engine that runs the sandboxes: ``local``, ``modal`` or ``nomad``.
        image: container image (Modal, Nomad); ignored by ``local``.
        cpu, memory_mb, gpu: resources asked of the engine; ``local`` reserves none.
        slots_per_sandbox: concurrent runs one sandbox serves, each in its own workspace.
        min_sandboxes, max_sandboxes: the pool's autoscaling bounds.
        idle_timeout: seconds an idle sandbox above ``min_sandboxes`` lives before it stops.
        lifetime: seconds after which an idle sandbox is replaced.
        acquire_timeout: seconds a run waits for a free slot before it fails.
        run_timeout: default per-run limit in seconds (``None``: no limit).
        secrets: names of engine-side secrets to attach (values never pass through here).
        env: environment variables set for every run (read-only).
        artifact_limit_mb: how much of a run's workspace is kept as artifacts at release.
        start_timeout: seconds a sandbox may take to start.
        heartbeat_window: seconds after which a sandbox whose owner stopped sending
            heartbeats is reaped by another kernel.
        log_limit_mb: how much of one run's log is kept on disk.
        price_per_hour: dollars one sandbox costs an hour, set by whoever runs the cluster
            (``None``: the engine's own rates where it has them, Modal's; else unknown;
            the local backend costs 0 and shows no money).
        max_cost: dollars this kernel may spend on the profile's sandboxes; once reached,
            no new sandbox starts (``None``: no limit).
        engine_tables: the engine sub-tables (``[profiles.NAME.local]`` ...) by backend
            name, read-only and unchecked; a backend reads its own with `engine_settings`.
        source: where the profile was last defined, e.g. ``profiles file '/x/p.toml'``.
    """

    name: str
    backend: str = _checked("local", _backend)
    image: str | None = _checked(None, non_empty_text)
    cpu: float = _checked(1.0, positive)
    memory_mb: int = _checked(2048, positive)
    gpu: str | None = _checked(None, non_empty_text)
    slots_per_sandbox: int = _checked(4, positive)
    min_sandboxes: int = _checked(0, not_negative)
    max_sandboxes: int = _checked(2, positive)
    idle_timeout: float = _checked(300.0, positive)
    lifetime: float = _checked(24 * 3600.0, positive)
    acquire_timeout: float = _checked(600.0, positive)
    run_timeout: float | None = _checked(None, positive)
    secrets: tuple[str, ...] = _checked((), _names)
    env: Mapping[str, str] = field(default_factory=dict, repr=False,
                                   metadata={"check": _variables})
    artifact_limit_mb: float = _checked(50.0, not_negative)
    start_timeout: float = _checked(60.0, positive)
    heartbeat_window: float = _checked(900.0, positive)
    log_limit_mb: float = _checked(1024.0, positive)
    price_per_hour: float | None = _checked(None, not_negative)
    max_cost: float | None = _checked(None, not_negative)
    engine_tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    source: str = field(default="Profile() arguments", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "secrets", tuple(self.secrets))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "engine_tables", freeze(self.engine_tables))

    @property
    def max_slots(self) -> int:
        return self.max_sandboxes * self.slots_per_sandbox

    def as_row(self) -> dict[str, Any]:
        """The profile as one row of ``%sandbox profiles``: names of secrets, env variables
        and engine settings, never their values."""
        row = {key: getattr(self, key) for key in ("name", *KEYS)}
        row["secrets"] = ", ".join(self.secrets)
        row["env"] = ", ".join(sorted(self.env))
        row["settings"] = "; ".join(f"{engine}: {', '.join(sorted(table))}"
                                    for engine, table in sorted(self.engine_tables.items()))
        return row


KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Profile)
    if f.name not in ("name", "engine_tables", "source"))
"""The keys a ``[profiles.NAME]`` table may set besides its engine sub-tables."""
