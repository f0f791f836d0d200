"""Profiles: built-ins, file and environment overrides, and one-sentence errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_magics import ProfileError, load_profiles


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    return path


def test_builtins_exist_and_run_locally() -> None:
    profiles = load_profiles(environ={})
    assert {"default", "pytorch-gpu", "high-memory"} <= set(profiles)
    assert all(p.backend == "local" for p in profiles.values())
    assert profiles["pytorch-gpu"].gpu and profiles["pytorch-gpu"].slots_per_sandbox == 1


def test_file_overrides_builtins_and_adds_profiles(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [profiles.default]
        max_sandboxes = 5
        [profiles.cpu-big]
        cpu = 8
        env = { MODE = "fast" }
        secrets = ["hf-token"]
    """)
    profiles = load_profiles(path, environ={})
    assert profiles["default"].max_sandboxes == 5 and profiles["default"].slots_per_sandbox == 4
    assert profiles["cpu-big"].cpu == 8.0 and profiles["cpu-big"].env == {"MODE": "fast"}
    assert profiles["cpu-big"].secrets == ("hf-token",)


def test_file_from_environment_variable_then_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[profiles.default]\nmax_sandboxes = 5\n")
    profiles = load_profiles(environ={
        "SANDBOX_MAGICS_PROFILES": str(path),
        "SANDBOX_MAGICS__DEFAULT__MAX_SANDBOXES": "7",
        "SANDBOX_MAGICS__PYTORCH_GPU__BACKEND": "modal",
    })
    assert profiles["default"].max_sandboxes == 7
    assert profiles["pytorch-gpu"].backend == "modal"


@pytest.mark.parametrize("text, expected", [
    ("[profiles.default\n", "is not valid TOML"),
    ("[profiles.default]\nslots = 2\n", "profile 'default' key 'slots' is not a profile key"),
    ("[profiles.default]\nslots_per_sandbox = 0\n",
     "profile 'default' key 'slots_per_sandbox' must be greater than zero, got 0"),
    ("[profiles.gpu]\nslots_per_sandbox = -2\n",
     "profile 'gpu' key 'slots_per_sandbox' must be greater than zero, got -2"),
    ("[profiles.default]\nslots_per_sandbox = 'four'\n",
     "key 'slots_per_sandbox' must be a whole number, got 'four'"),
    ("[profiles.default]\nbackend = 'k8s'\n",
     "key 'backend' must be one of local, modal, nomad, got 'k8s'"),
    ("[profiles.x]\nmin_sandboxes = 3\nmax_sandboxes = 1\n",
     "profile 'x' key 'min_sandboxes' (3) is larger than max_sandboxes (1)"),
    ("[profile.default]\n", "unknown top-level key 'profile'"),
    ("[profiles]\ndefault = 3\n", "profile 'default' must be a table"),
    ("profiles = 3\n", "'profiles' must be a table of [profiles.NAME] tables, got 3"),
])
def test_bad_files_name_file_profile_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profiles(path, environ={})
    message = str(info.value)
    assert expected in message and str(path) in message
    assert "\n" not in message


def test_missing_file_says_where_it_was_set(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="Cannot read profiles file .*nope.toml.*SANDBOX_MAGICS_PROFILES"):
        load_profiles(tmp_path / "nope.toml", environ={})


def test_bad_environment_override_names_the_variable() -> None:
    with pytest.raises(ProfileError, match=r"SANDBOX_MAGICS__DEFAULT__SLOTS_PER_SANDBOX.*'many'"):
        load_profiles(environ={"SANDBOX_MAGICS__DEFAULT__SLOTS_PER_SANDBOX": "many"})
    with pytest.raises(ProfileError, match="not of the form"):
        load_profiles(environ={"SANDBOX_MAGICS__DEFAULT": "1"})


def test_profile_rows_show_secret_names_not_values(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.s]\nsecrets = ["db"]\nenv = { TOKEN = "hunter2" }\n')
    row = load_profiles(path, environ={})["s"].as_row()
    assert row["secrets"] == "db" and row["env"] == "TOKEN" and "hunter2" not in str(row)


def test_errors_about_env_never_show_its_values(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.s]\nenv = { API_KEY = "sk-hunter2", PORT = 8080 }\n')
    with pytest.raises(ProfileError) as info:
        load_profiles(path, environ={})
    assert "entry 'PORT' must be a string, got a int" in str(info.value)
    assert "hunter2" not in str(info.value) and "8080" not in str(info.value)
    with pytest.raises(ProfileError) as info:
        load_profiles(environ={"SANDBOX_MAGICS__DEFAULT__ENV": "TOKEN=sk-hunter2"})
    assert "hunter2" not in str(info.value) and "SANDBOX_MAGICS__DEFAULT__ENV" in str(info.value)


