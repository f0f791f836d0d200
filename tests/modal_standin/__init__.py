"""A local stand-in of Modal's gRPC API, driven by the real ``modal`` package (see `server`).

Run by hand with ``python -m tests.modal_standin --port 8765``, then point the client at
it: ``MODAL_SERVER_URL=http://127.0.0.1:8765 MODAL_TOKEN_ID=x MODAL_TOKEN_SECRET=y``.
"""

from .server import GPU_TYPES, StandIn, serve_in_thread

__all__ = ["GPU_TYPES", "StandIn", "serve_in_thread"]
