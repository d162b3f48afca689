"""The Starlette application: routes, middleware and the registry's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from raygate.launchers import Launcher, launcher_kinds

from .auth import TokenAuthMiddleware
from .config import GatewayConfig
from .errors import APIError, handle_api_error, handle_http_exception, handle_unexpected
from .handlers import api, channels, health, kernels, kernelspecs, sessions, status
from .handlers import metrics as metrics_handler
from .isolation import check_config as check_isolation
from .jupyterhub import hub_identity
from .kernels.registry import KernelRegistry
from .kernelspecs import KernelSpecs
from .metrics import GatewayMetrics
from .notebook_http.service import NotebookHttp
from .notebook_http.settings import NotebookHttpConfig
from .sessions import SessionStore
from .settings import build
from .users import IdentitySource, UsersFile

log = logging.getLogger("raygate")

KERNEL = "/api/kernels/{kernel_id}"
SESSION = "/api/sessions/{session_id}"


def api_routes() -> list[BaseRoute]:
    return [
        Route("/api", api.api_info, methods=["GET"]),
        Route("/api/", api.api_info, methods=["GET"]),
        Route("/api/health", health.health, methods=["GET"]),
        Route("/api/ready", health.ready, methods=["GET"]),
        Route("/api/kernelspecs", kernelspecs.list_kernelspecs, methods=["GET"]),
        Route("/api/kernelspecs/{name}", kernelspecs.get_kernelspec, methods=["GET"]),
        Route(
            "/kernelspecs/{name}/{filename:path}",
            kernelspecs.kernelspec_resource,
            methods=["GET"],
        ),
        Route("/api/kernels", kernels.list_kernels, methods=["GET"]),
        Route("/api/kernels", kernels.start_kernel, methods=["POST"]),
        Route(KERNEL, kernels.get_kernel, methods=["GET"]),
        Route(KERNEL, kernels.delete_kernel, methods=["DELETE"]),
        Route(KERNEL + "/interrupt", kernels.interrupt_kernel, methods=["POST"]),
        Route(KERNEL + "/restart", kernels.restart_kernel, methods=["POST"]),
        WebSocketRoute(KERNEL + "/channels", channels.kernel_channels),
        Route("/api/sessions", sessions.list_sessions, methods=["GET"]),
        Route("/api/sessions", sessions.create_session, methods=["POST"]),
        Route(SESSION, sessions.get_session, methods=["GET"]),
        Route(SESSION, sessions.update_session, methods=["PATCH"]),
        Route(SESSION, sessions.delete_session, methods=["DELETE"]),
        # Operating raygate: the status page and its data, metrics, the API description.
        Route("/", status.status_page, methods=["GET"]),
        Route("/status", status.status_page, methods=["GET"]),
        Route("/api/status", status.api_status, methods=["GET"]),
        Route("/metrics", metrics_handler.metrics, methods=["GET"]),
        Route("/api/swagger.json", status.swagger, methods=["GET"]),
    ]


KERNEL_API_PATHS = ("/api/kernel", "/api/sessions", "/kernelspecs")
"""Route paths of the kernel API itself (not served by --api notebook-http alone)."""


def served_routes(nb: NotebookHttpConfig, notebook: NotebookHttp | None) -> list[BaseRoute]:
    """The routes ``--api`` asks for: the kernel API, the notebook's endpoints (first, so
    that they win over the gateway's own pages; under --notebook-http-prefix when the
    kernel API is served too), or both; the gateway's status, health and metrics always."""
    routes = api_routes()
    if notebook is None:
        return routes
    if nb.kernel_api:
        return [*notebook.routes(nb.notebook_http_prefix), *routes]
    own = [r for r in routes if not getattr(r, "path", "").startswith(KERNEL_API_PATHS)]
    return [*notebook.routes(), *own]


def open_paths(config: GatewayConfig) -> list[str]:
    """Paths under the base URL served without a token: health probes, the status page
    (a static file; its data needs the token) and the API description; /metrics too
    with --metrics-public."""
    paths = [*health.HEALTH_PATHS, *status.PAGE_PATHS, status.SWAGGER_PATH]
    if config.metrics_public:
        paths.append(metrics_handler.METRICS_PATH)
    return paths