def error_of(path: Path | None = None, environ: dict[str, str] | None = None) -> str:
    """The message of the ProfileError that loading raises; it must be one line."""
    with pytest.raises(ProfileError) as info:
        load_profiles(path, environ=environ or {})
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_deeply_nested_file_is_a_sentence_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[profiles.default]\nsecrets = " + "[" * 5000 + "]" * 5000 + "\n")
    assert f"profiles file {str(path)!r}" in error_of(path)


def test_deeply_nested_environment_json_names_the_variable() -> None:
    var = "SANDBOX_MAGICS__DEFAULT__SECRETS"
    message = error_of(environ={var: "[" * 100_000 + "]" * 100_000})
    assert var in message


def test_non_utf8_file_is_a_sentence_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_bytes(b"[profiles.default]\nimage = \"caf\xe9\"\n")
    message = error_of(path)
    assert str(path) in message and "UTF-8" in message


@pytest.mark.parametrize("text, expected", [
    ('env = { "A=B" = "1" }', "key 'env' entry 'A=…' is not a variable name"),
    ('env = { "" = "1" }', "key 'env' entry '' is not a variable name"),
    ('env = { "1A" = "1" }', "key 'env' entry '1A' is not a variable name"),
    ('env = { "A B" = "1" }', "key 'env' entry 'A B' is not a variable name"),
    ('env = { A = "x\\u0000y" }', "key 'env' entry 'A' must not contain a NUL character"),
    ('image = "a\\u0000b"', "key 'image' must be a non-empty string without NUL characters"),
    ('secrets = ["a\\u0000b"]', "key 'secrets' must list non-empty names without NUL characters"),
    ('secrets = [""]', "key 'secrets' must list non-empty names without NUL characters"),
    ("artifact_limit_mb = -1", "key 'artifact_limit_mb' must be zero or more, got -1"),
    ("cpu = nan", "key 'cpu' must be a finite number, got nan"),
    ("idle_timeout = inf", "key 'idle_timeout' must be a finite number, got inf"),
    ("lifetime = -inf", "key 'lifetime' must be a finite number, got -inf"),
    ("cpu = 1" + "0" * 400, "key 'cpu' must be a finite number, got a whole number with more than"),
    ("max_sandboxes = 1" + "0" * 400,
     "key 'max_sandboxes' must be a whole number of at most 18 digits, got a whole number"),
    ("cpu = true", "key 'cpu' must be a number, got True"),
    ("max_sandboxes = false", "key 'max_sandboxes' must be a whole number, got False"),
    ("run_timeout = 1.5e400", "key 'run_timeout' must be a finite number, got inf"),
])
def test_bad_values_name_file_profile_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, f"[profiles.p]\n{text}\n")
    message = error_of(path)
    assert f"In the profiles file {str(path)!r}, profile 'p' {expected}" in message
    assert "\\x00y" not in message


def test_huge_numbers_in_a_file_are_a_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, "[profiles.p]\nmemory_mb = " + "9" * 5000 + "\n")
    message = error_of(path)
    assert str(path) in message and "digits" in message and len(message) < 300


def test_huge_numbers_in_environment_json_name_the_variable() -> None:
    var = "SANDBOX_MAGICS__DEFAULT__MAX_SANDBOXES"
    assert error_of(environ={var: "9" * 5000}).startswith(
        f"The environment variable {var!r} has a number with more than 4300 digits")
    assert "at most 18 digits" in error_of(environ={var: "9" * 400})


def test_environment_override_error_says_environment_once() -> None:
    message = error_of(environ={"SANDBOX_MAGICS__DEFAULT__CPU": "-1"})
    assert "the the" not in message
    assert message.startswith("In the environment variable 'SANDBOX_MAGICS__DEFAULT__CPU', "
                              "profile 'default' key 'cpu' must be greater than zero")


def test_one_variable_moves_every_builtin_profile_to_another_engine(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[profiles.mine]\nslots_per_sandbox = 2\n\n[profiles.high-memory]\nbackend = "local"\n')
    profiles = load_profiles(path, environ={"SANDBOX_MAGICS_BACKEND": "modal"})
    assert profiles["default"].backend == profiles["pytorch-gpu"].backend == "modal"
    assert profiles["high-memory"].backend == "local" and profiles["mine"].backend == "local"
    with pytest.raises(ProfileError, match="SANDBOX_MAGICS_BACKEND.*must be one of"):
        load_profiles(environ={"SANDBOX_MAGICS_BACKEND": "k8s"})
