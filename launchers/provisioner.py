"""The Ray launcher as a ``jupyter_client`` kernel provisioner.

With it, anything built on ``jupyter_client`` -- ``jupyter lab`` and ``jupyter server``,
``nbclient``, ``papermill`` -- runs a kernelspec's kernels as Ray actors without a gateway:
name it in the kernelspec::

    "metadata": {
      "kernel_provisioner": {
        "provisioner_name": "raygate-ray-provisioner",
        "config": {"address": "ray-head:6379", "namespace": "raygate"}
      },
      "raygate": {"resources": {"gpus": 1, "memory": "8Gi"}}
    }

``address`` defaults to ``RAY_ADDRESS`` (empty: a local Ray started for the process).
The kernel's resource request is read as the gateway reads it, from
``metadata.raygate.resources`` and the ``KERNEL_*`` variables of the kernel's environment.
A restart keeps the actor and its resources and starts a fresh kernel process in it.

Kernels started this way use plain ZMQ, never CurveZMQ (``raygate serve
--kernel-encryption curve`` does not apply here): jupyter_client's clients use the
kernel's own keypair, secret key included, as their client keys, and raygate keeps a
kernel's secret key on the kernel's node. Use the gateway where traffic must be encrypted.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Float, Unicode

from raygate.resources import InvalidResourceRequest, request_for

from .base import InvalidKernelSpecMetadata, KernelSpecInfo, KernelStartError, LaunchRequest
from .ray import RayKernel, RayLauncher

_launchers: dict[tuple[str, str], RayLauncher] = {}


def _launcher(address: str, namespace: str, kernel_cpus: float) -> RayLauncher:
    key = (address, namespace)
    if key not in _launchers:
        _launchers[key] = RayLauncher(address=address, namespace=namespace, kernel_cpus=kernel_cpus)
    return _launchers[key]


class RayKernelProvisioner(KernelProvisionerBase):
    """Runs the kernel in a raygate kernel actor on a Ray cluster."""

    address = Unicode(
        os.environ.get("RAY_ADDRESS", ""), config=True, help="Ray cluster to join (GCS host:port)."
    )
    namespace = Unicode("raygate", config=True, help="Ray namespace of the kernel actors.")
    kernel_cpus = Float(1.0, config=True, help="CPUs a kernel reserves unless it asks.")
    launch_timeout = Float(60.0, config=True, help="Seconds a kernel may take to be placed.")

    handle: RayKernel | None = None
    _env: dict[str, str] | None = None

    @property
    def has_process(self) -> bool:
        return self.handle is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        # The command runs on the actor's node with the actor's own connection file; this
        # one only satisfies the kernel manager, which wants a command back.
        extra = kwargs.pop("extra_arguments", None) or []
        kwargs = await super().pre_launch(cmd=list(self.kernel_spec.argv) + extra, **kwargs)
        self._env = dict(kwargs.get("env") or {})
        return kwargs

    def _request(self) -> LaunchRequest:
        spec = self.kernel_spec
        env = self._env or {}
        # Only what the kernelspec sets and the KERNEL_* variables travel to the node:
        # the rest of this process's environment describes this machine, not that one.
        kernel_env = {k: v for k, v in env.items() if k.startswith("KERNEL_")}
        timeout = float(kernel_env.get("KERNEL_LAUNCH_TIMEOUT") or self.launch_timeout)
        name = os.path.basename(spec.resource_dir) if spec.resource_dir else spec.display_name
        info = KernelSpecInfo(
            name=name,
            argv=list(spec.argv),
            env={k: env.get(k, v) for k, v in (spec.env or {}).items()},
            display_name=spec.display_name,
            language=spec.language,
            interrupt_mode=spec.interrupt_mode or "signal",
            metadata=dict(spec.metadata or {}),
        )
        try:
            resources = request_for(info.raygate.resources, kernel_env)
        except (InvalidKernelSpecMetadata, InvalidResourceRequest) as exc:
            raise RuntimeError(f"bad resource request: {exc}") from None
        return LaunchRequest(
            kernel_id=str(self.kernel_id),
            spec=info,
            env=kernel_env,
            launch_timeout=timeout,
            username=kernel_env.get("KERNEL_USERNAME") or None,
            cwd=kernel_env.get("KERNEL_WORKING_DIR") or None,
            resources=resources,
            encryption="none",  # see the module docstring
        )

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        try:
            if self.handle is not None and not self.handle.stopped:
                # a restart: same actor, fresh kernel process
                connection = await self.handle.restart()
                self.handle.connection = connection
            else:
                launcher = _launcher(self.address, self.namespace, self.kernel_cpus)
                self.handle = await launcher.launch(self._request())
                connection = self.handle.connection
        except KernelStartError as exc:
            raise RuntimeError(f"raygate: the kernel could not start on Ray: {exc}") from None
        # the connection file's fields, the key as text: what jupyter_client's type says
        info = cast(KernelConnectionInfo, {**connection.to_dict(), "key": connection.key})
        self.connection_info = info
        return info

    async def poll(self) -> int | None:
        if self.handle is None:
            return 0
        return None if await self.handle.is_alive() else 1

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.1)
        return code

    async def send_signal(self, signum: int) -> None:
        if self.handle is not None:
            await self.handle.signal(signum)

    async def kill(self, restart: bool = False) -> None:
        await self._stop()

    async def terminate(self, restart: bool = False) -> None:
        await self._stop()

    async def _stop(self) -> None:
        """Stop the kernel process and keep the actor and what it holds: jupyter_client
        also asks for a SIGTERM without saying a restart follows (``finish_shutdown``, when
        the kernel is slow to exit) and then starts the kernel again here (CI run 32). The
        actor goes in :meth:`cleanup`, which says whether a restart follows."""
        if self.handle is not None and not self.handle.stopped:
            await self.handle._call("stop")

    async def cleanup(self, restart: bool = False) -> None:
        if not restart and self.handle is not None:
            await self.handle.shutdown()
            self.handle = None

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(address=self.address, namespace=self.namespace)
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.address = provisioner_info.get("address", self.address)
        self.namespace = provisioner_info.get("namespace", self.namespace)
        launcher = _launcher(self.address, self.namespace, self.kernel_cpus)
        await launcher.connect()
        for handle in await launcher.find_running():
            if isinstance(handle, RayKernel) and handle.kernel_id == str(self.kernel_id):
                self.handle = handle

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 10.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return max(recommended, self.launch_timeout)


__all__ = ["RayKernelProvisioner"]
