"""The part of Nomad's filter language (go-bexpr) that list endpoints are asked with here.

Supported: ``<Selector> == "v"``, ``<Selector> != "v"``, ``<Selector> is empty``,
``<Selector> is not empty``, ``<Selector> contains "v"``, ``"v" in <Selector>``, joined by
``and`` / ``or`` (``and`` binds tighter), with ``not`` and parentheses. A selector is a
dotted path (``Meta.owner``, ``TaskStates.agent.State``). Anything else is refused with
the error Nomad gives for a filter it cannot read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_TOKEN = re.compile(r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>==|!=|\(|\))|'
                    r'(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*))')

Predicate = Callable[[dict[str, Any]], bool]


class FilterError(ValueError):
    """The filter expression cannot be read."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise FilterError("failed to read filter expression: unexpected text at "
                              f"{text[pos:]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def compile_filter(text: str) -> Predicate:
    """A predicate over an object's JSON for ``text``.

    Raises:
        FilterError: ``text`` is not in the supported subset.
    """
    tokens = _tokens(text)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(tokens):
            raise FilterError("failed to read filter expression: it ends too early")
        pos += 1
        return tokens[pos - 1]

    def either() -> Predicate:
        left = both()
        while peek() == ("word", "or"):
            take()
            right = both()
            left = (lambda a, b: lambda o: a(o) or b(o))(left, right)
        return left

    def both() -> Predicate:
        left = single()
        while peek() == ("word", "and"):
            take()
            right = single()
            left = (lambda a, b: lambda o: a(o) and b(o))(left, right)
        return left

    def single() -> Predicate:
        kind, value = take()
        if (kind, value) == ("word", "not"):
            inner = single()
            return lambda o: not inner(o)
        if (kind, value) == ("op", "("):
            inner = either()
            if take() != ("op", ")"):
                raise FilterError("failed to read filter expression: missing )")
            return inner
        if kind == "string":
            wanted = json.loads(value)
            if take() != ("word", "in"):
                raise FilterError("failed to read filter expression: expected 'in'")
            path = _selector(take())
            return lambda o: _contains(_select(o, path), wanted)
        path = _selector((kind, value))
        op_kind, op = take()
        if (op_kind, op) == ("word", "is"):
            negate = peek() == ("word", "not")
            if negate:
                take()
            if take() != ("word", "empty"):
                raise FilterError("failed to read filter expression: expected 'empty'")
            return lambda o: _empty(_select(o, path)) != negate
        if op in ("==", "!=", "contains"):
            kind2, raw = take()
            if kind2 != "string":
                raise FilterError("failed to read filter expression: expected a quoted value")
            wanted = json.loads(raw)
            if op == "contains":
                return lambda o: _contains(_select(o, path), wanted)
            equal = op == "=="
            return lambda o: (_text(_select(o, path)) == wanted) == equal
        raise FilterError(f"failed to read filter expression: unsupported operator {op!r}")

    predicate = either()
    if pos != len(tokens):
        raise FilterError(f"failed to read filter expression: unexpected {tokens[pos][1]!r}")
    return predicate


def _selector(token: tuple[str, str]) -> list[str]:
    kind, value = token
    if kind != "word":
        raise FilterError(f"failed to read filter expression: expected a selector, got {value!r}")
    return value.split(".")


_MISSING = object()


def _select(obj: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return _MISSING
    return obj


def _text(value: Any) -> Any:
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value


def _empty(value: Any) -> bool:
    return value is _MISSING or value in (None, "", [], {})


def _contains(value: Any, wanted: str) -> bool:
    if isinstance(value, (str, list, dict)):
        return wanted in value
    return False
