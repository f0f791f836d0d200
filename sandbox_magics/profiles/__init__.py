"""Profiles: the definition of each pool, from built-ins, a TOML file and the environment.

A backend declares its engine's keys as a frozen dataclass and reads a profile's
``[profiles.NAME.<engine>]`` table with `engine_settings`; `non_empty_text`, `positive`
and `not_negative` are ready-made ``metadata={"check": ...}`` checks for its fields.
`shown_env_name` is how every error shows an environment variable's name (never a value);
`invalid` is the one sentence for a bad key.
"""

from ._loader import ENV_PREFIX, PROFILES_FILE_ENV, ProfileCache, load_profiles
from ._models import BACKENDS, Profile, non_empty_text, not_negative, positive
from ._values import engine_settings, invalid, shown_env_name

__all__ = ["BACKENDS", "ENV_PREFIX", "PROFILES_FILE_ENV", "Profile", "ProfileCache",
           "engine_settings", "invalid", "load_profiles", "non_empty_text", "not_negative",
           "positive", "shown_env_name"]
