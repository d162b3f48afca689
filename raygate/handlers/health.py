"""Health endpoints for load balancers and Kubernetes probes, open without a token.

* ``GET /api/health`` (liveness): 200 whenever the process serves HTTP.
* ``GET /api/ready`` (readiness): 200 once the kernel registry is open (every launcher
  started, running kernels adopted) and until shutdown begins; 503 with the usual
  ``{"reason", "message"}`` body before and after, so a replica that is starting or
  draining gets no new traffic.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from raygate import __version__
from raygate.errors import error_response

HEALTH_PATHS = ("api/health", "api/ready")
"""Paths under the base URL that need no token."""


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "gateway_version": __version__})


async def ready(request: Request) -> JSONResponse:
    state = getattr(request.app.state, "ready", None)
    if state is True:
        registry = request.app.state.registry
        return JSONResponse(
            {
                "status": "ready",
                "kernels": len(registry.kernels),
                "launchers": sorted(registry.launchers),
            }
        )
    message = "raygate is shutting down" if state == "stopping" else "raygate is starting"
    return error_response(503, message)
