"""Token authentication, as Kernel Gateway clients send it.

``Authorization: token T`` (or ``Bearer T``) on requests, or ``?token=T`` on the URL,
which is how some clients authenticate WebSockets.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .errors import error_response


def presented_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() in ("token", "bearer"):
                return token.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "token" in query:
        return query["token"][0]
    return None


class TokenAuthMiddleware:
    def __init__(self, app: ASGIApp, token: str, open_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = frozenset(open_paths)
        """Exact paths served without a token (health probes)."""

    def allowed(self, scope: Scope) -> bool:
        if not self.token or scope.get("path") in self.open_paths:
            return True
        token = presented_token(scope)
        return token is not None and hmac.compare_digest(token.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(401, "Missing or invalid authentication token")
        if scope["type"] == "websocket":
            await WebSocket(scope, receive, send).send_denial_response(response)
        else:
            await response(scope, receive, send)
