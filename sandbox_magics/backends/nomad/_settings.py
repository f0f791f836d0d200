"""The keys of ``[profiles.NAME.nomad]``, each checked when the profile is read."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...profiles import Profile, invalid, non_empty_text, positive

DEFAULT_ADDRESS = "http://127.0.0.1:4646"
MIN_MEMORY_MB = 10      # Resources.MeetsMinResources (nomad/structs/structs.go)
DRIVERS = ("docker", "raw_exec")
# Nomad's constraint operators (nomad/structs/structs.go, Constraint.Validate): which need
# a value, which take none, and the attributes a constraint may name (structs/constraint.go).
NEEDS_VALUE = ("=", "==", "is", "!=", "not", "<", "<=", ">", ">=", "regexp", "set_contains",
               "set_contains_all", "set_contains_any", "version", "semver")
NO_VALUE = ("is_set", "is_not_set")
OPERATORS = (*NEEDS_VALUE, *NO_VALUE, "distinct_hosts", "distinct_property")
_NODE_TARGETS = ("${node.unique.id}", "${node.datacenter}", "${node.unique.name}",
                 "${node.class}", "${node.pool}")
_TARGET_PREFIXES = ("${attr.", "${device.", "${meta.")
# Perl syntax Go's RE2 refuses though Python compiles it: lookarounds, atomic groups,
# conditionals, backreferences, possessive quantifiers.
_NOT_RE2 = re.compile(r"\(\?(?:[=!>|(]|<[=!]|P=)|\\[1-9]|(?<!\\)[*+?}]\+")
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


def regexp_problem(pattern: str) -> str | None:
    """Why Nomad (Go's RE2) would refuse ``pattern`` as a regular expression, or None."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    found = _NOT_RE2.search(pattern)
    return f"{found.group(0)!r} is not in Go's RE2 syntax" if found else None


def _constraint(item: Mapping[str, str]) -> str | None:
    """What Nomad would refuse in one constraint table, or None."""
    unknown = set(item) - {"attribute", "operator", "value"}
    if unknown:
        return (f"has unknown key(s) {', '.join(sorted(unknown))}; use attribute, operator "
                "and value")
    attribute, operator, value = (item.get("attribute", ""), item.get("operator", "="),
                                  item.get("value", ""))
    if operator not in OPERATORS:
        return f"has operator {operator!r}; use one of {', '.join(OPERATORS)}"
    if not attribute and operator != "distinct_hosts":
        return "needs an attribute, e.g. '${attr.kernel.name}'"
    if attribute.startswith("$") and not (attribute in _NODE_TARGETS or (
            attribute.startswith(_TARGET_PREFIXES) and attribute.endswith("}"))):
        return (f"has attribute {attribute!r}, which Nomad cannot resolve; use ${{attr.…}}, "
                f"${{meta.…}}, ${{device.…}} or one of {', '.join(_NODE_TARGETS)}")
    if operator in NEEDS_VALUE and not value:
        return f"has operator {operator!r}, which needs a value"
    if operator in NO_VALUE and value:
        return f"has operator {operator!r}, which takes no value; remove value {value!r}"
    problem = regexp_problem(value) if operator == "regexp" else None
    if problem:
        return f"has a value Nomad cannot compile as a regular expression ({problem})"
    if operator == "distinct_property" and value and not (value.isdigit() and int(value) > 0):
        return "has operator 'distinct_property', whose value must be a count of 1 or more"
    return None


def _constraints(values: tuple[Mapping[str, str], ...]) -> None:
    for i, item in enumerate(values, 1):
        problem = _constraint(item)
        if problem:
            raise ValueError(f"item {i} {problem}")


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
        image_pull_timeout: seconds the docker driver may pull the image (its
            ``image_pull_timeout``); a pull does not count against ``start_timeout``.
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
    image_pull_timeout: float = field(default=1800.0, metadata={"check": positive})

    def check_profile(self, profile: Profile) -> None:
        """Refuse, before any job is registered, a profile value Nomad would refuse.

        Raises:
            ProfileError: naming the key.
        """
        if int(profile.memory_mb) < MIN_MEMORY_MB:
            raise invalid(profile.source, profile.name, "memory_mb",
                          f"is {profile.memory_mb:g} MB, below the {MIN_MEMORY_MB} MB Nomad "
                          f"requires of a task; set it to {MIN_MEMORY_MB} or more")

    def resolved_address(self) -> str:
        """The address to call: the setting, else ``$NOMAD_ADDR``, else the default."""
        return (self.address or os.environ.get("NOMAD_ADDR") or DEFAULT_ADDRESS).rstrip("/")
