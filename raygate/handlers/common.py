"""What every handler needs: the registry, JSON bodies, kernel ids."""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import HTTPConnection, Request

from raygate.config import GatewayConfig
from raygate.errors import APIError
from raygate.kernels.registry import Kernel, KernelRegistry
from raygate.users import authenticated_groups, authenticated_user, may_see

MAX_BODY = 4 * 1024 * 1024


def registry(conn: HTTPConnection) -> KernelRegistry:
    return conn.app.state.registry


def config(conn: HTTPConnection) -> GatewayConfig:
    return conn.app.state.config


def url(conn: HTTPConnection, path: str) -> str:
    """A path under the gateway's base URL."""
    return config(conn).base_url + path.lstrip("/")


def sees(conn: HTTPConnection, kernel: Kernel) -> bool:
    """Whether the request's user may see (and control) the kernel: their own, or any when
    the request names no particular user or an admin."""
    user, groups = authenticated_user(conn), authenticated_groups(conn)
    return may_see(config(conn), user, kernel.username, groups)


async def find_kernel(conn: HTTPConnection) -> Kernel:
    """The kernel named in the path; 404 for unknown and malformed ids alike, and for
    another user's kernel (whose existence is not revealed)."""
    kernel_id = conn.path_params["kernel_id"]
    try:
        uuid.UUID(kernel_id)
    except ValueError:
        raise APIError(404, f"Kernel does not exist: {kernel_id}") from None
    kernel = await registry(conn).lookup(kernel_id)
    if not sees(conn, kernel):
        raise APIError(404, f"Kernel does not exist: {kernel_id}")
    return kernel


async def json_body(request: Request, required: bool = False) -> dict[str, Any]:
    """The request's JSON object body; ``{}`` when empty and not required."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise APIError(413, f"Request body larger than {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise APIError(413, f"Request body larger than {MAX_BODY} bytes")
    if not body.strip():
        if required:
            raise APIError(400, "Request body must be a JSON object")
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise APIError(400, f"Malformed JSON in request body: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object")
    return data
