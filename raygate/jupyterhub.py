"""JupyterHub as a source of identity: raygate as a Hub service.

A client's token (a Hub user's API token, or their notebook server's own
``JUPYTERHUB_API_TOKEN``) is checked the way JupyterHub's own ``HubAuth`` does
(``jupyterhub/services/auth.py``, ``user_for_token``): ``GET {api_url}/user`` with
``Authorization: token <the client's token>``. The Hub answers with the token owner's model,
whose ``name`` and ``groups`` it always includes for a user's own token (the identify scopes
``read:users:name!user`` and ``read:users:groups!user``, ``jupyterhub/scopes.py``
``identify_scopes``), and ``scopes``: what the token may do. A token that is nobody's (or
revoked, or of a deleted user) gets a 403 from the Hub. As for any Hub service, the token
must grant access to this service, ``access:services!service=<this service's name>`` (or
all services, ``access:services``), which HubAuth requires by default too; this service's
name is what the Hub says of this service's own token.

Answers are kept ``cache_seconds`` (a revoked token stops working within that time; a
cached identity keeps working while the Hub is down, for that time). A Hub that cannot be
reached is a 503, one that answers garbage or a 5xx a 502: never a 500, and never cached.
Called by the auth middleware (:class:`raygate.auth.TokenAuthMiddleware`), as an
:class:`~raygate.users.IdentitySource`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx

from .errors import APIError
from .users import Principal

log = logging.getLogger("raygate.jupyterhub")

HUB_TIMEOUT = 10.0
"""Seconds one question to the Hub may take before the request gets a 503."""
CACHE_ENTRIES = 10_000
"""Tokens remembered at most (oldest forgotten first): tokens are what clients send, so a
flood of made-up ones must not grow the cache without bound."""


class NotAllowed(Exception):
    """A Hub user whose token does not grant access to this service (403)."""


class HubIdentity:
    """Hub users by their tokens, through the Hub's REST API at ``api_url``; ``token``:
    this service's own API token (only used to learn this service's name)."""

    def __init__(
        self,
        api_url: str,
        token: str,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Principal | NotAllowed | None]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Principal | NotAllowed | None]] = {}
        self._service: str | None = None
        self._client: httpx.AsyncClient | None = None

    # -- the Hub's API ---------------------------------------------------------------------

    async def ask(self, token: str) -> tuple[int, Any]:
        """``GET {api_url}/user`` as ``token``: the status and the JSON body (None when it
        is not JSON). Raises :class:`APIError` 503 when the Hub cannot be reached."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=HUB_TIMEOUT)
        try:
            response = await self._client.get(
                self.api_url + "/user", headers={"Authorization": f"token {token}"}
            )
        except httpx.HTTPError as exc:
            log.warning("JupyterHub at %s did not answer: %r", self.api_url, exc)
            raise APIError(
                503,
                f"JupyterHub did not answer at {self.api_url} ({type(exc).__name__}), so the "
                "token cannot be checked; try again later",
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        return response.status_code, body

    async def close(self) -> None:
        """Close the connections to the Hub (at the gateway's shutdown)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def service_name(self) -> str:
        """This service's name, as the Hub says of its own token (asked once)."""
        if self._service is None:
            status, body = await self.ask(self.token)
            model = _model(status, body, self.api_url)
            if model is None or model.get("kind") != "service":
                raise APIError(
                    502,
                    f"JupyterHub at {self.api_url} does not take this gateway's "
                    "JUPYTERHUB_API_TOKEN for a service's token (its answer: "
                    f"{status}); the Hub's service registration and this token must match",
                )
            self._service = str(model["name"])
            log.info(
                "JupyterHub at %s: this gateway is its service %r", self.api_url, self._service
            )
        return self._service

    # -- IdentitySource --------------------------------------------------------------------

    async def principal_for(self, token: str) -> Principal | None:
        """The Hub user whose token this is, with their groups; None when the Hub says it
        is nobody's, a service's, or revoked. Raises :class:`APIError`: 403 for a user
        whose token does not grant access to this service, 502/503 when the Hub cannot
        tell (nothing cached then)."""
        key = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            answer = cached[1]
        else:
            # Requests that arrive together with one token (a notebook server's first
            # kernelspecs, kernels and sessions calls) share one question to the Hub.
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = asyncio.ensure_future(self._check(token))
                pending.add_done_callback(lambda done: self._settled(key, done))
            answer = await asyncio.shield(pending)
            if self.cache_seconds > 0:
                self._cache[key] = (self.clock() + self.cache_seconds, answer)
                self._cache.move_to_end(key)
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        if isinstance(answer, NotAllowed):
            raise APIError(403, str(answer))
        return answer

    def _settled(self, key: bytes, done: asyncio.Future[Any]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too: every waiter may have gone meanwhile

    async def _check(self, token: str) -> Principal | NotAllowed | None:
        status, body = await self.ask(token)
        model = _model(status, body, self.api_url)
        if model is None:
            return None
        if model.get("kind", "user") != "user":
            log.info(
                "JupyterHub token of %s %r refused: not a user's", model.get("kind"), model["name"]
            )
            return None
        service = await self.service_name()
        scopes = model.get("scopes")
        if not isinstance(scopes, list):
            raise APIError(502, f"JupyterHub at {self.api_url} answered a user without scopes")
        needed = f"access:services!service={service}"
        if needed not in scopes and "access:services" not in scopes:
            return NotAllowed(
                f"JupyterHub user {model['name']!r}: the token does not grant access to this "
                f"service (it needs the scope {needed})"
            )
        groups = model.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise APIError(502, f"JupyterHub at {self.api_url} answered malformed groups")
        return Principal(str(model["name"]), frozenset(groups))


def _model(status: int, body: Any, api_url: str) -> dict[str, Any] | None:
    """The Hub's model of a token's owner from its answer to ``GET /user``; None when the
    token is nobody's (the Hub's 401/403/404). 502 for a 5xx or a malformed answer."""
    if status in (401, 403, 404):
        return None
    if status >= 500:
        raise APIError(502, f"JupyterHub at {api_url} failed to check the token ({status})")
    name = body.get("name") if isinstance(body, dict) else None
    if status != 200 or not isinstance(name, str) or not name:
        raise APIError(
            502, f"JupyterHub at {api_url} gave an answer that names no user or service ({status})"
        )
    return body


def hub_identity(api_url: str, token: str, cache_seconds: float) -> HubIdentity:
    """The Hub identity source ``raygate serve`` uses; ValueError (a usage error) for
    settings that cannot work. Called by :func:`raygate.app.create_app`."""
    if not api_url.startswith(("http://", "https://")):
        raise ValueError(f"--jupyterhub-api-url must be an http(s) URL, not {api_url!r}")
    if not token:
        raise ValueError(
            "--jupyterhub-api-url needs this service's Hub API token: JUPYTERHUB_API_TOKEN "
            "(as the Hub sets it for a managed service) or --jupyterhub-api-token"
        )
    return HubIdentity(api_url, token, cache_seconds)
