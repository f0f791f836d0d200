"""Reading settings: one value against a dataclass field, and a backend's engine table.

The common keys of a profile (the fields of `Profile`) and the keys of each engine
sub-table (the fields of a dataclass that a backend declares, read by `engine_settings`)
are read the same way: the field's annotation says which value it takes (``str``,
``int``, ``float``, ``bool``, ``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]``), and an
optional ``metadata={"check": f}`` narrows it, ``f`` raising ``ValueError("must be ...")``.
Lists come back as tuples and tables as read-only, hashable `FrozenMapping`s. A field
with ``repr=False`` holds values that may be secret: its errors never show them.

Every problem is one sentence from `invalid`: ``In the <source>, profile 'p' key 'k' ...``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..exceptions import ProfileError

if TYPE_CHECKING:
    from ._models import Profile

T = TypeVar("T")

MAX_DIGITS = 18
_MAX_INT = 10 ** MAX_DIGITS - 1
_SECRET_NOTE = " (values are not shown: they may be secret)"
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_NOUNS: dict[Any, tuple[str, str]] = {
    str: ("a string", "strings"), int: ("a whole number", "whole numbers"),
    float: ("a number", "numbers"), bool: ("true or false", "true or false values"),
}


class FrozenMapping(Mapping[str, Any]):
    """A read-only table that hashes by its items, so a settings dataclass holding one
    stays hashable (the core keys its backends by their settings)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> typing.Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"


class _Invalid(Exception):
    """A value does not fit its annotation: what it must be, and the offending item."""

    def __init__(self, problem: str, item: Any) -> None:
        super().__init__(problem)
        self.problem, self.item = problem, item


def shown(value: Any) -> str:
    """A value as it appears in an error: its repr, on one line and a few dozen characters."""
    if isinstance(value, int) and abs(value) > _MAX_INT:
        return f"a whole number with more than {MAX_DIGITS} digits"
    return _SHOW.repr(value)


def shown_env_name(name: Any) -> str:
    """An environment variable's name as an error shows it: as `shown`, but cut after its
    first ``=`` (``'TOKEN=…'``), since what follows is a value pasted in and may be secret."""
    if isinstance(name, str) and "=" in name:
        return shown(name.partition("=")[0] + "=…")
    return shown(name)


def invalid(source: str, profile: str, key: str, problem: str) -> ProfileError:
    """The one sentence for a bad key: ``In the <source>, profile 'p' key 'k' <problem>.``"""
    return ProfileError(f"In the {source}, profile {shown(profile)} key {shown(key)} {problem}.")


def freeze(value: Any) -> Any:
    """``value`` with every list turned into a tuple and every table into a read-only mapping."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


@functools.lru_cache(maxsize=None)
def fields_of(cls: type) -> Mapping[str, tuple[dataclasses.Field[Any], Any]]:
    """The settable fields of a dataclass, each with its resolved annotation."""
    hints = typing.get_type_hints(cls)
    return types.MappingProxyType(
        {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init})


def read_setting(source: str, profile: str, key: str, cls: type, name: str, value: Any) -> Any:
    """``value`` read as field ``name`` of dataclass ``cls``; ``key`` is how errors call it.

    Raises:
        ProfileError: the value has the wrong type or fails the field's check.
    """
    spec, hint = fields_of(cls)[name]
    secret = not spec.repr
    try:
        result = _convert(hint, value)
    except _Invalid as bad:
        got = f"a {type(bad.item).__name__}{_SECRET_NOTE}" if secret else shown(bad.item)
        raise invalid(source, profile, key, f"{bad.problem}, got {got}") from None
    check: Callable[[Any], None] | None = spec.metadata.get("check")
    if check is not None and result is not None:
        try:
            check(result)
        except ValueError as exc:
            tail = _SECRET_NOTE if secret else f", got {shown(value)}"
            raise invalid(source, profile, key, f"{exc}{tail}") from None
    return result


def engine_settings(profile: Profile, engine: str, cls: type[T]) -> T:
    """The profile's ``[profiles.NAME.<engine>]`` table read into ``cls``, a frozen dataclass
    whose fields are the engine's keys (annotations as in this module's docstring).

    Raises:
        ProfileError: a key is not a field of ``cls``, or its value does not fit the field.
    """
    known = fields_of(cls)
    values: dict[str, Any] = {}
    for key, value in profile.engine_tables.get(engine, {}).items():
        label = f"{engine}.{key}"
        if key not in known:
            valid = ", ".join(sorted(known)) or "none"
            raise invalid(profile.source, profile.name, label,
                          f"is not a {engine} setting; valid keys are: {valid}")
        values[key] = read_setting(profile.source, profile.name, label, cls, key, value)
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return None if value is None else _convert(rest[0], value)
    elif hint in _NOUNS:
        return _scalar(hint, value)
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"must be a list of {_plural(args[0])}", value)
        return tuple(_part(f"item {i}", args[0], item) for i, item in enumerate(value, 1))
    elif origin is collections.abc.Mapping and args[:1] == (str,):
        if not isinstance(value, Mapping):
            raise _Invalid(f"must be a table of {_plural(args[1])}", value)
        return FrozenMapping(
            {k: _part(f"entry {shown(k)}", args[1], item) for k, item in value.items()})
    raise TypeError(f"Profiles cannot read a setting annotated {hint!r}; use one of the "
                    "annotations listed in sandbox_magics.profiles._values.")


def _part(label: str, hint: Any, item: Any) -> Any:
    try:
        return _convert(hint, item)
    except _Invalid as bad:
        raise _Invalid(f"{label} {bad.problem}", bad.item) from None


def _plural(hint: Any) -> str:
    return _NOUNS[hint][1] if hint in _NOUNS else "values"


def _scalar(hint: type, value: Any) -> Any:
    """``value`` as ``hint`` (str, int, float or bool); a bool is no number, an int is a float."""
    if isinstance(value, bool) != (hint is bool):
        raise _Invalid(f"must be {_NOUNS[hint][0]}", value)
    if hint is float and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise _Invalid("must be a finite number", value)
        return number
    if hint is int and isinstance(value, int) and abs(value) > _MAX_INT:
        raise _Invalid(f"must be a whole number of at most {MAX_DIGITS} digits", value)
    if isinstance(value, hint):
        return value
    raise _Invalid(f"must be {_NOUNS[hint][0]}", value)
