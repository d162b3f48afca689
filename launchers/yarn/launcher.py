"""Kernels as YARN services, through the ResourceManager's YARN Services API.

Each kernel is a service ``raygate-<kernel id>`` of one component (``kernel``) with one
container that runs the bootstrap (``python -m raygate.launchers.kernelside.bootstrap``),
kept by YARN's own service AM, which registers with the RM: so the RM keeps the kernel as
long as it runs (an application whose AM never registers is expired after
``yarn.am.liveness-monitor.expiry-interval-ms``). The container is sized by the kernel's
request (``resource {memory, cpus, additional {"yarn.io/gpu"}}``) in ``KERNEL_QUEUE``, the
kernelspec's ``metadata.raygate.yarn.queue`` or ``--yarn-queue``, and the service is created
as (and owned by) the kernel's user where ``--kernel-isolation users`` names one:

1. ``GET /app/v1/services/version`` once: an RM without the API (404) fails every start
   with a message naming ``yarn.webapp.api-service.enable``;
2. ``GET /ws/v1/cluster/scheduler``: a queue the CapacityScheduler does not have, or a
   container over its queue's maximum allocation, fails at once (400);
3. ``POST /app/v1/services`` with the bootstrap's settings (base64) and the kernel's
   secret in the container's environment (never on the command line); the RM's refusal
   (a size over the cluster's largest container, an unknown queue) is a 400 with its
   diagnostics;
4. ``GET /app/v1/services/{name}`` until the bootstrap reports: a service that ends first
   fails the start with its application's diagnostics (500; 400 where the scheduler
   refused the container's size: ``Invalid resource request``); one still ``ACCEPTED`` at the
   launch timeout (its AM not placed), or whose kernel container was never allocated, is
   destroyed and the start fails with the RM's diagnostics (503: capacity); one whose
   container runs but did not report with a 504.

From then on the gateway talks to the bootstrap's control endpoint. Shutdown stops the
kernel through it and destroys the service (``DELETE /app/v1/services/{name}``); every
failed start destroys what it created. A restarted gateway finds its kernels from its
reattach records (the state directory: the RM cannot hold a kernel's secret), asks the RM
for each one's service by name, forgets those that ended and destroys those whose
bootstrap no longer answers.

Authentication: simple auth's ``user.name`` (``--yarn-user``, or the kernel's account), or
with ``--yarn-keytab``/``--yarn-principal`` SPNEGO as that principal, acting for the
kernel's account with ``doAs`` (the RM must let the principal impersonate: Hadoop's
``hadoop.proxyuser.<name>.hosts/groups``).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import shlex
import socket
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from raygate.settings import setting

from ..base import KernelHandle, KernelStartError, LaunchRequest
from ..kernelside.bootstrap import SECRET_ENV, SETTINGS_ENV
from ..remote import (
    PENDING,
    RemoteKernel,
    RemoteLauncher,
    RemoteSettings,
    _resource_request,
    placement_constraints,
)
from ..wire import encode_secret, new_secret
from .client import ResourceManagerClient, RMError
from .spec import (
    ENDED_STATES,
    ContainerSize,
    container_size,
    encode_settings,
    kernel_container,
    leaf_queues,
    over_queue_maximum,
    service_definition,
    service_name,
)

if TYPE_CHECKING:
    from raygate.config import GatewayConfig

log = logging.getLogger("raygate.launchers.yarn")

SERVICES = "/app/v1/services"
APPS = "/ws/v1/cluster/apps"
SCHEDULER = "/ws/v1/cluster/scheduler"
POLL = 0.5
SERVICES_API_SETTING = "yarn.webapp.api-service.enable"
PENDING_MARGIN = 5.0
"""Seconds past a launch's deadline before its unfinished record counts as left behind."""


class YarnKernel(RemoteKernel):
    """A kernel in a YARN service: shutting it down destroys the service."""

    async def shutdown(self) -> None:
        stopped = self.stopped
        await super().shutdown()
        if not stopped:
            launcher = self.launcher
            assert isinstance(launcher, YarnLauncher)
            await launcher.destroy(self.extra["service"], self.extra.get("user"))


