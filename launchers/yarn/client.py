"""Calls to a YARN ResourceManager's REST APIs as a given user: simple auth's
``user.name``, or SPNEGO (Kerberos) with the gateway's keytab and ``doAs`` for the user it
acts for. Used by :mod:`.launcher` only."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx

log = logging.getLogger("raygate.launchers.yarn")


class RMError(Exception):
    """The ResourceManager answered with an error (its message: a ``RemoteException``'s
    or a ``ServiceStatus``'s diagnostics), or could not be reached (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("RemoteException"), dict):
            return str(body["RemoteException"].get("message") or "")
        if body.get("diagnostics"):
            return str(body["diagnostics"])
    return response.text.strip()[:500] or response.reason_phrase


class Negotiate(httpx.Auth):
    """SPNEGO: each request carries a fresh Kerberos token for ``HTTP@<its host>``, from
    the credentials of ``principal`` in ``keytab`` (kept in a private in-memory cache)."""

    def __init__(self, principal: str, keytab: str) -> None:
        try:
            import gssapi
        except ImportError as exc:
            raise RuntimeError(
                "--yarn-keytab needs the gssapi package (pip install 'raygate[yarn-kerberos]')"
            ) from exc
        self.gssapi = gssapi
        self.principal = principal
        self.keytab = keytab
        self._creds: Any = None
        self.spnego = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")

    def _credentials(self) -> Any:
        if self._creds is None or self._creds.lifetime < 60:
            gssapi = self.gssapi
            name = gssapi.Name(self.principal, gssapi.NameType.kerberos_principal)
            store = {"client_keytab": self.keytab, "ccache": f"MEMORY:raygate-yarn-{id(self)}"}
            self._creds = gssapi.Credentials(name=name, usage="initiate", store=store)
        return self._creds

    def token(self, host: str) -> str:
        """One Negotiate token for the service ``HTTP@host`` (blocking: may ask the KDC)."""
        gssapi = self.gssapi
        target = gssapi.Name(f"HTTP@{host}", gssapi.NameType.hostbased_service)
        ctx = gssapi.SecurityContext(
            name=target, creds=self._credentials(), usage="initiate", mech=self.spnego
        )
        return base64.b64encode(ctx.step()).decode()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        try:
            token = await asyncio.to_thread(self.token, request.url.host)
        except self.gssapi.exceptions.GSSError as exc:
            raise RMError(
                503, f"cannot authenticate to the YARN ResourceManager as {self.principal}: {exc}"
            ) from None
        request.headers["Authorization"] = f"Negotiate {token}"
        yield request


class ResourceManagerClient:
    """The REST calls of one gateway to one ResourceManager."""

    def __init__(
        self,
        endpoint: str,
        user: str,
        timeout: float = 10.0,
        principal: str = "",
        keytab: str = "",
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.user = user
        """Who the gateway is to the RM: simple auth's user.name; with Kerberos the short
        name of its principal."""
        self.timeout = timeout
        self.auth: Negotiate | None = Negotiate(principal, keytab) if keytab else None
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _identity(self, user: str | None) -> dict[str, str]:
        if self.auth is None:
            return {"user.name": user or self.user}
        return {"doAs": user} if user and user != self.user else {}

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        user: str | None = None,
        **params: str,
    ) -> Any:
        """One call as ``user`` (None: the gateway itself); its JSON answer (None for an
        empty one). An HTTP error is an :class:`RMError` with its status and message."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.endpoint, timeout=self.timeout, auth=self.auth
            )
        try:
            response = await self._http.request(
                method, path, json=body, params={**self._identity(user), **params}
            )
        except httpx.HTTPError as exc:
            message = f"cannot reach the YARN ResourceManager at {self.endpoint}: {exc}"
            raise RMError(503, message) from None
        if response.status_code >= 400:
            raise RMError(response.status_code, error_message(response))
        try:
            return response.json() if response.content else None
        except ValueError:
            return None
