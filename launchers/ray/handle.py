"""The gateway's handle on one kernel inside a :class:`~raygate.actors.kernel.KernelActor`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from ..base import ConnectionInfo, KernelHandle, KernelStartError, LaunchRequest
from . import cluster
from .placement import death_reason


class ActorCalls(Protocol):
    """What a kernel handle needs of the launcher that made it (:class:`.launcher.RayLauncher`;
    a Protocol so that this module, which the launcher imports, does not import it back)."""

    async def ask(
        self, actor: Any, kernel_id: str, method: str, *args: Any, timeout: float | None = 30.0
    ) -> Any: ...

    def forget_exit(self, kernel_id: str) -> None: ...


async def get(ref: Any, timeout: float | None = None) -> Any:
    """Await a Ray ObjectRef from the gateway's event loop."""
    future = asyncio.wrap_future(ref.future())
    return await (asyncio.wait_for(future, timeout) if timeout else future)


def why_gone(actor_hex_id: str) -> str:
    """Why a kernel's actor no longer answers, in words."""
    return death_reason(cluster.actor_record(actor_hex_id)) or "its actor is gone"


class RayKernel(KernelHandle):
    """A kernel inside a :class:`KernelActor`; made by :class:`RayLauncher` at launch and
    when it finds running kernels again."""

    def __init__(
        self,
        launcher: ActorCalls,
        request: LaunchRequest,
        connection: ConnectionInfo,
        actor: Any,
        placement: dict[str, Any],
    ) -> None:
        super().__init__(request, connection)
        self.launcher = launcher
        self.actor = actor
        self.placement = placement
        self.stopped = False

    @property
    def actor_id(self) -> str:
        return cluster.actor_id(self.actor)

    async def _call(self, method: str, *args: Any, timeout: float | None = 30.0) -> Any:
        return await self.launcher.ask(self.actor, self.kernel_id, method, *args, timeout=timeout)

    async def is_alive(self) -> bool:
        import ray

        try:
            return bool((await self._call("poll", timeout=10.0))["alive"])
        except (TimeoutError, ray.exceptions.RayActorError):
            return False

    async def signal(self, signum: int) -> None:
        await self._call("signal", int(signum))

    async def restart(self) -> ConnectionInfo:
        import ray

        try:
            info = await self._call("restart", timeout=max(30.0, self.request.launch_timeout))
        except ray.exceptions.RayActorError:
            reason = why_gone(self.actor_id)
            raise KernelStartError(f"the kernel cannot restart: {reason}", status=410) from None
        except TimeoutError:
            raise KernelStartError("the kernel's actor did not restart it in time") from None
        self.placement.update(info["placement"])
        return ConnectionInfo.from_dict(info["connection"])

    async def shutdown(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        import ray

        try:
            await self._call("shutdown", timeout=15.0)
        except Exception:
            pass  # dead, stuck or gone: killed below all the same
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:
            pass
        self.launcher.forget_exit(self.kernel_id)

    async def kept_output(self, after: Sequence[str]) -> list[list[bytes]] | None:
        import ray

        try:
            return await self._call("kept_output", list(after), timeout=30.0)
        except ray.exceptions.RayActorError:
            # What it kept went with the actor (the kernel was shut down or died while a
            # restarted gateway recovered it; the monitor reports a death): nothing to replay.
            return None

    async def failure_reason(self) -> str:
        import ray

        try:
            return await self._call("failure_reason", timeout=5.0)
        except (TimeoutError, ray.exceptions.RayActorError):
            return why_gone(self.actor_id)

    async def assign(self, request: LaunchRequest) -> None:
        await self._call("assign", request.to_record())
        self.request = request
