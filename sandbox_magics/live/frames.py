"""The kernel bridge's frames on the kernel's side: encode requests, split output into frames.

The format (`bridge.HEADER`: a kind byte and a payload length, then the payload) is
defined once, in the bridge, which must stand alone in the sandbox.
"""

from __future__ import annotations

import json
from typing import Any

from .bridge import HEADER


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame: header, then ``payload``."""
    return HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, obj: Any) -> bytes:
    return frame(kind, json.dumps(obj).encode())


class FrameReader:
    """Splits a byte stream, fed in chunks of any size, into (kind, payload) frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The frames ``data`` completes, in order; a partial frame waits for more."""
        self._buffer += data
        frames, at = [], 0
        while len(self._buffer) - at >= HEADER.size:
            kind, size = HEADER.unpack_from(self._buffer, at)
            end = at + HEADER.size + size
            if end > len(self._buffer):
                break
            frames.append((kind, bytes(self._buffer[at + HEADER.size:end])))
            at = end
        del self._buffer[:at]
        return frames
