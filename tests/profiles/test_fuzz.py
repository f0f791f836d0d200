"""Fuzz: whatever the file and the environment hold, loading profiles gives Profiles or
one ProfileError sentence on one line, and so does reading their engine tables."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_magics import ProfileError, load_profiles
from sandbox_magics.profiles import (BACKENDS, ENV_PREFIX, Profile, engine_settings,
                                     non_empty_text, positive)
from sandbox_magics.profiles._models import KEYS


@dataclass(frozen=True)
class Engine:
    """Engine settings with every annotation profiles read, under names the fuzz uses."""

    workspace_base: str | None = None
    bind_host: str = field(default="127.0.0.1", metadata={"check": non_empty_text})
    port: int = field(default=1, metadata={"check": positive})
    weight: float = 1.0
    tls: bool = False
    datacenters: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)


NAMES = (*KEYS, *BACKENDS, "workspace_base", "bind_host", "port", "weight", "tls",
         "datacenters", "meta")
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
KEY = st.sampled_from(NAMES) | TEXT
PROFILE = st.sampled_from(["default", "pytorch-gpu", "p"]) | TEXT
SCALAR = (st.booleans() | st.integers(-3, 5000) | st.integers(-10**400, 10**400)
          | st.floats() | st.floats(0.001, 1e4) | TEXT
          | st.sampled_from(["", "\x00", "a\nb", "1", "x=y", "local", "A"]))
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(KEY, inner, max_size=3), max_leaves=8)
TABLE = st.dictionaries(KEY, VALUE | st.dictionaries(KEY, VALUE, max_size=4), max_size=6)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly a [profiles] table; now and then another top-level key too."""
    rare = draw(st.integers(0, 9)) == 5  # not 0: hypothesis draws the simplest value often
    doc = {"profiles": draw(st.dictionaries(PROFILE, SCALAR if rare else TABLE, max_size=3))}
    if rare:
        doc[draw(TEXT)] = draw(st.dictionaries(PROFILE, TABLE, max_size=2))
    return doc


DEEP = st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)
PART = st.sampled_from([n.upper() for n in (*NAMES, "default", "pytorch_gpu")]) | TEXT


@st.composite
def variables(draw: st.DrawFn) -> str:
    """Mostly SANDBOX_MAGICS__<PROFILE>__[<ENGINE>__]<KEY>; now and then any parts."""
    if draw(st.integers(0, 4)) == 3:
        return ENV_PREFIX + "__".join(draw(st.lists(PART, max_size=4)))
    engine = draw(st.sampled_from(["", "LOCAL__", "NOMAD__"]))
    return f"{ENV_PREFIX}{draw(PART)}__{engine}{draw(PART)}"


ENV_VALUE = TEXT | SCALAR.map(str) | VALUE.map(lambda v: json.dumps(v, default=str)) | DEEP


def toml_string(text: str) -> str:
    escaped = (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else
               "\\" + c if c in '"\\' else c for c in text)
    return '"' + "".join(escaped) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """``doc`` as TOML: tables as [headers] down to a profile's sub-tables, then inline."""
    lines, tables = [], []
    for key, value in doc.items():
        if isinstance(value, dict) and len(path) < 3:
            tables.append((key, value))
        else:
            lines.append(f"{toml_string(key)} = {toml_value(value)}")
    for key, value in tables:
        lines.append(f"[{'.'.join(map(toml_string, (*path, key)))}]")
        lines.append(toml_document(value, (*path, key)))
    return "\n".join(lines)


def load_or_one_sentence(path: Path | None, environ: dict[str, str]) -> None:
    try:
        profiles = load_profiles(path, environ=environ)
        for profile in profiles.values():
            assert isinstance(profile, Profile)
            profile.as_row()
            for engine in profile.engine_tables:
                engine_settings(profile, engine, Engine)
    except ProfileError as exc:
        message = str(exc)
        assert message and len(message.splitlines()) == 1, message


@pytest.fixture(scope="module")
def profiles_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "profiles.toml"


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(doc=documents(), environ=st.dictionaries(variables(), ENV_VALUE, max_size=3))
def test_random_documents_and_overrides_load_or_fail_in_one_sentence(
        profiles_path: Path, doc: dict[str, Any], environ: dict[str, str]) -> None:
    profiles_path.write_text(toml_document(doc), encoding="utf-8")
    load_or_one_sentence(profiles_path, environ)


@FUZZ
@given(data=st.binary(max_size=200)
       | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
       | st.text("[]{}=.\"'\n profiles.default.local cpu env 0x1e9nan", max_size=200)
       .map(lambda t: f"[profiles.default]\n{t}".encode()))
def test_random_bytes_load_or_fail_in_one_sentence(profiles_path: Path, data: bytes) -> None:
    profiles_path.write_bytes(data)
    load_or_one_sentence(profiles_path, {})
