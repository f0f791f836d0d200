"""Engine sub-tables ([profiles.NAME.<engine>]), their overrides, and `engine_settings`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pytest

from sandbox_magics import ProfileError, load_profiles
from sandbox_magics.profiles import Profile, engine_settings, non_empty_text, positive


@dataclass(frozen=True)
class Cluster:
    """Stands in for a backend's settings: one field of every annotation profiles read."""

    namespace: str = "default"
    port: int = field(default=4646, metadata={"check": positive})
    weight: float = 1.0
    tls: bool = False
    region: str | None = None
    datacenters: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    bind_host: str = field(default="127.0.0.1", metadata={"check": non_empty_text})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def cluster(tmp_path: Path, table: str) -> tuple[Path, Profile]:
    path = write(tmp_path, "[profiles.cluster]\nbackend = 'nomad'\n"
                           f"[profiles.cluster.nomad]\n{table}\n")
    return path, load_profiles(path, environ={})["cluster"]


def settings_error(profile: Profile) -> str:
    with pytest.raises(ProfileError) as info:
        engine_settings(profile, "nomad", Cluster)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    return message


def test_engine_tables_are_kept_per_engine_and_frozen(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [profiles.cluster]
        backend = "nomad"
        [profiles.cluster.nomad]
        datacenters = ["dc1", "dc2"]
        meta = { team = "ml" }
        [profiles.cluster.local]
        workspace_base = "/scratch"
    """)
    profile = load_profiles(path, environ={})["cluster"]
    assert set(profile.engine_tables) == {"nomad", "local"}
    assert isinstance(profile.engine_tables, MappingProxyType)
    nomad = profile.engine_tables["nomad"]
    assert isinstance(nomad, MappingProxyType) and isinstance(nomad["meta"], MappingProxyType)
    assert nomad["datacenters"] == ("dc1", "dc2")
    with pytest.raises(TypeError):
        nomad["meta"]["team"] = "x"  # type: ignore[index]
    assert profile.source == f"profiles file {str(path)!r}"


def test_engine_settings_read_every_supported_annotation(tmp_path: Path) -> None:
    _, profile = cluster(tmp_path, """
        namespace = "ml"
        port = 4647
        weight = 2
        tls = true
        region = "eu"
        datacenters = ["dc1"]
        meta = { team = "ml" }
    """)
    settings = engine_settings(profile, "nomad", Cluster)
    assert settings == Cluster(namespace="ml", port=4647, weight=2.0, tls=True, region="eu",
                               datacenters=("dc1",), meta={"team": "ml"})
    assert isinstance(settings.weight, float) and isinstance(settings.datacenters, tuple)
    with pytest.raises(TypeError):
        settings.meta["team"] = "x"  # type: ignore[index]
    assert hash(settings) == hash(engine_settings(profile, "nomad", Cluster))


def test_engine_settings_default_when_the_profile_has_no_table() -> None:
    assert engine_settings(load_profiles(environ={})["default"], "nomad", Cluster) == Cluster()


def test_wrong_type_in_engine_table_is_one_sentence(tmp_path: Path) -> None:
    path, profile = cluster(tmp_path, "namespace = 3")
    assert settings_error(profile) == (
        f"In the profiles file {str(path)!r}, profile 'cluster' key 'nomad.namespace' "
        "must be a string, got 3.")


@pytest.mark.parametrize("table, expected", [
    ("port = true", "key 'nomad.port' must be a whole number, got True"),
    ("port = 2.5", "key 'nomad.port' must be a whole number, got 2.5"),
    ("port = 0", "key 'nomad.port' must be greater than zero, got 0"),
    ("weight = nan", "key 'nomad.weight' must be a finite number, got nan"),
    ("weight = '1'", "key 'nomad.weight' must be a number, got '1'"),
    ("tls = 1", "key 'nomad.tls' must be true or false, got 1"),
    ("datacenters = 'dc1'", "key 'nomad.datacenters' must be a list of strings, got 'dc1'"),
    ("datacenters = ['a', 2]", "key 'nomad.datacenters' item 2 must be a string, got 2"),
    ("meta = { a = 1 }", "key 'nomad.meta' entry 'a' must be a string, got 1"),
    ("meta = ['a']", "key 'nomad.meta' must be a table of strings, got ('a',)"),
    ('bind_host = "a\\u0000b"',
     "key 'nomad.bind_host' must be a non-empty string without NUL characters, got 'a\\x00b'"),
])
def test_engine_values_are_checked_against_the_dataclass(tmp_path: Path, table: str,
                                                         expected: str) -> None:
    path, profile = cluster(tmp_path, table)
    expected = f"In the profiles file {str(path)!r}, profile 'cluster' {expected}."
    assert settings_error(profile) == expected


def test_unknown_engine_key_lists_the_valid_ones(tmp_path: Path) -> None:
    path, profile = cluster(tmp_path, "namspace = 'ml'")
    message = settings_error(profile)
    assert message.startswith(f"In the profiles file {str(path)!r}, profile 'cluster' key "
                              "'nomad.namspace' is not a nomad setting; valid keys are: ")
    assert "namespace" in message and "datacenters" in message


def test_string_annotations_are_resolved() -> None:
    assert all(isinstance(f.type, str) for f in dataclasses.fields(Cluster))
    profile = Profile(name="p", engine_tables={"nomad": {"region": None}})
    assert engine_settings(profile, "nomad", Cluster).region is None


def test_environment_sets_single_engine_keys_as_json_or_text(tmp_path: Path) -> None:
    path, _ = cluster(tmp_path, "namespace = 'ml'\nport = 1")
    profile = load_profiles(path, environ={
        "SANDBOX_MAGICS__CLUSTER__NOMAD__PORT": "4647",
        "SANDBOX_MAGICS__CLUSTER__NOMAD__DATACENTERS": '["dc1", "dc2"]',
        "SANDBOX_MAGICS__CLUSTER__NOMAD__REGION": "eu-west",
        "SANDBOX_MAGICS__DEFAULT__LOCAL__WORKSPACE_BASE": "/tmp/x",
    })["cluster"]
    settings = engine_settings(profile, "nomad", Cluster)
    assert (settings.namespace, settings.port, settings.datacenters, settings.region) == (
        "ml", 4647, ("dc1", "dc2"), "eu-west")
    assert profile.source == "environment variable 'SANDBOX_MAGICS__CLUSTER__NOMAD__REGION'"


def test_environment_engine_must_be_a_backend() -> None:
    with pytest.raises(ProfileError, match="SANDBOX_MAGICS__DEFAULT__K8S__X.*LOCAL, MODAL, NOMAD"):
        load_profiles(environ={"SANDBOX_MAGICS__DEFAULT__K8S__X": "1"})
    with pytest.raises(ProfileError, match="not of the form"):
        load_profiles(environ={"SANDBOX_MAGICS__DEFAULT__LOCAL__A__B": "1"})


@pytest.mark.parametrize("text, expected", [
    ("[profiles.p.k8s]\nx = 1\n",
     "profile 'p' key 'k8s' is a table, but the only tables in a profile are its engines'"),
    ("[profiles.p]\nlocal = 3\n",
     "profile 'p' key 'local' must be a table of local settings ([profiles.p.local]), got 3"),
    ("[profiles.p]\nworkspace_base = '/x'\n",
     "profile 'p' key 'workspace_base' is a setting of the local engine now: move it to "
     "[profiles.p.local] (in the environment: SANDBOX_MAGICS__P__LOCAL__WORKSPACE_BASE)"),
    ("[profiles.p]\nbind_host = '0.0.0.0'\n",
     "profile 'p' key 'bind_host' is a setting of the local engine now"),
    ("[profiles.p.local]\nx = " + "[" * 9 + "]" * 9 + "\n",
     "profile 'p' key 'local.x' is nested more than 8 levels deep"),
])
def test_bad_engine_tables_in_a_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profiles(path, environ={})
    assert str(info.value).startswith(f"In the profiles file {str(path)!r}, {expected}")


def test_old_style_environment_key_says_where_it_moved() -> None:
    with pytest.raises(ProfileError, match="SANDBOX_MAGICS__DEFAULT__LOCAL__WORKSPACE_BASE"):
        load_profiles(environ={"SANDBOX_MAGICS__DEFAULT__WORKSPACE_BASE": "/tmp/x"})


def test_profile_is_frozen_all_the_way_down() -> None:
    env = {"A": "1"}
    profile = Profile(name="p", env=env, secrets=["s"],  # type: ignore[arg-type]
                      engine_tables={"local": {"paths": ["a"]}})
    env["A"] = "2"
    assert profile.env == {"A": "1"} and profile.secrets == ("s",)
    assert profile.engine_tables["local"]["paths"] == ("a",)
    with pytest.raises(TypeError):
        profile.env["A"] = "3"  # type: ignore[index]
    assert dataclasses.replace(profile, max_sandboxes=5).env == {"A": "1"}


def test_profile_row_shows_engine_keys_not_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [profiles.p.local]
        workspace_base = "/secret/place"
        bind_host = "127.0.0.1"
        [profiles.p.nomad]
        namespace = "ml"
    """)
    row = load_profiles(path, environ={})["p"].as_row()
    assert row["settings"] == "local: bind_host, workspace_base; nomad: namespace"
    assert "/secret/place" not in str(row) and "engine_tables" not in row


def test_heartbeat_window_and_log_limit_are_positive_numbers(tmp_path: Path) -> None:
    default = load_profiles(environ={})["default"]
    assert (default.heartbeat_window, default.log_limit_mb) == (900.0, 1024.0)
    for key in ("heartbeat_window", "log_limit_mb"):
        with pytest.raises(ProfileError, match=f"key '{key}' must be greater than zero, got 0"):
            load_profiles(write(tmp_path, f"[profiles.p]\n{key} = 0\n"), environ={})
