"""The ``modal`` engine: sandboxes on Modal through the real ``modal`` SDK (see `backend`)."""

from .backend import Backend, ModalProcess, ModalSandbox
from .settings import Settings

__all__ = ["Backend", "ModalProcess", "ModalSandbox", "Settings"]
