"""The kernel bridge: the manager on its own loop thread, the Python API, cell streaming."""

from .client import Client

__all__ = ["Client"]
