"""IPython magics: ``%%sandbox`` and ``%sandbox``."""

from .sandbox import SandboxMagics

__all__ = ["SandboxMagics"]
