"""The ``modal`` engine: sandboxes on Modal through the real ``modal`` SDK (see `backend`)."""

from .backend import MODAL_VERSION, Backend, ModalProcess, ModalSandbox
from .settings import Settings

__all__ = ["MODAL_VERSION", "Backend", "ModalProcess", "ModalSandbox", "Settings"]
