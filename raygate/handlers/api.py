"""``GET /api``: who we are."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from raygate import __version__

# The Jupyter server API version clients check against; raygate's own version beside it.
JUPYTER_API_VERSION = "2.21.1"


async def api_info(request: Request) -> JSONResponse:
    return JSONResponse({"version": JUPYTER_API_VERSION, "gateway_version": __version__})
