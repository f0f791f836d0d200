"""Live Python in a sandbox: a kernel session (`KernelSession`) runs the bridge program
(`bridge`) in a session slot and serves many cells, their displays and variables."""

from .session import KernelSession, KernelState, Reply

__all__ = ["KernelSession", "KernelState", "Reply"]
