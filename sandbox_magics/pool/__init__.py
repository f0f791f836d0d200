"""The in-kernel pool: one `Pool` per profile, sandboxes × slots, leased to runs."""

from .pool import Pool
from .state import EventKind, Lease, PoolEvent, SandboxState, SlotState
from .status import PoolCounts, PoolStatus, SandboxStatus

__all__ = ["EventKind", "Lease", "Pool", "PoolCounts", "PoolEvent", "PoolStatus", "SandboxState",
           "SandboxStatus", "SlotState"]
