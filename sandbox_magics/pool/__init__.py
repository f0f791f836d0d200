"""The in-kernel pool: one `Pool` per profile, sandboxes × slots, leased to runs."""

from .pool import Pool
from .state import Lease, PoolEvent, SandboxState

__all__ = ["Lease", "Pool", "PoolEvent", "SandboxState"]
