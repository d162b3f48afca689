"""Token authentication, as Kernel Gateway clients send it, and who the request is.

``Authorization: token T`` (or ``Bearer T``) on requests, or ``?token=T`` on the URL,
which is how some clients authenticate WebSockets. The token is the gateway's one static
token (no particular user) or a user's own, as an identity source knows it (the users file,
JupyterHub: :class:`raygate.users.IdentitySource`, asked in that order); a trusted proxy's
header may name the user too. The user, or None, and their groups go on the scope for the
handlers (:func:`raygate.users.authenticated_user`, :func:`~raygate.users.authenticated_groups`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .errors import APIError, deny_websocket, error_response
from .users import GROUPS_SCOPE_KEY, USER_SCOPE_KEY, IdentitySource, Principal, header_user


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
        identities: Sequence[IdentitySource] = (),
        user_header: str = "",
    ) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = frozenset(open_paths)
        """Exact paths served without a token (health probes)."""
        self.identities = tuple(identities)
        """Where per-user tokens are checked, in order; with any a token is required even
        without a static one."""
        self.user_header = user_header
        """Header a trusted authenticating proxy names the user in (empty: none)."""

    async def identify(self, scope: Scope) -> tuple[bool, Principal | None]:
        """Whether the request may pass, and its authenticated user (None: no one in
        particular). Raises :class:`APIError` when an identity source cannot tell (the
        Hub down), except on open paths, which stay served (health probes)."""
        user = None
        if self.token or self.identities:
            token = presented_token(scope)
            static = (
                bool(self.token)
                and token is not None
                and hmac.compare_digest(token.encode(), self.token)
            )
            if token and not static:
                try:
                    for source in self.identities:
                        user = await source.principal_for(token)
                        if user is not None:
                            break
                except APIError:
                    if scope.get("path") in self.open_paths:
                        return True, None
                    raise
            if user is None and not static:
                return scope.get("path") in self.open_paths, None
        if user is None and self.user_header:
            name = header_user(scope, self.user_header)
            user = Principal(name) if name else None
        return True, user

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            allowed, user = await self.identify(scope)
        except APIError as exc:
            await self._deny(scope, receive, send, exc.status, exc.message)
            return
        if allowed:
            scope[USER_SCOPE_KEY] = user.name if user else None
            scope[GROUPS_SCOPE_KEY] = user.groups if user else frozenset()
            await self.app(scope, receive, send)
            return
        await self._deny(scope, receive, send, 401, "Missing or invalid authentication token")

    async def _deny(
        self, scope: Scope, receive: Receive, send: Send, status: int, message: str
    ) -> None:
        if scope["type"] == "websocket":
            await deny_websocket(WebSocket(scope, receive, send), status, message)
        else:
            await error_response(status, message)(scope, receive, send)
