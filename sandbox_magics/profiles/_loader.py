"""Load profiles: built-ins, then the user's TOML file, then environment variables.

File format::

    [profiles.my-profile]
    backend = "local"
    slots_per_sandbox = 8
    env = { PYTHONUNBUFFERED = "1" }

    [profiles.my-profile.local]       # settings of one engine, read by that backend
    workspace_base = "/scratch/ws"

A profile table holds the common keys (the fields of `Profile`) and at most one sub-table
per engine, named after it (``local``, ``modal``, ``nomad``). A sub-table for an engine
other than the profile's ``backend`` is kept, so switching the backend keeps each engine's
settings; its keys are checked by the backend that reads it (`engine_settings`). Any
other sub-table is an error. Later layers override single keys, also inside sub-tables.

Environment overrides: ``SANDBOX_MAGICS__<PROFILE>__<KEY>=value`` and
``SANDBOX_MAGICS__<PROFILE>__<ENGINE>__<KEY>=value`` (profile upper-cased, ``-`` as
``_``), e.g. ``SANDBOX_MAGICS__DEFAULT__MAX_SANDBOXES=4`` or
``SANDBOX_MAGICS__DEFAULT__LOCAL__WORKSPACE_BASE=/tmp/ws``. A value is taken as it is
for a common string key, else read as JSON, and kept as it is when it is not JSON.

``SANDBOX_MAGICS_BACKEND=modal`` (or ``nomad``) moves every built-in profile to that engine
at once, before the file and the other variables apply.

The file comes from the ``profiles_file`` argument or ``SANDBOX_MAGICS_PROFILES``. Every
error is one sentence naming the file (or variable), the profile and the key.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import typing
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ..exceptions import ProfileError
from ._models import BACKENDS, KEYS, Profile
from ._values import fields_of, invalid, read_setting, shown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PROFILES_FILE_ENV = "SANDBOX_MAGICS_PROFILES"
BACKEND_ENV = "SANDBOX_MAGICS_BACKEND"
ENV_PREFIX = "SANDBOX_MAGICS__"
MAX_NESTING = 8
_BUILTIN = "builtin.toml"
_BUILTIN_SOURCE = "built-in profiles"
_MOVED = {"workspace_base": "local", "bind_host": "local"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

Tables = dict[str, dict[str, Any]]


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
               tuple(sorted((k, v) for k, v in os.environ.items()
                            if k.startswith(ENV_PREFIX) or k == BACKEND_ENV)))
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
    raw: Tables = {}
    sources: dict[str, str] = {}
    builtin = _parse_toml(_builtin_text(), _BUILTIN_SOURCE)
    _merge(raw, sources, builtin, _BUILTIN_SOURCE)
    if environ.get(BACKEND_ENV):
        source = f"environment variable {BACKEND_ENV!r}"
        _merge(raw, sources, {name: {"backend": environ[BACKEND_ENV]} for name in builtin}, source)
    path = profiles_file or environ.get(PROFILES_FILE_ENV) or None
    if path:
        source = f"profiles file {os.fspath(path)!r}"
        _merge(raw, sources, _parse_toml(_read(path, source), source), source)
    for var in sorted(environ):
        if var.startswith(ENV_PREFIX):
            source = f"environment variable {var!r}"
            _merge(raw, sources, _from_variable(var, environ[var]), source)
    return {name: _build(name, values, sources[name]) for name, values in raw.items()}


def _read(path: str | os.PathLike[str], source: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ProfileError(
            f"Cannot read {source}: {exc.strerror or exc}; check the path "
            f"(set by SandboxMagics.profiles_file or ${PROFILES_FILE_ENV})."
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ProfileError(f"The {source} is not UTF-8 text (byte {data[exc.start]:#04x} on "
                           f"line {line}); save it as UTF-8.") from None


def _parse_toml(text: str, source: str) -> Tables:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"The {source} is not valid TOML: {exc}.") from None
    except (RecursionError, ValueError) as exc:
        raise _beyond_limits(f"The {source}", exc) from None
    unknown = sorted(set(doc) - {"profiles"})
    if unknown:
        raise ProfileError(
            f"The {source} has an unknown top-level key {shown(unknown[0])}; "
            "put each profile under a [profiles.NAME] table."
        )
    profiles = doc.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ProfileError(f"In the {source}, 'profiles' must be a table of [profiles.NAME] "
                           f"tables, got {shown(profiles)}.")
    for name, table in profiles.items():
        if not isinstance(table, dict):
            raise ProfileError(
                f"In the {source}, profile {shown(name)} must be a table "
                f"([profiles.{_header(name)}]), got {shown(table)}."
            )
    return profiles


def _from_variable(var: str, text: str) -> Tables:
    """The one key that ``SANDBOX_MAGICS__<PROFILE>__[<ENGINE>__]<KEY>`` sets."""
    parts = var[len(ENV_PREFIX):].split("__")
    engine = parts[1].lower() if len(parts) == 3 else None
    if len(parts) not in (2, 3) or not all(parts) or engine not in (None, *BACKENDS):
        raise ProfileError(
            f"The environment variable {var!r} is not of the form {ENV_PREFIX}<PROFILE>__<KEY> "
            f"or {ENV_PREFIX}<PROFILE>__<ENGINE>__<KEY> with ENGINE one of "
            f"{', '.join(b.upper() for b in BACKENDS)}; rename or unset it."
        )
    name, key = parts[0].lower().replace("_", "-"), parts[-1].lower()
    if engine is None and key in KEYS and _takes_text(key):
        value: Any = None if text == "" and _takes_none(key) else text
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        except (RecursionError, ValueError) as exc:
            raise _beyond_limits(f"The environment variable {var!r}", exc) from None
    return {name: {engine: {key: value}} if engine else {key: value}}


def _beyond_limits(subject: str, exc: RecursionError | ValueError) -> ProfileError:
    """A parser gave up on valid syntax: nesting deeper than Python's recursion limit, or
    (the only other ValueError left once syntax errors are caught) an integer longer than
    Python converts."""
    if isinstance(exc, RecursionError):
        return ProfileError(f"{subject} nests lists or tables too deeply to be read; flatten it.")
    return ProfileError(f"{subject} has a number with more than "
                        f"{sys.get_int_max_str_digits()} digits; shorten it.")


def _takes_text(key: str) -> bool:
    hint = fields_of(Profile)[key][1]
    return hint is str or str in typing.get_args(hint)


def _takes_none(key: str) -> bool:
    return type(None) in typing.get_args(fields_of(Profile)[key][1])


def _merge(into: Tables, sources: dict[str, str], new: Tables, source: str) -> None:
    for name, table in new.items():
        merged = into.setdefault(name, {})
        for key, value in table.items():
            if key in BACKENDS:
                merged.setdefault(key, {}).update(_engine_table(source, name, key, value))
            else:
                merged[key] = _common(source, name, key, value)
        sources[name] = source


def _common(source: str, profile: str, key: str, value: Any) -> Any:
    if key in KEYS:
        return read_setting(source, profile, key, Profile, key, value)
    if key in _MOVED:
        engine, header = _MOVED[key], _header(profile)
        var = f"{ENV_PREFIX}{header.upper().replace('-', '_')}__{engine.upper()}__{key.upper()}"
        raise invalid(source, profile, key,
                      f"is a setting of the {engine} engine now: move it to "
                      f"[profiles.{header}.{engine}] (in the environment: {var})")
    if isinstance(value, dict):
        raise invalid(source, profile, key,
                      f"is a table, but the only tables in a profile are its engines' "
                      f"({', '.join(BACKENDS)}, as in [profiles.{_header(profile)}.local]); "
                      "rename or remove it")
    valid = ", ".join(sorted(KEYS))
    raise invalid(source, profile, key,
                  f"is not a profile key; valid keys are: {valid}, and the tables "
                  f"{', '.join(BACKENDS)}")


def _engine_table(source: str, profile: str, engine: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise invalid(source, profile, engine,
                      f"must be a table of {engine} settings "
                      f"([profiles.{_header(profile)}.{engine}]), got {shown(table)}")
    for key, value in table.items():
        if _nested_deeper(value, MAX_NESTING):
            raise invalid(source, profile, f"{engine}.{key}",
                          f"is nested more than {MAX_NESTING} levels deep; settings are "
                          "strings, numbers and booleans, or lists and tables of them")
    return table


def _nested_deeper(value: Any, levels: int) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return False
    return levels == 0 or any(_nested_deeper(item, levels - 1) for item in value)


def _header(name: str) -> str:
    """``name`` as written in a ``[profiles.NAME]`` header (``NAME`` when it needs quotes)."""
    return name if _BARE_KEY.fullmatch(name) else "NAME"


def _build(name: str, values: dict[str, Any], source: str) -> Profile:
    engines = {key: values.pop(key) for key in BACKENDS if key in values}
    profile = Profile(name=name, engine_tables=engines, source=source, **values)
    if profile.min_sandboxes > profile.max_sandboxes:
        raise invalid(source, name, "min_sandboxes",
                      f"({profile.min_sandboxes}) is larger than max_sandboxes "
                      f"({profile.max_sandboxes}); lower it or raise the max")
    return profile
