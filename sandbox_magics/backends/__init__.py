"""Backends: one module per engine, all behind the protocol in `base`.

Each engine module declares ``Settings`` (a frozen dataclass: the keys of its
``[profiles.NAME.<engine>]`` table, with an optional ``check_profile(profile)`` that refuses
the profile's own values the engine would refuse) and ``Backend`` (built from those
settings and the client's identity). The core makes one backend per engine and settings.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Hashable
from types import ModuleType

from ..exceptions import SandboxStartError
from ..identity import Identity
from ..profiles import Profile, engine_settings
from .base import Backend

__all__ = ["Backend", "make_backend", "settings_of"]

_ENGINES = {"local": ".local", "modal": ".modal", "nomad": ".nomad"}
# The engine SDK each remote backend needs: (module imported, package on PyPI); each comes
# with the extra named after its engine (pyproject.toml).
_SDKS = {"modal": ("modal", "modal"), "nomad": ("nomad", "python-nomad")}


def _engine(name: str) -> ModuleType:
    if name not in _ENGINES:
        raise SandboxStartError(
            f"The {name!r} backend is not available in this version; use backend = \"local\".")
    if name in _SDKS and importlib.util.find_spec(_SDKS[name][0]) is None:
        raise SandboxStartError(
            f"The {name} backend needs the {_SDKS[name][1]} package, which is not installed: "
            f"pip install 'sandbox_magics[{name}]'.")
    return importlib.import_module(_ENGINES[name], __name__)


def settings_of(profile: Profile) -> Hashable:
    """The validated engine settings of ``profile``, checked against the profile's values.

    Raises:
        ProfileError: a key of its engine table is unknown or has a bad value, or the
            engine would refuse one of the profile's values.
        SandboxStartError: its backend is not available.
    """
    settings = engine_settings(profile, profile.backend, _engine(profile.backend).Settings)
    check = getattr(settings, "check_profile", None)
    if check is not None:
        check(profile)
    return settings


def make_backend(profile: Profile, me: Identity) -> Backend:
    """A new backend for ``profile``'s engine and settings."""
    backend: Backend = _engine(profile.backend).Backend(settings_of(profile), me)
    return backend
