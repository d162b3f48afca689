"""``GET /metrics``: the gateway's Prometheus metrics (see :mod:`raygate.metrics`).

It needs the token like the rest of the API, unless the gateway runs with
``--metrics-public`` (for a Prometheus that cannot send one; the figures name users and
kernelspecs, nothing more).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

METRICS_PATH = "metrics"
"""The path under the base URL."""


async def metrics(request: Request) -> Response:
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
