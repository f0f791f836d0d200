"""Backends: one module per engine, all behind the protocol in `base`."""

from __future__ import annotations

from .base import Backend

__all__ = ["Backend", "make_backend"]


def make_backend(name: str) -> Backend:
    """Return a new backend for the engine ``name`` (as in a profile's ``backend`` key)."""
    if name == "local":
        from .local import LocalBackend
        return LocalBackend()
    from ..exceptions import SandboxStartError
    raise SandboxStartError(
        f"The {name!r} backend is not available in this version; use backend = \"local\"."
    )
