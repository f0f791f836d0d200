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
