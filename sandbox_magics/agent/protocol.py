"""The agent's wire protocol, shared by the agent and its client (stdlib only).

``POST /v1/slots/{slot}/exec`` and ``GET /v1/slots/{slot}/runs/{run_id}/output`` answer
with a stream of frames: a 5-byte header (kind: 1 byte, payload length: 4 bytes
big-endian) and the payload. ``START``, ``EXIT`` and ``DROPPED`` carry JSON;
``STDOUT``/``STDERR`` carry raw bytes as the process produced them.

A run's output offsets count the bytes of its STDOUT and STDERR payloads together, in the
order the run wrote them. START says at which offset the stream's output begins;
DROPPED (``{"offset": ..., "dropped": ...}``) stands for output the agent no longer keeps
and says at which offset the output goes on.
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
DROPPED = 4

HEADER = struct.Struct(">BI")
MAX_CHUNK = 64 * 1024
EXIT_NOT_FOUND = 127


def frame(kind: int, payload: bytes | memoryview) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: int, data: dict[str, Any]) -> bytes:
    return frame(kind, json.dumps(data).encode())
