"""A sweep's parameter sets: the grid of ``--map NAME=VALUES`` flags (cartesian, or paired
with ``--zip``), or rows given as data (``--map-from``), checked before anything runs.

Values are text, as they reach a command (environment variables): ``1e-4,3e-4`` is two
values, ``0..4`` the integers 0 to 4 inclusive. Every problem is a `SweepError` of one
sentence: an empty or malformed grid, lists of different lengths under ``--zip``, more
than `MAX_ITEMS` items.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..exceptions import SweepError

MAX_ITEMS = 10_000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")

Params = dict[str, str]


def parse_map(spec: str) -> tuple[str, list[str]]:
    """``NAME=V1,V2,...`` or ``NAME=A..B`` (inclusive integers) as (name, values)."""
    name, sep, text = spec.partition("=")
    if not sep or not _NAME.fullmatch(name):
        raise SweepError(f"--map takes NAME=VALUES with NAME a variable name, got {spec!r}.")
    if match := _RANGE.fullmatch(text.strip()):
        low, high = int(match[1]), int(match[2])
        if high < low:
            raise SweepError(f"--map {name}={text}: the range ends before it starts.")
        if high - low >= MAX_ITEMS:
            raise SweepError(f"--map {name}={text}: more than {MAX_ITEMS:,} values.")
        return name, [str(v) for v in range(low, high + 1)]
    values = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in values):
        raise SweepError(f"--map {name}= needs values separated by commas (or A..B), got "
                         f"{text!r}.")
    return name, values


def grid(maps: Sequence[tuple[str, Sequence[str]]], zipped: bool = False) -> list[Params]:
    """The parameter sets of ``maps``: every combination, or (``zipped``) the i-th value of
    each list together."""
    if not maps:
        raise SweepError("A sweep needs at least one --map NAME=VALUES (or --map-from VAR).")
    names = [name for name, _ in maps]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"--map names each parameter once; {', '.join(twice)} came twice.")
    lists = [list(values) for _, values in maps]
    if zipped:
        lengths = {len(values) for values in lists}
        if len(lengths) != 1:
            shown = ", ".join(f"{n}: {len(v)}" for n, v in zip(names, lists))
            raise SweepError(f"--zip pairs lists of the same length; got {shown}.")
        combos: Iterable[tuple[str, ...]] = zip(*lists)
    else:
        total = 1
        for values in lists:
            total *= len(values)
        _check_size(total)
        combos = itertools.product(*lists)
    return _checked([dict(zip(names, combo)) for combo in combos])


def from_rows(data: Any, what: str = "--map-from") -> list[Params]:
    """Parameter sets from a list of dicts or a pandas DataFrame (one per row); values
    become text (JSON for what is not a string)."""
    rows: list[Mapping[str, Any]]
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        rows = data.to_dict("records")
    elif isinstance(data, (list, tuple)) and all(isinstance(r, Mapping) for r in data):
        rows = list(data)
    else:
        raise SweepError(f"{what} takes a list of dicts or a DataFrame, got "
                         f"{type(data).__name__}.")
    params = []
    for row in rows:
        bad = [str(k) for k in row if not isinstance(k, str) or not _NAME.fullmatch(k)]
        if bad:
            raise SweepError(f"{what}: parameter names must be variable names, got {bad[0]!r}.")
        params.append({k: v if isinstance(v, str) else json.dumps(_plain(v)) for k, v in row.items()})
    return _checked(params)


def item_name(sweep: str, params: Params) -> str:
    """``sweep[name=value,...]``, as the item is listed and found."""
    return f"{sweep}[{','.join(f'{k}={v}' for k, v in params.items())}]"


def _plain(value: Any) -> Any:
    """``value`` as JSON takes it (numpy scalars as Python numbers)."""
    return value.item() if hasattr(value, "item") else value


def _check_size(total: int) -> None:
    if total > MAX_ITEMS:
        raise SweepError(f"The grid has {total:,} items, more than the {MAX_ITEMS:,} a sweep "
                         "may have; split it into several sweeps.")


def _checked(params: list[Params]) -> list[Params]:
    if not params:
        raise SweepError("The grid is empty: no parameter set to run.")
    _check_size(len(params))
    return params
