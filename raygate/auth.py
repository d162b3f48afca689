"""Token authentication, as Kernel Gateway clients send it, and who the request is.

``Authorization: token T`` (or ``Bearer T``) on requests, or ``?token=T`` on the URL,
which is how some clients authenticate WebSockets. The token is the gateway's one static
token (no particular user) or a user's own from the users file; a trusted proxy's header
may name the user too. The user, or None, goes on the scope for the handlers
(:func:`raygate.users.authenticated_user`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .errors import error_response
from .users import USER_SCOPE_KEY, UsersFile, header_user


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
    def __init__(
        self,
        app: ASGIApp,
        token: str,
        open_paths: Iterable[str] = (),
        users: UsersFile | None = None,
        user_header: str = "",
    ) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = frozenset(open_paths)
        """Exact paths served without a token (health probes)."""
        self.users = users
        """Per-user tokens; with them a token is required even without a static one."""
        self.user_header = user_header
        """Header a trusted authenticating proxy names the user in (empty: none)."""

    def identify(self, scope: Scope) -> tuple[bool, str | None]:
        """Whether the request may pass, and its authenticated user (None: no one in
        particular)."""
        user = None
        if self.token or self.users is not None:
            token = presented_token(scope)
            if token is not None and self.users is not None:
                user = self.users.user_for(token)
            static = (
                bool(self.token)
                and token is not None
                and hmac.compare_digest(token.encode(), self.token)
            )
            if user is None and not static:
                return scope.get("path") in self.open_paths, None
        if user is None and self.user_header:
            user = header_user(scope, self.user_header)
        return True, user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        allowed, user = self.identify(scope)
        if allowed:
            scope[USER_SCOPE_KEY] = user
            await self.app(scope, receive, send)
            return
        response = error_response(401, "Missing or invalid authentication token")
        if scope["type"] == "websocket":
            await WebSocket(scope, receive, send).send_denial_response(response)
        else:
            await response(scope, receive, send)
