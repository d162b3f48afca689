"""Kernels as YARN applications, through the ResourceManager's REST API.

Each kernel is one application whose AM container runs the bootstrap
(``python -m raygate.launchers.kernelside.bootstrap``), sized by the kernel's request
(``resource: {memory, vCores}``) and submitted to ``KERNEL_QUEUE``, the kernelspec's
``metadata.raygate.yarn.queue`` or ``--yarn-queue``:

1. ``POST /ws/v1/cluster/apps/new-application`` for an id and the largest container the
   cluster gives; a kernel asking for more fails at once (400);
2. ``POST /ws/v1/cluster/apps`` with the AM container's command and environment: the
   bootstrap's settings in ``RAYGATE_BOOTSTRAP_SETTINGS`` and the kernel's secret in
   ``RAYGATE_KERNEL_SECRET`` (never on the command line), tags ``raygate`` and the kernel
   id;
3. ``GET /ws/v1/cluster/apps/{id}`` until the bootstrap reports: an application that ends
   first fails the start with the RM's diagnostics (500); one still ``ACCEPTED`` at the
   launch timeout with no AM container is killed and the start fails with the RM's
   diagnostics (503: capacity), one whose container runs but did not report with a 504;
   the AM host comes from ``amHostHttpAddress``.

From then on the gateway talks to the bootstrap's control endpoint, as with SSH and Dask.
Shutdown kills the application (``PUT .../state {"state": "KILLED"}``); the NodeManager's
SIGTERM makes the bootstrap stop the kernel. A restarted gateway finds its kernels from its
reattach records (the state directory: the RM cannot hold a kernel's secret) that still
have a live application, asked of the RM by tag (``GET /ws/v1/cluster/apps?applicationTags=
raygate&states=...``); it kills a live application whose bootstrap no longer answers.

CPUs and memory are all a YARN container is sized by here: GPUs, custom resources and
node placement are refused (400). Requests carry ``user.name`` (simple auth): ``--yarn-user``,
or under ``--kernel-isolation users`` the user's account, so each application is submitted
as (and owned in the RM by) its user, and killed as its owner. Note that
the bootstrap does not register as an ApplicationMaster over the AM-RM protocol, so a real
RM keeps the application ``ACCEPTED`` while the kernel runs and expires its attempt after
``yarn.am.liveness-monitor.expiry-interval-ms``; clusters that run kernels this way must
allow for that, or wrap the command in an AM that registers.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import math
import shlex
import socket
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from raygate.settings import setting

from .base import KernelHandle, KernelStartError, LaunchRequest
from .remote import (
    RemoteKernel,
    RemoteLauncher,
    RemoteSettings,
    _resource_request,
    placement_constraints,
)
from .wire import encode_secret, new_secret

if TYPE_CHECKING:
    from raygate.config import GatewayConfig

log = logging.getLogger("raygate.launchers.yarn")

APPS = "/ws/v1/cluster/apps"
LIVE_STATES = ("NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING")
ENDED_STATES = ("FINISHED", "FAILED", "KILLED")
DEFAULT_MEMORY_MB = 1024
TAG = "raygate"
POLL = 0.5


class RMError(Exception):
    """The ResourceManager answered with an error (its ``RemoteException`` message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def container_size(request: LaunchRequest) -> tuple[int, int]:
    """``(memory MB, vCores)`` of the kernel's AM container."""
    res = _resource_request(request)
    memory = math.ceil(res.memory / 2**20) if res.memory else DEFAULT_MEMORY_MB
    vcores = max(1, math.ceil(res.cpus)) if res.cpus else 1
    return memory, vcores


class YarnKernel(RemoteKernel):
    """A kernel in a YARN application: shutting it down kills the application."""

    async def shutdown(self) -> None:
        if not self.stopped:
            launcher = self.launcher
            assert isinstance(launcher, YarnLauncher)
            await launcher.kill(self.extra["application_id"], self.extra.get("user"))
        await super().shutdown()


@dataclass
class YarnSettings(RemoteSettings):
    yarn_endpoint: str = setting(
        "",
        "URL of the YARN ResourceManager's REST API (http://rm:8088) the yarn launcher "
        "submits kernels to.",
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


class YarnLauncher(RemoteLauncher):
    """Kernels as YARN applications whose AM container runs the bootstrap."""

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
        **remote: Any,
    ) -> None:
        super().__init__(**remote)
        self.endpoint = endpoint.rstrip("/")
        self.queue = queue or "default"
        self.user = user or getpass.getuser()
        self.python = python or sys.executable
        self.request_timeout = request_timeout
        self._http: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: YarnSettings, gateway: GatewayConfig) -> YarnLauncher:
        return cls(
            endpoint=settings.yarn_endpoint,
            queue=settings.yarn_queue,
            user=settings.yarn_user,
            python=settings.yarn_python,
            **cls.remote_options(settings, gateway),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await super().close()

    # -- the REST API --

    async def _rm(
        self, method: str, path: str, body: Any = None, user: str | None = None, **params: str
    ) -> Any:
        """One call to the ResourceManager as ``user`` (simple auth's ``user.name``; None:
        ``--yarn-user``); its JSON answer (None for an empty one)."""
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.endpoint, timeout=self.request_timeout)
        try:
            response = await self._http.request(
                method, path, json=body, params={"user.name": user or self.user, **params}
            )
        except httpx.HTTPError as exc:
            message = f"cannot reach the YARN ResourceManager at {self.endpoint}: {exc}"
            raise RMError(503, message) from None
        if response.status_code >= 400:
            try:
                message = response.json()["RemoteException"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text.strip() or response.reason_phrase
            raise RMError(response.status_code, message)
        return response.json() if response.content else None

    async def report(self, app_id: str, user: str | None = None) -> dict[str, Any]:
        return (await self._rm("GET", f"{APPS}/{app_id}", user=user))["app"]

    async def kill(self, app_id: str, user: str | None = None) -> None:
        """Kill an application, as its owner ``user`` (one that has already ended is left as
        it is)."""
        try:
            await self._rm("PUT", f"{APPS}/{app_id}/state", {"state": "KILLED"}, user=user)
        except RMError as exc:
            if exc.status != 404:
                log.warning("could not kill YARN application %s: %s", app_id, exc)

    async def force_stop(self, kernel: RemoteKernel) -> None:
        await self.kill(kernel.extra["application_id"], kernel.extra.get("user"))

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
        if res.gpus:
            refused.append(f"{res.gpus:g} GPUs")
        refused += [f"{amount:g} {name}" for name, amount in sorted(res.custom.items())]
        if refused:
            raise KernelStartError(
                "the yarn launcher sizes containers by memory and vCores only; it cannot "
                "honour " + "; ".join(refused),
                status=400,
            )

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        if not self.endpoint:
            raise KernelStartError("no YARN ResourceManager is configured (--yarn-endpoint)")
        self._refuse_what_yarn_cannot_size(request)
        await self.listen()
        started = time.monotonic()
        deadline = started + request.launch_timeout - min(2.0, 0.2 * request.launch_timeout)
        memory, vcores = container_size(request)
        queue = self._queue_for(request)
        # --kernel-isolation users: submitted as the user's account, who owns it in the RM
        # (and, on a secure cluster's LinuxContainerExecutor, whom its container runs as).
        owner = request.account or self.user
        try:
            new = await self._rm("POST", f"{APPS}/new-application", user=owner)
        except RMError as exc:
            raise KernelStartError(str(exc), status=503) from None
        app_id = new["application-id"]
        largest = new.get("maximum-resource-capability") or {}
        if memory > int(largest.get("memory", memory)) or vcores > int(
            largest.get("vCores", vcores)
        ):
            raise KernelStartError(
                f"the kernel asks for a container of memory={memory}MB, vCores={vcores}; the "
                f"largest this YARN cluster gives is memory={largest.get('memory')}MB, "
                f"vCores={largest.get('vCores')}",
                status=400,
            )
        secret = new_secret()
        placement = {"launcher": self.kind, "application_id": app_id, "queue": queue}
        settings = self.bootstrap_settings(request, secret, self._report_host(), placement)
        settings.pop("secret")  # it travels in the container's environment
        settings["report"]["timeout"] = max(5.0, request.launch_timeout)
        command = (
            shlex.join([self.python, "-m", "raygate.launchers.kernelside.bootstrap"])
            + " 1><LOG_DIR>/stdout 2><LOG_DIR>/stderr"
        )
        environment = {
            "RAYGATE_BOOTSTRAP_SETTINGS": json.dumps(settings),
            "RAYGATE_KERNEL_SECRET": encode_secret(secret),
        }
        context = {
            "application-id": app_id,
            "application-name": f"raygate-kernel-{request.kernel_id}",
            "queue": queue,
            "application-type": "RAYGATE",
            "application-tags": {"tag": [TAG, request.kernel_id]},
            "max-app-attempts": 1,
            "unmanaged-AM": False,
            "keep-containers-across-application-attempts": False,
            "resource": {"memory": memory, "vCores": vcores},
            "am-container-spec": {
                "commands": {"command": command},
                "environment": {"entry": [{"key": k, "value": v} for k, v in environment.items()]},
            },
        }
        report = self.listener.expect(request.kernel_id, secret)
        try:
            try:
                await self._rm("POST", APPS, context, user=owner)
            except RMError as exc:
                raise KernelStartError(
                    f"the YARN ResourceManager refused application {app_id}: {exc}",
                    status=400 if exc.status == 400 else 503,
                ) from None
            payload, app = await self._wait_for_report(report, app_id, owner, request, deadline)
        except BaseException:
            self.listener.forget(request.kernel_id)
            await self.kill(app_id, owner)
            raise
        placement["host"] = (app.get("amHostHttpAddress") or "").rsplit(":", 1)[0]
        placement["container"] = {"memory_mb": memory, "vcores": vcores}
        extra = {"application_id": app_id, "user": owner}
        kernel = self.from_report(request, secret, payload, placement, extra)
        log.info(
            "kernel %s: running as YARN application %s on %s in %.2fs",
            request.kernel_id,
            app_id,
            placement["host"],
            time.monotonic() - started,
        )
        return kernel

    async def _wait_for_report(
        self,
        report: asyncio.Future,
        app_id: str,
        owner: str,
        request: LaunchRequest,
        deadline: float,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait for the bootstrap's report while watching the application; returns the
        report and the application's last report."""
        app: dict[str, Any] = {}
        while True:
            remaining = deadline - time.monotonic()
            done, _ = await asyncio.wait({report}, timeout=max(0.0, min(POLL, remaining)))
            try:
                app = await self.report(app_id, owner)
            except RMError as exc:
                log.warning("YARN application %s: cannot read its report: %s", app_id, exc)
            if report in done:
                return report.result(), app
            state = app.get("state")
            if state in ENDED_STATES:
                raise KernelStartError(
                    f"YARN application {app_id} ended {state} before the kernel reported: "
                    f"{app.get('diagnostics') or 'no diagnostics'}"
                )
            if time.monotonic() >= deadline:
                raise self._timed_out(app_id, app, request)

    def _timed_out(
        self, app_id: str, app: dict[str, Any], request: LaunchRequest
    ) -> KernelStartError:
        waited = request.launch_timeout
        memory, vcores = container_size(request)
        state = app.get("state", "unknown")
        diagnostics = app.get("diagnostics") or "no diagnostics"
        # Whether the AM container was placed: a real RM keeps the application ACCEPTED
        # while the bootstrap (which never registers as an AM) runs, with its AM host set.
        if state != "RUNNING" and not app.get("amHostHttpAddress"):
            return KernelStartError(
                f"gave up after waiting {waited:g}s: YARN application {app_id} stayed {state} "
                f"in queue {app.get('queue', self._queue_for(request))} (it asks for "
                f"memory={memory}MB, vCores={vcores}): {diagnostics}",
                status=503,
            )
        return KernelStartError(
            f"timed out after {waited:g}s: YARN application {app_id} runs on "
            f"{app.get('amHostHttpAddress')} but the kernel did not report back",
            status=504,
        )

    # -- after a gateway restart --

    async def live_applications(self) -> dict[str, dict[str, Any]] | None:
        """The live raygate applications by kernel id (None if the RM cannot be asked)."""
        try:
            answer = await self._rm("GET", APPS, applicationTags=TAG, states=",".join(LIVE_STATES))
        except RMError as exc:
            log.warning("yarn launcher: cannot list the applications: %s", exc)
            return None
        apps = ((answer or {}).get("apps") or {}).get("app") or []
        live = {}
        for app in apps:
            for tag in str(app.get("applicationTags") or "").split(","):
                if tag and tag != TAG:
                    live[tag] = app
        return live

    async def find_running(self) -> list[KernelHandle]:
        if not self.endpoint:
            return []
        records = self.state.load(self.kind)
        if not records:
            return []
        live = await self.live_applications()
        if live is not None:
            for record in records:
                if record.get("kernel_id") not in live:
                    log.info("kernel %s: its YARN application has ended", record.get("kernel_id"))
                    self.state.remove(self.kind, str(record.get("kernel_id")))
            records = [r for r in records if r.get("kernel_id") in live]
        found = await self._probe_records(records, timeout=10.0)
        adopted = {k.kernel_id for k in found}
        now = time.monotonic()
        for record in records:
            kernel_id = record.get("kernel_id", "")
            if kernel_id not in adopted and self._unreachable.get(kernel_id, 0) <= now:
                extra = record.get("extra") or {}
                app_id = extra.get("application_id")
                if app_id:
                    log.info("killing YARN application %s: its bootstrap is gone", app_id)
                    await self.kill(app_id, extra.get("user"))
        return found

    async def find_new(self, known: Collection[str]) -> list[KernelHandle]:
        if not self.endpoint:
            return []
        return await super().find_new(known)
