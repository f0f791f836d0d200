"""Bearer-token middleware: a request without the agent's token is refused before routing.

The header is compared as the bytes that were sent (aiohttp keeps bytes that are not
UTF-8 as surrogate escapes), so any header, even one that is not text, is a plain 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_auth(token: str) -> Middleware:
    """Return middleware that answers 401 unless ``Authorization: Bearer <token>`` matches."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "the bearer token is missing or wrong; send the token the agent "
                          "was started with as 'Authorization: Bearer <token>'"}, status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return middleware
