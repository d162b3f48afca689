"""The Starlette routes of notebook-http: the endpoints, and the swagger document.

:class:`EndpointRoute` matches only paths the notebook serves, so the gateway's own routes
(status page, metrics, health) still answer the paths the notebook leaves alone; a path
nothing serves is a 404. Answers follow Kernel Gateway: stdout as the body, ``text/plain``
and 200 unless a ResponseInfo cell says otherwise, the error text and 500 when a cell
raises, an empty 405 for an annotated method the path lacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

from starlette._utils import get_route_path
from starlette.datastructures import URLPath
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, NoMatchFound, request_response
from starlette.types import Receive, Scope, Send

from raygate.errors import APIError, error_response

from .execute import Outcome
from .notebook import METHODS, NotebookApi
from .pool import EndpointPool
from .request import BadRequest, Router, request_code, request_value
from .settings import NotebookHttpConfig

SWAGGER_PATH = "/_api/spec/swagger.json"
SOURCE_PATH = "/_api/source"
ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
NO_BODY = (204, 304)


class EndpointRoute(BaseRoute):
    """Every endpoint of the notebook, as one route (the notebook's own order decides
    which endpoint a path is; see :class:`~.request.Router`)."""

    def __init__(
        self,
        api: NotebookApi,
        pool: EndpointPool,
        config: NotebookHttpConfig,
        observe: Callable[[str, str, int, float], None],
    ) -> None:
        """``observe(method, endpoint path, status, seconds)`` is told of every answer."""
        self.api = api
        self.pool = pool
        self.config = config
        self.observe = observe
        self.router = Router(api.endpoints)
        self.app = request_response(self.endpoint)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        found = self.router.match(get_route_path(scope))
        if found is None:
            return Match.NONE, {}
        return Match.FULL, {"endpoint": self.endpoint, "notebook_http_match": found}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def endpoint(self, request: Request) -> Response:
        started = time.monotonic()
        found = request.scope["notebook_http_match"]
        endpoint = found.endpoint
        status = 500
        try:
            response = await self.answer(request, found.endpoint, found.params)
            status = response.status_code
            return response
        except APIError as exc:
            status = exc.status
            raise
        finally:
            self.observe(request.method, endpoint.path, status, time.monotonic() - started)

    async def answer(self, request: Request, endpoint: Any, params: dict[str, str]) -> Response:
        method = request.method
        if method == "OPTIONS":  # Kernel Gateway's (Tornado's) empty answer, type and all
            return Response(b"", 200, headers={"Content-Type": "text/html; charset=UTF-8"})
        source = endpoint.sources.get(method)
        if source is None:
            allow = ", ".join(sorted(endpoint.sources))
            if method in METHODS:  # as Kernel Gateway: an empty 405
                return Response(b"", 405, headers={"Allow": allow})
            response = error_response(405, f"{method} is not served at {endpoint.path}")
            response.headers["Allow"] = allow
            return response
        body = await read_body(
            request,
            self.config.notebook_http_max_body,
            self.config.notebook_http_body_timeout,
        )
        try:
            value = request_value(body, request.url.query, params, request.headers.items())
        except BadRequest as exc:
            raise APIError(400, str(exc)) from None
        codes = [request_code(value, self.api.language), source]
        response_source = endpoint.responses.get(method)
        if response_source is not None:
            codes.append(response_source)
        outcomes = await self.pool.run(codes)
        return respond(
            outcomes, response_source is not None, method, request.headers.get("if-none-match", "")
        )


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, read before any kernel is taken (a slow client holds none);
    413 past ``limit`` bytes (0: none), 408 when it takes longer than ``timeout`` s."""
    declared = request.headers.get("content-length", "")
    if limit and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"The request body is {declared} bytes; at most {limit} are taken")
    parts: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if limit and size > limit:
                raise APIError(413, f"The request body is over {limit} bytes")
            parts.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise APIError(408, f"The request body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        raise APIError(400, "The client went away before its request body arrived") from None
    return b"".join(parts)


def etag_matches(etag: str, if_none_match: str) -> bool:
    """Whether a request's ``If-None-Match`` names ``etag`` (``*``, or weakly equal)."""
    tags = re.findall(r'\*|(?:W/)?"[^"]*"', if_none_match)
    if not etag or not tags:
        return False
    if tags[0] == "*":
        return True
    return any(tag.removeprefix("W/") == etag.removeprefix("W/") for tag in tags)


def respond(
    outcomes: list[Outcome], has_response_cell: bool, method: str = "GET", if_none_match: str = ""
) -> Response:
    """The HTTP answer from the outcomes of [REQUEST assignment, endpoint cell(s),
    ResponseInfo cell (if any)]. A GET answered 200 without an ETag of its cells' gets one
    (the SHA-1 of its body) and is a 304 when the request's If-None-Match names it: Tornado
    does this for Kernel Gateway, and clients of its notebooks may count on it."""
    failed = next((o for o in outcomes if o.error), None)
    if failed is not None:
        return Response(failed.error or "", 500, headers={"Content-Type": "text/plain"})
    headers = {"Content-Type": "text/plain"}
    status = 200
    if has_response_cell and len(outcomes) >= 3:
        info = _response_info(outcomes[2].text)
        for name, value in (info.get("headers") or {}).items():
            headers[str(name)] = str(value)
        if "status" in info:
            status = info["status"]
    body = outcomes[1].text if len(outcomes) >= 2 else ""
    named = {k.lower() for k in headers}
    if status == 200 and method in ("GET", "HEAD") and "etag" not in named:
        headers["Etag"] = f'"{hashlib.sha1(body.encode()).hexdigest()}"'
        if etag_matches(headers["Etag"], if_none_match):
            status = 304
    if status in NO_BODY or status < 200:
        body = ""  # and no representation headers, as Tornado (so Kernel Gateway) sends
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    return Response(body.encode(), status, headers=headers)


def _response_info(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        raise APIError(
            500, f"The ResponseInfo cell printed no JSON object: {text[:200]!r}"
        ) from None
    if not isinstance(info, dict):
        raise APIError(500, f"The ResponseInfo cell printed {type(info).__name__}, not an object")
    status = info.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise APIError(500, f"The ResponseInfo cell's status is not an HTTP status: {status!r}")
    headers = info.get("headers", {})
    if not isinstance(headers, dict):
        raise APIError(500, "The ResponseInfo cell's headers are not an object")
    return info


def swagger_route(spec: dict[str, Any]) -> Any:
    async def swagger(request: Request) -> JSONResponse:
        return JSONResponse(spec)

    return swagger


def source_route(text: str) -> Any:
    """``GET /_api/source``: the seed notebook as it was read at startup."""

    async def source(request: Request) -> Response:
        return Response(text.encode(), 200, media_type="application/x-ipynb+json")

    return source
