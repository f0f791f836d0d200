"""Profiles: the definition of each pool, from built-ins, a TOML file and the environment."""

from ._loader import ENV_PREFIX, PROFILES_FILE_ENV, ProfileCache, load_profiles
from ._models import BACKENDS, Profile

__all__ = ["BACKENDS", "ENV_PREFIX", "PROFILES_FILE_ENV", "Profile", "ProfileCache", "load_profiles"]