def watch_sighup(users: UsersFile) -> None:
    """Reread the users file on SIGHUP (it is also reread when it changes on disk)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, users.reload)
    except (NotImplementedError, RuntimeError, ValueError):
        log.info("SIGHUP cannot be watched here; the users file is reread when it changes")


def default_launchers(
    config: GatewayConfig, values: Mapping[str, Any] | None = None
) -> dict[str, Launcher]:
    """One launcher of each installed kind, made from its declared settings: ``values``
    by setting name (as ``raygate serve`` parsed them; missing ones keep their defaults)."""
    launchers: dict[str, Launcher] = {}
    for kind, cls in launcher_kinds().items():
        settings = build(cls.settings, values or {}) if cls.settings is not None else None
        launchers[kind] = cls.from_settings(settings, config)
    return launchers


def check_launcher_kinds(
    config: GatewayConfig, specs: KernelSpecs, launchers: Mapping[str, Launcher]
) -> None:
    """Refuse to start with a default launcher or a kernelspec naming a kind no installed
    launcher has (ValueError, which ``serve`` reports as a usage error)."""
    known = ", ".join(sorted(launchers))
    if config.default_launcher not in launchers:
        raise ValueError(
            f"default launcher {config.default_launcher!r} is not one of: {known} "
            "(launchers are registered under the raygate.launchers entry points)"
        )
    for name in specs.names():
        try:
            spec = specs.get(name)
        except Exception:  # an unreadable kernelspec is answered when it is asked for
            continue
        raygate_meta = spec.metadata.get("raygate") if isinstance(spec.metadata, dict) else None
        kind = raygate_meta.get("launcher") if isinstance(raygate_meta, dict) else None
        if kind and kind not in launchers:
            raise ValueError(
                f"kernelspec {name!r} ({spec.resource_dir}) names launcher {kind!r}, which is "
                f"not installed; known launchers: {known} (launchers are registered under "
                "the raygate.launchers entry points)"
            )


def create_app(
    config: GatewayConfig | None = None,
    launchers: dict[str, Launcher] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Starlette:
    """The gateway's app; ``settings``: every setting's value by name (``raygate serve``
    passes what it parsed), of which the launchers' reach the launchers."""
    config = config or GatewayConfig()
    check_isolation(
        config.kernel_isolation,
        config.users_file,
        config.user_header,
        config.prewarm,
        config.jupyterhub_api_url,
    )
    # A bad users file is a ValueError here (UsersFileError), reported by `serve` as such.
    users = UsersFile(config.users_file) if config.users_file else None
    hub = None
    if config.jupyterhub_api_url:
        hub = hub_identity(
            config.jupyterhub_api_url, config.jupyterhub_api_token, config.jupyterhub_cache_seconds
        )
    identities: list[IdentitySource] = [source for source in (users, hub) if source is not None]
    specs = KernelSpecs(config.default_kernel_name, config.kernelspec_dirs)
    launchers = launchers if launchers is not None else default_launchers(config, settings)
    check_launcher_kinds(config, specs, launchers)
    registry = KernelRegistry(config, specs, launchers)
    registry.admission.accounts = users
    metrics = GatewayMetrics(registry)
    registry.observer = metrics
    nb = build(NotebookHttpConfig, settings or {})
    if nb.seed_uri and not nb.notebook_http:
        # Kernel Gateway's kernel API would run the notebook on every kernel it starts.
        raise ValueError("--seed-uri is for --api notebook-http; the kernel API seeds no kernels")
    # A seed notebook that cannot be served is a ValueError here, before serve listens.
    notebook = NotebookHttp(nb, config, registry, metrics.registry) if nb.notebook_http else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await registry.open()
        if notebook is not None:
            try:
                await notebook.open()
            except BaseException as exc:
                log.error("%s", exc)
                await registry.close()
                raise
        if users is not None:
            watch_sighup(users)
        app.state.ready = True
        log.info("raygate ready; launchers: %s", ", ".join(sorted(launchers)))
        try:
            yield
        finally:
            app.state.ready = "stopping"
            log.info("shutting down %d kernel(s)", len(registry.kernels))
            if notebook is not None:
                await notebook.close()
            await registry.close()
            if hub is not None:
                await hub.close()

    routes = served_routes(nb, notebook)
    if config.base_url != "/":
        routes = [Mount(config.base_url.rstrip("/"), routes=routes)]

    middleware = []
    if config.allow_origin:
        origins = [o.strip() for o in config.allow_origin.split(",") if o.strip()]
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["*"],
                allow_headers=["*"],
                allow_credentials="*" not in origins,
            )
        )
    middleware.append(
        Middleware(
            TokenAuthMiddleware,
            token=config.auth_token,
            open_paths=[config.base_url + path for path in open_paths(config)],
            identities=identities,
            user_header=config.user_header,
        )
    )

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            APIError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
    app.state.config = config
    app.state.ready = False
    app.state.kernelspecs = specs
    app.state.registry = registry
    app.state.notebook_http = notebook
    app.state.metrics = metrics
    app.state.sessions = SessionStore(registry, config)
    return app
