"""Bearer-token middleware: a request without the agent's token is refused before routing.

The header is compared as the bytes that were sent (aiohttp keeps bytes that are not
UTF-8 as surrogate escapes), so any header, even one that is not text, is a plain 401.
An engine that must write what the agent is started with into a spec others can read
(a Nomad job) gives a `TokenDigest` instead: the hex SHA-256 of the token, compared with
the digest of the token sent, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenDigest(str):
    """The lowercase hex SHA-256 of the agent's token, given in place of the token."""


def bearer_auth(token: str) -> Middleware:
    """Return middleware that answers 401 unless ``Authorization: Bearer <token>`` matches
    (or, for a `TokenDigest`, unless the sent token's SHA-256 is that digest)."""
    expected = f"Bearer {token}".encode()
    digest = token.lower().encode() if isinstance(token, TokenDigest) else None

    def matches(given: bytes) -> bool:
        if digest is None:
            return hmac.compare_digest(given, expected)
        sent = given[len(b"Bearer "):] if given.startswith(b"Bearer ") else b""
        return hmac.compare_digest(hashlib.sha256(sent).hexdigest().encode(), digest)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not matches(given):
            return web.json_response(
                {"error": "the bearer token is missing or wrong; send the token the agent "
                          "was started with as 'Authorization: Bearer <token>'"}, status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return middleware
