"""The `Profile`: what a pool of sandboxes looks like (engine, size, limits, env).

A profile is plain data, frozen once loaded; `_loader` builds and validates it from the
built-in TOML, the user's profiles file and environment variables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Backend = Literal["local", "modal", "nomad"]
BACKENDS: tuple[str, ...] = ("local", "modal", "nomad")


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
        env: environment variables set for every run.
        workspace_base: where ``local`` puts workspaces (default: the temp directory).
        artifact_limit_mb: how much of a run's workspace is kept as artifacts at release.
        bind_host: the address the agent listens on.
        start_timeout: seconds a sandbox may take to start.
    """

    name: str
    backend: str = "local"
    image: str | None = None
    cpu: float = 1.0
    memory_mb: int = 2048
    gpu: str | None = None
    slots_per_sandbox: int = 4
    min_sandboxes: int = 0
    max_sandboxes: int = 2
    idle_timeout: float = 300.0
    lifetime: float = 24 * 3600.0
    acquire_timeout: float = 600.0
    run_timeout: float | None = None
    secrets: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    workspace_base: str | None = None
    artifact_limit_mb: float = 50.0
    bind_host: str = "127.0.0.1"
    start_timeout: float = 60.0

    @property
    def max_slots(self) -> int:
        return self.max_sandboxes * self.slots_per_sandbox

    def as_row(self) -> dict[str, Any]:
        """The profile as one row of ``%sandbox profiles`` (secret names only, no values)."""
        row = dataclasses.asdict(self)
        row["secrets"] = ", ".join(self.secrets)
        row["env"] = ", ".join(sorted(self.env))
        return row


FIELDS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(Profile) if f.name != "name"
}
