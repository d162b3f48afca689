"""Kernels placed on a dask-distributed cluster.

Each kernel is one long-running Dask task (:func:`run_kernel`) submitted with the
kernel's resource request as Dask worker resources (``GPU=1``, ...). The task runs the
bootstrap (:mod:`.bootstrap`) on its worker and waits for it, so the worker holds the
resources exactly as long as the kernel lives; the task secedes from the worker's
thread pool, so it takes no compute slot. (A Dask *actor* would not hold resources.)

The bootstrap reports to the gateway's report listener and is controlled through its
control endpoint, as on SSH hosts; the task is fire-and-forget, so the scheduler keeps it
(and its resources) when the gateway goes away, and a restarted gateway finds the kernel
from its reattach record. The kernel dies with the task's worker.

The scheduler comes from ``--dask-scheduler`` or the kernelspec's
``metadata.raygate.dask.scheduler``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raygate.settings import setting

from .base import KernelHandle, KernelStartError, LaunchRequest
from .kernelside.process import spawn_kernel, tail
from .remote import (
    RemoteLauncher,
    RemoteSettings,
    ReportListener,
    describe_resources,
    placement_constraints,
    requested_resources,
)
from .wire import new_secret

if TYPE_CHECKING:
    from distributed import Client

    from raygate.config import GatewayConfig

log = logging.getLogger("raygate.launchers.dask")

# Request names that map to a Dask worker resource only when some worker declares it;
# GPUs and custom resources are always asked for by name.
OPTIONAL_RESOURCES = {"CPU": "CPU", "memory": "MEMORY"}


class KernelSettings:
    """The bootstrap's settings as a task argument, with a repr that hides the secret
    (Dask may print a task's arguments)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __repr__(self) -> str:
        return "<raygate kernel settings>"


def _worker_host(address: str) -> str:
    hostport = address.split("://", 1)[-1]
    host = hostport.rsplit(":", 1)[0] if hostport.count(":") >= 1 else hostport
    return host.strip("[]")


def run_kernel(settings: KernelSettings) -> dict[str, Any]:
    """The Dask task of one kernel: run the bootstrap until the kernel is shut down.

    Never raises (Dask would log the arguments of a failed task); the result says how
    the bootstrap ended.
    """
    from distributed import get_worker, secede

    workdir = tempfile.mkdtemp(prefix="raygate-dask-")
    try:
        worker = get_worker()
        host = _worker_host(worker.address)
        config = dict(settings.data)
        config["ip"] = config.get("ip") or host
        config["placement"] = {
            **(config.get("placement") or {}),
            "worker": worker.address,
            "host": host,
        }
        path = os.path.join(workdir, "settings.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        log_path = os.path.join(workdir, "bootstrap.log")
        secede()  # hold the resources, not a thread slot
        # The bootstrap dies with this thread (PR_SET_PDEATHSIG), the kernel with it.
        proc = spawn_kernel(
            [sys.executable, "-m", "raygate.launchers.kernelside.bootstrap", "--config-file", path],
            os.environ,
            log_path,
        )
        code = proc.wait()
        return {"exit_code": code, "output": tail(log_path) if code else ""}
    except Exception as exc:
        return {"exit_code": -1, "output": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class DaskSettings(RemoteSettings):
    dask_scheduler: str = setting(
        "", "Address of the Dask scheduler the dask launcher places kernels through."
    )


class DaskLauncher(RemoteLauncher):
    """Kernels as long-running tasks on a Dask cluster."""

    kind = "dask"
    settings = DaskSettings
    requires = ("distributed",)  # imported on first use: it is slow to import

    def __init__(
        self,
        scheduler: str = "",
        listener: ReportListener | None = None,
        state_dir: str = "",
        report_address: str = "",
    ) -> None:
        super().__init__(listener, state_dir, report_address)
        self.scheduler = scheduler
        self._clients: dict[str, Client] = {}

    @classmethod
    def from_settings(cls, settings: DaskSettings, gateway: GatewayConfig) -> DaskLauncher:
        return cls(scheduler=settings.dask_scheduler, **cls.remote_options(settings, gateway))

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.close()
            except Exception as exc:  # closing must not stop the gateway's shutdown
                log.warning("closing the Dask client failed: %s", exc)
        await super().close()

    async def _client(self, address: str) -> Client:
        client = self._clients.get(address)
        if client is not None and client.status == "running":
            return client
        from distributed import Client

        try:
            client = await Client(address, asynchronous=True, set_as_default=False, timeout=10)
        except (TimeoutError, OSError) as exc:
            raise KernelStartError(
                f"cannot reach the Dask scheduler at {address}: {exc}", status=503
            ) from None
        self._clients[address] = client
        return client

    def _scheduler_for(self, request: LaunchRequest) -> str:
        meta = request.spec.raygate.section("dask")
        address = meta.get("scheduler") or self.scheduler
        if not address:
            raise KernelStartError(
                "no Dask scheduler is configured (--dask-scheduler, or the kernelspec's "
                "metadata.raygate.dask.scheduler)"
            )
        return address

    @staticmethod
    def dask_resources(wanted: dict[str, float], workers: dict[str, Any]) -> dict[str, float]:
        """The worker resources to ask Dask for: GPUs and custom resources by name; CPUs
        and memory only where the cluster's workers declare ``CPU``/``MEMORY``."""
        declared = {name for w in workers.values() for name in (w.get("resources") or {})}
        out = {}
        for name, amount in wanted.items():
            if name in OPTIONAL_RESOURCES:
                if OPTIONAL_RESOURCES[name] in declared:
                    out[OPTIONAL_RESOURCES[name]] = amount
            else:
                out[name] = amount
        return out

    @staticmethod
    def _describe_workers(workers: dict[str, Any]) -> str:
        parts = []
        for address, info in sorted(workers.items()):
            parts.append(f"{address}: {describe_resources(info.get('resources') or {})}")
        return "; ".join(parts) or "no workers"

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        await self.listen()
        started = time.monotonic()
        margin = min(2.0, 0.2 * request.launch_timeout)
        deadline = started + request.launch_timeout - margin
        address = self._scheduler_for(request)
        constraints = placement_constraints(request)
        if constraints:
            raise KernelStartError(
                "the dask launcher places kernels by resources only; it cannot honour "
                + "; ".join(constraints),
                status=400,
            )
        client = await self._client(address)
        assert client.scheduler is not None  # _client answers a running client
        workers = (await client.scheduler.identity(n_workers=-1)).get("workers", {})
        resources = self.dask_resources(requested_resources(request), workers)
        if workers and resources:
            fits = any(
                all((w.get("resources") or {}).get(n, 0) >= a for n, a in resources.items())
                for w in workers.values()
            )
            if not fits:
                raise KernelStartError(
                    f"no worker of the Dask cluster at {address} can ever hold "
                    f"{describe_resources(resources)} (workers have: "
                    f"{self._describe_workers(workers)})",
                    status=400,
                )
        from distributed import fire_and_forget
        from distributed.utils import get_ip

        secret = new_secret()
        report_host = self.report_address or get_ip(_worker_host(address))
        placement = {"launcher": self.kind, "scheduler": address, "resources": resources}
        settings = self.bootstrap_settings(request, secret, report_host, placement)
        if settings["cluster_access"]:
            # distributed.Client() in the kernel joins this cluster, as ray.init() does Ray's.
            settings["env"].setdefault("DASK_SCHEDULER_ADDRESS", address)
        settings["report"]["timeout"] = max(5.0, request.launch_timeout)
        key = f"raygate-kernel-{request.kernel_id}"
        report = self.listener.expect(request.kernel_id, secret)
        task = client.submit(
            run_kernel, KernelSettings(settings), key=key, resources=resources or None, pure=False
        )
        fire_and_forget(task)

        async def ended() -> Any:
            return await task

        ending = asyncio.ensure_future(ended())
        try:
            done, _ = await asyncio.wait(
                {report, ending},
                timeout=max(0.1, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if report in done:
                payload = report.result()
            elif ending in done:
                result = ending.result() if not ending.exception() else None
                detail = (result or {}).get("output") or str(ending.exception() or "")
                raise KernelStartError(f"the kernel bootstrap on the Dask cluster failed: {detail}")
            else:
                raise await self._timed_out(client, address, key, request, resources, workers)
        except BaseException:
            self.listener.forget(request.kernel_id)
            await client.cancel([task], force=True)
            raise
        finally:
            ending.cancel()
        kernel = self.from_report(
            request, secret, payload, placement, {"scheduler": address, "task_key": key}
        )
        log.info(
            "kernel %s: running on Dask worker %s in %.2fs",
            request.kernel_id,
            kernel.placement.get("worker"),
            time.monotonic() - started,
        )
        return kernel

    async def _timed_out(
        self,
        client: Client,
        address: str,
        key: str,
        request: LaunchRequest,
        resources: dict[str, float],
        workers: dict[str, Any],
    ) -> KernelStartError:
        try:
            # call stacks exist only for tasks a worker is executing, not for queued ones
            assert client.scheduler is not None  # the client that submitted the kernel
            stacks = await client.scheduler.call_stack(keys=[key])
            running = any(key in (frames or {}) for frames in (stacks or {}).values())
        except Exception:
            running = False
        waited = request.launch_timeout
        if running:
            return KernelStartError(
                f"timed out after {waited:g}s: the kernel was placed on the Dask cluster at "
                f"{address} but did not report back",
                status=504,
            )
        return KernelStartError(
            f"gave up after waiting {waited:g}s for capacity: the kernel asks for "
            f"{describe_resources(resources)} and no worker of the Dask cluster at {address} "
            f"has that free (workers: {self._describe_workers(workers)})",
            status=503,
        )
