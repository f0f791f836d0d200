"""The keys of ``[profiles.NAME.nomad]``, each checked when the profile is read."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...profiles import non_empty_text, positive

DEFAULT_ADDRESS = "http://127.0.0.1:4646"
DRIVERS = ("docker", "raw_exec")
OPERATORS = ("=", "==", "!=", "<", "<=", ">", ">=", "regexp", "set_contains",
             "set_contains_any", "version", "semver", "is_set", "is_not_set",
             "distinct_hosts", "distinct_property")
_ADDRESS = re.compile(r"https?://[^\s/]+/?")
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _address(value: str) -> None:
    if not _ADDRESS.fullmatch(value):
        raise ValueError("must be an http:// or https:// address such as "
                         f"{DEFAULT_ADDRESS}")


def _variable(value: str) -> None:
    if not _VARIABLE.fullmatch(value):
        raise ValueError("must be the name of an environment variable")


def _driver(value: str) -> None:
    if value not in DRIVERS:
        raise ValueError(f"must be one of {', '.join(DRIVERS)}")


def _prefix(value: str) -> None:
    if not _PREFIX.fullmatch(value):
        raise ValueError("must be 1 to 41 letters, digits, '_', '.' or '-', starting with a "
                         "letter or digit")


def _names(values: tuple[str, ...]) -> None:
    if not values or not all(v and "\0" not in v for v in values):
        raise ValueError("must list one or more non-empty names")


def _constraints(values: tuple[Mapping[str, str], ...]) -> None:
    for i, item in enumerate(values, 1):
        unknown = set(item) - {"attribute", "operator", "value"}
        if unknown:
            raise ValueError(f"item {i} has unknown key(s) {', '.join(sorted(unknown))}; "
                             "use attribute, operator and value")
        if not item.get("attribute") and item.get("operator") not in ("distinct_hosts",):
            raise ValueError(f"item {i} needs an attribute, e.g. '${{attr.kernel.name}}'")
        if item.get("operator", "=") not in OPERATORS:
            raise ValueError(f"item {i} has operator {item['operator']!r}; use one of "
                             f"{', '.join(OPERATORS)}")


@dataclass(frozen=True)
class Settings:
    """Keys of ``[profiles.NAME.nomad]``.

    Args:
        address: the Nomad HTTP API (default: ``$NOMAD_ADDR``, else ``http://127.0.0.1:4646``).
        token_env: the environment variable holding the ACL token (default ``NOMAD_TOKEN``);
            the token itself is never written in a profiles file.
        namespace, region: where jobs go (default: Nomad's, or ``$NOMAD_NAMESPACE`` /
            ``$NOMAD_REGION``).
        datacenters: datacenters a sandbox may be placed in (default: all, ``["*"]``).
        node_pool: the node pool (default: Nomad's ``default``).
        driver: ``docker`` runs the profile's image (real clusters); ``raw_exec`` runs the
            agent from a ``sandbox_magics`` installed on the node (development machines).
        python: the Python that runs the agent (in the image, or on the node for raw_exec);
            it must be able to import ``sandbox_magics`` and aiohttp.
        job_prefix: the start of every job's name, also how ``discover`` finds them.
        constraints: extra placement constraints, tables of ``attribute``, ``operator``
            and ``value`` as in a job file's ``constraint`` block.
        mhz_per_cpu: CPU MHz asked of Nomad per unit of the profile's ``cpu``.
        gpu_device: the device name asked for when the profile has a ``gpu``.
        ca_cert: a CA bundle to check an https address against (default: the system's).
        api_timeout: seconds one Nomad API call may take before it counts as unanswered.
    """

    address: str | None = field(default=None, metadata={"check": _address})
    token_env: str = field(default="NOMAD_TOKEN", metadata={"check": _variable})
    namespace: str | None = field(default=None, metadata={"check": non_empty_text})
    region: str | None = field(default=None, metadata={"check": non_empty_text})
    datacenters: tuple[str, ...] = field(default=("*",), metadata={"check": _names})
    node_pool: str | None = field(default=None, metadata={"check": non_empty_text})
    driver: str = field(default="docker", metadata={"check": _driver})
    python: str = field(default="python3", metadata={"check": non_empty_text})
    job_prefix: str = field(default="sandbox-magics-", metadata={"check": _prefix})
    constraints: tuple[Mapping[str, str], ...] = field(default=(),
                                                       metadata={"check": _constraints})
    mhz_per_cpu: int = field(default=1000, metadata={"check": positive})
    gpu_device: str = field(default="nvidia/gpu", metadata={"check": non_empty_text})
    ca_cert: str | None = field(default=None, metadata={"check": non_empty_text})
    api_timeout: float = field(default=10.0, metadata={"check": positive})

    def resolved_address(self) -> str:
        """The address to call: the setting, else ``$NOMAD_ADDR``, else the default."""
        return (self.address or os.environ.get("NOMAD_ADDR") or DEFAULT_ADDRESS).rstrip("/")
