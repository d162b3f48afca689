"""The operator's status page (``/``, ``/status``), its data (``GET /api/status``) and the
API description (``GET /api/swagger.json``).

The page is a static file with no data in it, so it is served without the token; it asks
``/api/status`` for everything, with the token it was given once as ``?token=``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse

from raygate import __version__
from raygate.kernels.registry import Kernel, iso
from raygate.metrics import kernel_gpus, kernel_state
from raygate.openapi import openapi_spec

from .common import config, registry, sees

log = logging.getLogger("raygate.status")

PAGE_PATHS = ("", "status")
"""Paths under the base URL that serve the page (no token needed: it holds no data)."""
SWAGGER_PATH = "api/swagger.json"
CAPACITY_TIMEOUT = 5.0
HOST_KEYS = ("host", "hostname", "node_ip", "ip", "node", "pod", "worker")
"""Placement keys that say where a kernel runs, in order of preference."""


def _page() -> str:
    return resources.files("raygate").joinpath("static/status.html").read_text("utf-8")


async def status_page(request: Request) -> HTMLResponse:
    return HTMLResponse(
        _page(),
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src 'self' data:",
            "Referrer-Policy": "no-referrer",
        },
    )


def host_of(placement: dict[str, Any]) -> str:
    for key in HOST_KEYS:
        value = placement.get(key)
        if value:
            return str(value)
    return ""


def kernel_row(kernel: Kernel, now: datetime) -> dict[str, Any]:
    res = kernel.handle.request.resources
    return {
        "id": kernel.id,
        "name": kernel.name,
        "username": kernel.username,
        "launcher": kernel.launcher.kind,
        "host": host_of(kernel.handle.placement),
        "placement": kernel.handle.placement,
        "gpus": kernel_gpus(kernel),
        "cpus": res.cpus,
        "memory": res.memory,
        "execution_state": kernel_state(kernel),
        "last_activity": iso(kernel.channels.last_activity),
        "idle_seconds": max(0.0, (now - kernel.channels.last_activity).total_seconds()),
        "connections": len(kernel.channels.clients),
        "created": iso(kernel.created),
        "restarts": kernel.restarts,
        "warm": kernel.warm,
    }


def _totals(nodes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = {}
    for node in nodes:
        for key in ("cpus", "gpus", "memory"):
            part = node.get(key) or {}
            into = totals.setdefault(key, {"total": 0.0, "available": 0.0})
            into["total"] += float(part.get("total") or 0.0)
            into["available"] += float(part.get("available") or 0.0)
    return totals


async def _capacity(request: Request) -> dict[str, Any]:
    """Each launcher's own account of its capacity (only launchers that can tell)."""
    out: dict[str, Any] = {}
    for kind, launcher in sorted(registry(request).launchers.items()):
        try:
            found = await asyncio.wait_for(launcher.capacity(), CAPACITY_TIMEOUT)
        except Exception as exc:
            log.warning("capacity of the %s launcher unknown: %s", kind, exc)
            out[kind] = {"error": f"{type(exc).__name__}: {exc}", "nodes": []}
            continue
        if found is not None:
            out[kind] = {**found, "total": _totals(found.get("nodes") or [])}
    return out


async def api_status(request: Request) -> JSONResponse:
    kernels = registry(request)
    now = datetime.now(UTC)
    metrics = request.app.state.metrics
    notebook = getattr(request.app.state, "notebook_http", None)
    return JSONResponse(
        {
            "kernels": [kernel_row(k, now) for k in kernels.list() if sees(request, k)],
            "capacity": await _capacity(request),
            "pool": kernels.pool.status(),  # warm kernels: not users', so not in "kernels"
            "notebook_http": notebook.status() if notebook is not None else None,
            "gateway": {
                "version": __version__,
                "uptime": time.time() - metrics.started_at,
                "launchers": sorted(kernels.launchers),
                "default_launcher": config(request).default_launcher,
                "max_kernels": config(request).max_kernels,
            },
        }
    )


async def swagger(request: Request) -> JSONResponse:
    return JSONResponse(openapi_spec(config(request).base_url))
