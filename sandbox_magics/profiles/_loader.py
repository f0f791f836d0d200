"""Load profiles: built-ins, then the user's TOML file, then environment variables.

File format::

    [profiles.my-profile]
    backend = "local"
    slots_per_sandbox = 8

Environment overrides: ``SANDBOX_MAGICS__<PROFILE>__<KEY>=value`` (profile upper-cased,
``-`` as ``_``), e.g. ``SANDBOX_MAGICS__DEFAULT__MAX_SANDBOXES=4``. The file comes from
the ``profiles_file`` argument or ``SANDBOX_MAGICS_PROFILES``. Every error is one sentence
naming the file, the profile and the key.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ..exceptions import ProfileError
from ._models import BACKENDS, FIELDS, Profile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PROFILES_FILE_ENV = "SANDBOX_MAGICS_PROFILES"
ENV_PREFIX = "SANDBOX_MAGICS__"
_BUILTIN = "builtin.toml"

_INT_FIELDS = {"memory_mb", "slots_per_sandbox", "min_sandboxes", "max_sandboxes"}
_FLOAT_FIELDS = {"cpu", "idle_timeout", "lifetime", "acquire_timeout", "run_timeout",
                 "artifact_limit_mb", "start_timeout"}
_OPTIONAL = {"image", "gpu", "run_timeout", "workspace_base"}
_STR_FIELDS = {"backend", "image", "gpu", "workspace_base", "bind_host"}
_PRIVATE = {"env", "secrets"}
_POSITIVE = {"slots_per_sandbox", "max_sandboxes", "cpu", "memory_mb", "idle_timeout",
             "lifetime", "acquire_timeout", "run_timeout", "start_timeout"}


class ProfileCache:
    """`load_profiles` again only when the file or the environment changed (a run's submit
    asks for the profiles every time, and parsing TOML each time is not free)."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._profiles: dict[str, Profile] = {}

    def get(self, profiles_file: str | os.PathLike[str] | None) -> dict[str, Profile]:
        path = profiles_file or os.environ.get(PROFILES_FILE_ENV) or None
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        key = (os.fspath(path) if path else None,
               (stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None,
               tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX))))
        if key != self._key:
            self._profiles = load_profiles(profiles_file)
            self._key = key
        return self._profiles


@functools.lru_cache(maxsize=1)
def _builtin_text() -> str:
    return resources.files(__package__).joinpath(_BUILTIN).read_text("utf-8")


def load_profiles(
    profiles_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Profile]:
    """Return every profile by name: built-ins, overridden by the file, then by env vars.

    Raises:
        ProfileError: the file is missing or malformed, or a key or value is invalid.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    _merge(raw, _parse_toml(_builtin_text(), "the built-in profiles"), "the built-in profiles")
    path = profiles_file or environ.get(PROFILES_FILE_ENV) or None
    if path:
        source = f"profiles file {os.fspath(path)!r}"
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ProfileError(
                f"Cannot read {source}: {exc.strerror or exc}; check the path "
                f"(set by SandboxMagics.profiles_file or ${PROFILES_FILE_ENV})."
            ) from None
        _merge(raw, _parse_toml(text, source), source)
    _merge(raw, _from_environ(environ), "the environment")
    return {name: _build(name, values) for name, values in raw.items()}


def _parse_toml(text: str, source: str) -> dict[str, dict[str, Any]]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"The {source} is not valid TOML: {exc}.") from None
    unknown = sorted(set(doc) - {"profiles"})
    if unknown:
        raise ProfileError(
            f"The {source} has an unknown top-level key {unknown[0]!r}; "
            "put each profile under a [profiles.NAME] table."
        )
    profiles = doc.get("profiles", {})
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise ProfileError(
                f"In the {source}, profile {name!r} must be a table ([profiles.{name}]), "
                f"got {table!r}."
            )
    return profiles


def _merge(into: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], source: str) -> None:
    for name, table in new.items():
        for key, value in table.items():
            _check(source, name, key, value)
        into.setdefault(name, {}).update(table)
        into[name].setdefault("__source__", source)


def _from_environ(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX):].split("__")
        if len(parts) != 2 or not all(parts):
            raise ProfileError(
                f"The environment variable {var} is not of the form "
                f"{ENV_PREFIX}<PROFILE>__<KEY>; rename or unset it."
            )
        name, key = parts[0].lower().replace("_", "-"), parts[1].lower()
        found.setdefault(name, {})[key] = _coerce_env(var, name, key, text)
    return found


def _coerce_env(var: str, profile: str, key: str, text: str) -> Any:
    """Environment values are strings; read numbers, lists and tables as JSON."""
    if key in _STR_FIELDS:
        return None if text == "" and key in _OPTIONAL else text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        shown = "a value" if key in _PRIVATE else f"the value {text!r}"
        raise ProfileError(
            f"In the environment, profile {profile!r} key {key!r} ({var}) has "
            f"{shown} which is not a number, list or table in JSON."
        ) from None


def _check(source: str, profile: str, key: str, value: Any) -> None:
    where = f"In the {source}, profile {profile!r} key {key!r}"
    if key not in FIELDS:
        valid = ", ".join(sorted(FIELDS))
        raise ProfileError(f"{where} is not a profile key; valid keys are: {valid}.")
    if value is None and key in _OPTIONAL:
        return
    if key in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"{where} must be a whole number, got {value!r}.")
    elif key in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProfileError(f"{where} must be a number of seconds or units, got {value!r}.")
    elif key in _STR_FIELDS:
        if not isinstance(value, str) or not value:
            raise ProfileError(f"{where} must be a non-empty string, got {value!r}.")
    elif key == "secrets":
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise ProfileError(f"{where} must be a list of secret names, got a "
                               f"{type(value).__name__} holding something else.")
    elif key == "env":
        if not isinstance(value, dict):
            raise ProfileError(f"{where} must be a table of string values, got a "
                               f"{type(value).__name__}.")
        for name, item in value.items():
            if not isinstance(item, str):
                raise ProfileError(f"{where} entry {name!r} must be a string, got a "
                                   f"{type(item).__name__} (values are not shown: they may be secret).")
    if key in _POSITIVE and value <= 0:
        raise ProfileError(f"{where} must be greater than zero, got {value!r}.")
    if key == "min_sandboxes" and value < 0:
        raise ProfileError(f"{where} must be zero or more, got {value!r}.")
    if key == "backend" and value not in BACKENDS:
        raise ProfileError(f"{where} must be one of {', '.join(BACKENDS)}, got {value!r}.")


def _build(name: str, values: dict[str, Any]) -> Profile:
    source = values.pop("__source__")
    values = dict(values)
    if "secrets" in values:
        values["secrets"] = tuple(values["secrets"])
    if "cpu" in values:
        values["cpu"] = float(values["cpu"])
    profile = Profile(name=name, **values)
    if profile.min_sandboxes > profile.max_sandboxes:
        raise ProfileError(
            f"In the {source}, profile {name!r} key 'min_sandboxes' ({profile.min_sandboxes}) "
            f"is larger than max_sandboxes ({profile.max_sandboxes}); lower it or raise the max."
        )
    return profile
