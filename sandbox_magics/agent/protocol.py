"""The agent's wire protocol, shared by the agent and its client (stdlib only).

``POST /v1/slots/{slot}/exec`` answers with a stream of frames: a 5-byte header
(kind: 1 byte, payload length: 4 bytes big-endian) and the payload. ``START`` and ``EXIT``
carry JSON; ``STDOUT``/``STDERR`` carry raw bytes as the process produced them.
"""

from __future__ import annotations

import json
import struct
from typing import Any

API = "/v1"
TOKEN_ENV = "SANDBOX_AGENT_TOKEN"
FRAME_CONTENT_TYPE = "application/x-sandbox-frames"

START = 0
STDOUT = 1
STDERR = 2
EXIT = 3

HEADER = struct.Struct(">BI")
MAX_CHUNK = 64 * 1024
EXIT_NOT_FOUND = 127


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def frames(groups: list[tuple[int, list[bytes]]]) -> bytes:
    """One frame per (kind, chunks) group, all joined in a single copy."""
    parts: list[bytes] = []
    for kind, chunks in groups:
        parts.append(HEADER.pack(kind, sum(len(chunk) for chunk in chunks)))
        parts.extend(chunks)
    return b"".join(parts)


def json_frame(kind: int, data: dict[str, Any]) -> bytes:
    return frame(kind, json.dumps(data).encode())
