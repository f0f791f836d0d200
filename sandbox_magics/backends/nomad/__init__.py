"""The ``nomad`` backend: each sandbox is one Nomad batch job whose task runs the agent.

Configured in ``[profiles.NAME.nomad]`` (`Settings`); talks to Nomad's HTTP API through
python-nomad (`_api`), builds one job per sandbox (`_job`), and serves the agent's slots
through `AgentSandbox` (`_backend`). Agent traffic is plain HTTP inside the cluster's
network, authenticated by a bearer token whose SHA-256 alone is in the job.
"""

from __future__ import annotations

from ._backend import Backend, NomadSandbox
from ._settings import Settings

__all__ = ["Backend", "NomadSandbox", "Settings"]
