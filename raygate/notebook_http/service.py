"""notebook-http in one gateway: the notebook's API, its kernel pool and its routes.

``create_app`` (raygate/app.py) makes a :class:`NotebookHttp` when ``--api`` names
notebook-http (reading the notebook then, so a bad one stops ``raygate serve`` before it
listens), mounts :meth:`NotebookHttp.routes`, and opens and closes it in its lifespan.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute, Mount, Route

from raygate.config import GatewayConfig
from raygate.kernels.registry import KernelRegistry
from raygate.kernelspecs import NoSuchKernel

from .handlers import SOURCE_PATH, SWAGGER_PATH, EndpointRoute, source_route, swagger_route
from .notebook import NotebookApi, NotebookError, fetch_text, notebook_from_text, parse_api
from .pool import EndpointPool
from .settings import NotebookHttpConfig
from .stats import NotebookHttpMetrics, pool_status


class NotebookHttp:
    def __init__(
        self,
        config: NotebookHttpConfig,
        gateway: GatewayConfig,
        registry: KernelRegistry,
        metrics: CollectorRegistry,
    ) -> None:
        """Reads the seed notebook; raises :class:`NotebookError` (a ValueError, which
        ``serve`` reports as a usage error) when it cannot serve it."""
        if not config.seed_uri:
            raise NotebookError("--api notebook-http needs --seed-uri NOTEBOOK")
        self.config = config
        self.source = fetch_text(config.seed_uri)
        self.api: NotebookApi = parse_api(
            notebook_from_text(self.source, config.seed_uri), config.seed_uri, config.cell_parser
        )
        self.kernel_name = (
            config.force_kernel_name or self.api.kernel_name or gateway.default_kernel_name
        )
        try:
            registry.kernelspecs.get(self.kernel_name)
        except NoSuchKernel:
            raise NotebookError(
                f"the seed notebook {config.seed_uri} runs on kernelspec "
                f"{self.kernel_name!r}, which is not installed here (--force-kernel-name "
                "chooses another)"
            ) from None
        if gateway.kernel_isolation == "users":
            raise NotebookError(
                "--api notebook-http serves every caller from the same kernels, which "
                "--kernel-isolation users (each kernel its user's own) cannot allow"
            )
        most = max(config.prespawn_count, config.notebook_http_max_kernels)
        if gateway.max_kernels and most > gateway.max_kernels:
            raise NotebookError(
                f"--prespawn-count {config.prespawn_count} (or --notebook-http-max-kernels) "
                f"is more than --max-kernels {gateway.max_kernels}"
            )
        self.pool = EndpointPool(
            registry,
            self.api,
            self.kernel_name,
            config.prespawn_count,
            config.notebook_http_queue,
            config.notebook_http_timeout,
            config.notebook_http_max_kernels,
            config.notebook_http_idle_stop,
        )
        self.metrics = NotebookHttpMetrics(self.pool, metrics)

    def routes(self, prefix: str = "") -> list[BaseRoute]:
        """The endpoints and the swagger document, under ``prefix`` when one is given."""
        routes: list[BaseRoute] = [
            Route(SWAGGER_PATH, swagger_route(self.api.spec), methods=["GET"]),
            EndpointRoute(self.api, self.pool, self.config, self.metrics.observe),
        ]
        if self.config.allow_notebook_download:
            routes.insert(1, Route(SOURCE_PATH, source_route(self.source), methods=["GET"]))
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        return [Mount(prefix, routes=routes)] if prefix else routes

    async def open(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()

    def status(self) -> dict[str, Any]:
        """What the status page and /api/status show of the mode."""
        return pool_status(self.api, self.kernel_name, self.pool)