@dataclass
class YarnSettings(RemoteSettings):
    yarn_endpoint: str = setting(
        "",
        "URL of the YARN ResourceManager's REST API (http://rm:8088) the yarn launcher "
        "creates kernels' services with (it needs yarn.webapp.api-service.enable=true).",
    )
    yarn_queue: str = setting("default", "YARN queue unless KERNEL_QUEUE names one.")
    yarn_user: str = setting(
        "",
        "User the ResourceManager's simple auth is given (user.name; default: the "
        "gateway's own user); under --kernel-isolation users, each kernel's user's account.",
    )
    yarn_python: str = setting(
        "", "Python on the YARN nodes that has raygate installed (default: the gateway's)."
    )
    yarn_keytab: str = setting(
        "",
        "Keytab of --yarn-principal: authenticate to a Kerberized ResourceManager with "
        "SPNEGO (and act for each kernel's account with doAs) instead of simple auth.",
    )
    yarn_principal: str = setting(
        "", "Kerberos principal of the gateway in --yarn-keytab (e.g. raygate/host@REALM)."
    )


class YarnLauncher(RemoteLauncher):
    """Kernels as YARN services whose one container runs the bootstrap."""

    kind = "yarn"
    settings = YarnSettings
    kernel_class = YarnKernel

    def __init__(
        self,
        endpoint: str = "",
        queue: str = "default",
        user: str = "",
        python: str = "",
        request_timeout: float = 10.0,
        keytab: str = "",
        principal: str = "",
        **remote: Any,
    ) -> None:
        super().__init__(**remote)
        self.endpoint = endpoint.rstrip("/")
        self.queue = queue or "default"
        if keytab and not principal:
            raise ValueError("--yarn-keytab needs --yarn-principal")
        # with Kerberos the RM knows the gateway by its principal's short name
        self.user = principal.split("@")[0].split("/")[0] if keytab else user or getpass.getuser()
        self.python = python or sys.executable
        self.rm = ResourceManagerClient(
            self.endpoint, self.user, request_timeout, principal=principal, keytab=keytab
        )
        self._services_api: bool | None = None
        """Whether the RM serves the Services API (None: not known yet)."""

    @classmethod
    def from_settings(cls, settings: YarnSettings, gateway: GatewayConfig) -> YarnLauncher:
        return cls(
            endpoint=settings.yarn_endpoint,
            queue=settings.yarn_queue,
            user=settings.yarn_user,
            python=settings.yarn_python,
            keytab=settings.yarn_keytab,
            principal=settings.yarn_principal,
            **cls.remote_options(settings, gateway),
        )

    async def start(self) -> None:
        if self.endpoint:
            try:
                await self._check_services_api()
            except KernelStartError as exc:
                log.error("yarn launcher: %s", exc)

    async def close(self) -> None:
        await self.rm.close()
        await super().close()

    # -- the RM --

    async def _check_services_api(self) -> None:
        """Fail (500) if the RM does not serve the Services API; asked once."""
        if self._services_api:
            return
        try:
            await self.rm.call("GET", SERVICES + "/version")
        except RMError as exc:
            if exc.status == 404:
                self._services_api = False
                raise KernelStartError(
                    f"the YARN ResourceManager at {self.endpoint} does not serve the YARN "
                    f"Services API ({SERVICES} answered 404): set {SERVICES_API_SETTING}=true "
                    "in its yarn-site.xml and restart it",
                    status=500,
                ) from None
            raise KernelStartError(str(exc), status=503) from None
        self._services_api = True

    async def destroy(self, name: str, user: str | None = None) -> None:
        """Stop and destroy a service as its owner ``user`` (one already gone is left)."""
        try:
            await self.rm.call("DELETE", f"{SERVICES}/{name}", user=user)
        except RMError as exc:
            gone = exc.status == 404 or (exc.status == 400 and "doesn't exist" in str(exc))
            if not gone:
                log.warning("could not destroy YARN service %s: %s", name, exc)

    async def force_stop(self, kernel: RemoteKernel) -> None:
        await self.destroy(kernel.extra["service"], kernel.extra.get("user"))

    async def service(self, name: str, user: str | None) -> dict[str, Any] | None:
        """A service's ``GET`` as its owner (None: there is none)."""
        try:
            return await self.rm.call("GET", f"{SERVICES}/{name}", user=user)
        except RMError as exc:
            if exc.status == 404:
                return None
            raise

    async def diagnostics(self, app_id: str, user: str | None) -> str:
        """The RM's diagnostics of a service's application ('' if it has none)."""
        if not app_id:
            return ""
        try:
            app = (await self.rm.call("GET", f"{APPS}/{app_id}", user=user)) or {}
        except RMError as exc:
            log.warning("YARN application %s: cannot read its report: %s", app_id, exc)
            return ""
        return str((app.get("app") or {}).get("diagnostics") or "").strip()

    # -- launching --

    def _queue_for(self, request: LaunchRequest) -> str:
        meta = request.spec.raygate.section("yarn")
        return request.env.get("KERNEL_QUEUE", "").strip() or meta.get("queue") or self.queue

    def _report_host(self) -> str:
        if self.report_address:
            return self.report_address
        host = urlsplit(self.endpoint).hostname or "localhost"
        try:  # the address this host reaches the ResourceManager from
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((socket.gethostbyname(host), 9))
                return s.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())

    def _refuse_what_yarn_cannot_size(self, request: LaunchRequest) -> None:
        res = _resource_request(request)
        refused = placement_constraints(request)
        refused += [f"{amount:g} {name}" for name, amount in sorted(res.custom.items())]
        if refused:
            raise KernelStartError(
                "the yarn launcher sizes containers by memory, vCores and GPUs only; it "
                "cannot honour " + "; ".join(refused),
                status=400,
            )

    async def _check_queue(self, queue: str, size: ContainerSize, owner: str) -> None:
        """Refuse (400) a queue the scheduler does not have, or a container over its
        maximum allocation; a scheduler that lists no queues leaves it to the RM."""
        try:
            queues = leaf_queues(await self.rm.call("GET", SCHEDULER, user=owner))
        except RMError as exc:
            if exc.status == 503:
                raise KernelStartError(str(exc), status=503) from None
            log.warning("yarn launcher: cannot read the scheduler's queues: %s", exc)
            return
        if queues is None:
            return
        limits = queues.get(queue)
        if limits is None:
            names = sorted({q.name for q in queues.values()})
            raise KernelStartError(
                f"YARN queue {queue!r} does not exist (the ResourceManager's leaf queues: "
                f"{', '.join(names)})",
                status=400,
            )
        over = over_queue_maximum(size, limits)
        if over:
            raise KernelStartError(
                f"the kernel asks for a container of {size.describe()}, more than YARN queue "
                f"{queue} gives one container ({over})",
                status=400,
            )

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        if not self.endpoint:
            raise KernelStartError("no YARN ResourceManager is configured (--yarn-endpoint)")
        self._refuse_what_yarn_cannot_size(request)
        await self._check_services_api()
        started = time.monotonic()
        deadline = started + request.launch_timeout - min(2.0, 0.2 * request.launch_timeout)
        size = container_size(request)
        queue = self._queue_for(request)
        # --kernel-isolation users: created as the user's account, who owns it in the RM
        # (and, on a secure cluster's LinuxContainerExecutor, whom its container runs as).
        owner = request.account or self.user
        await self._check_queue(queue, size, owner)
        await self.listen()
        name = service_name(request.kernel_id)
        secret = new_secret()
        placement: dict[str, Any] = {"launcher": self.kind, "service": name, "queue": queue}
        settings = self.bootstrap_settings(request, secret, self._report_host(), placement)
        settings.pop("secret")  # it travels in the container's environment
        settings["report"]["timeout"] = max(5.0, request.launch_timeout)
        definition = service_definition(
            name,
            queue,
            shlex.join([self.python, "-m", "raygate.launchers.kernelside.bootstrap"]),
            {
                SETTINGS_ENV: encode_settings(settings),
                SECRET_ENV: encode_secret(secret),
            },
            size,
            f"raygate kernel {request.kernel_id} ({request.spec.name})",
        )
        # Recorded before the service exists: a gateway that dies before the kernel reports
        # leaves this, and the next one (or a replica) destroys what it finds after the
        # launch's deadline (find_running, find_new).
        until = time.time() + request.launch_timeout + PENDING_MARGIN
        pending = {"service": name, "user": owner, "until": until}
        self.state.save(
            self.kind, request.kernel_id, {"kernel_id": request.kernel_id, PENDING: pending}
        )
        report = self.listener.expect(request.kernel_id, secret)
        created = False
        try:
            try:
                await self.rm.call("POST", SERVICES, definition, user=owner)
            except RMError as exc:
                # 503: unreachable; 401/403: the gateway may not (authenticate, impersonate
                # the user): the operator's to fix; else the RM refused what was asked
                status = {503: 503, 401: 500, 403: 500}.get(exc.status, 400)
                raise KernelStartError(
                    f"the YARN ResourceManager refused service {name}: {exc}", status=status
                ) from None
            created = True
            payload, service = await self._wait_for_report(report, name, owner, request, deadline)
        except BaseException:
            self.listener.forget(request.kernel_id)
            if created:
                await self.destroy(name, owner)
            self.state.remove(self.kind, request.kernel_id)
            raise
        container = kernel_container(service) or {}
        app_id = str(service.get("id") or "")
        placement["host"] = container.get("bare_host") or container.get("ip") or ""
        placement["application_id"] = app_id
        placement["container"] = {"id": container.get("id"), **size.to_dict()}
        extra = {"service": name, "application_id": app_id, "user": owner}
        kernel = self.from_report(request, secret, payload, placement, extra)
        log.info(
            "kernel %s: running as YARN service %s (%s) on %s in %.2fs",
            request.kernel_id,
            name,
            app_id,
            placement["host"],
            time.monotonic() - started,
        )
        return kernel

    async def _wait_for_report(
        self,
        report: asyncio.Future,
        name: str,
        owner: str,
        request: LaunchRequest,
        deadline: float,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait for the bootstrap's report while watching the service; returns the report
        and the service's last ``GET``."""
        service: dict[str, Any] = {}
        while True:
            remaining = deadline - time.monotonic()
            done, _ = await asyncio.wait({report}, timeout=max(0.0, min(POLL, remaining)))
            try:
                service = await self.service(name, owner) or {}
            except RMError as exc:
                log.warning("YARN service %s: cannot read it: %s", name, exc)
            if report in done:
                return report.result(), service
            state = service.get("state")
            if state in ENDED_STATES:
                why = await self.diagnostics(str(service.get("id") or ""), owner)
                raise KernelStartError(
                    f"YARN service {name} ended {state} before the kernel reported: "
                    f"{why or 'no diagnostics'}",
                    # the scheduler refused the container's size: the request can never fit
                    status=400 if "Invalid resource request" in why else 500,
                )
            if time.monotonic() >= deadline:
                raise await self._timed_out(name, service, owner, request)

    async def _timed_out(
        self, name: str, service: dict[str, Any], owner: str, request: LaunchRequest
    ) -> KernelStartError:
        waited = request.launch_timeout
        size = container_size(request)
        state = service.get("state", "unknown")
        container = kernel_container(service)
        if container is not None:
            return KernelStartError(
                f"timed out after {waited:g}s: YARN service {name} runs the kernel's container "
                f"{container.get('id')} on {container.get('bare_host')} but the kernel did not "
                "report back",
                status=504,
            )
        queue = service.get("queue") or self._queue_for(request)
        if state == "ACCEPTED":
            why = await self.diagnostics(str(service.get("id") or ""), owner)
            where = f"its service AM was not placed in queue {queue}"
        else:
            why = ""
            where = f"its service AM runs but was given no container of {size.describe()}"
        return KernelStartError(
            f"gave up after waiting {waited:g}s: YARN service {name} stayed {state}: {where}"
            f"{': ' + why if why else ''}",
            status=503,
        )

    # -- after a gateway restart --

    async def _sweep_pending(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Destroy the services of launches that ran past their deadline with no report (a
        gateway died while starting them); the records of kernels that did start."""
        now = time.time()
        started = []
        for record in records:
            pending = record.get(PENDING)
            if not isinstance(pending, dict):
                started.append(record)
                continue
            if float(pending.get("until") or 0) < now:
                log.info(
                    "destroying YARN service %s: its start was never finished",
                    pending.get("service"),
                )
                if pending.get("service"):
                    await self.destroy(str(pending["service"]), pending.get("user"))
                self.state.remove(self.kind, str(record.get("kernel_id")))
        return started

    async def find_running(self) -> list[KernelHandle]:
        if not self.endpoint:
            return []
        records = await self._sweep_pending(self.state.load(self.kind))
        live = []
        for record in records:
            extra = record.get("extra") or {}
            name, owner = extra.get("service"), extra.get("user")
            kernel_id = str(record.get("kernel_id"))
            if not name:
                self.state.remove(self.kind, kernel_id)
                continue
            try:
                service = await self.service(name, owner)
            except RMError as exc:
                log.warning("yarn launcher: cannot ask for service %s: %s", name, exc)
                live.append(record)  # kept: the RM may answer later
                continue
            if service is None or service.get("state") in ENDED_STATES:
                log.info("kernel %s: its YARN service %s has ended", kernel_id, name)
                self.state.remove(self.kind, kernel_id)
                if service is not None:
                    await self.destroy(name, owner)
                continue
            live.append(record)
        found = await self._probe_records(live, timeout=10.0)
        adopted = {k.kernel_id for k in found}
        now = time.monotonic()
        for record in live:
            kernel_id = record.get("kernel_id", "")
            if kernel_id not in adopted and self._unreachable.get(kernel_id, 0) <= now:
                extra = record.get("extra") or {}
                log.info("destroying YARN service %s: its bootstrap is gone", extra["service"])
                await self.destroy(extra["service"], extra.get("user"))
        return found

    async def find_new(self, known: Collection[str]) -> list[KernelHandle]:
        if not self.endpoint:
            return []
        await self._sweep_pending(
            [
                r
                for r in self.state.load(self.kind)
                if PENDING in r and r.get("kernel_id") not in known
            ]
        )
        return await super().find_new(known)
