"""The Ray launcher: connecting to Ray, creating kernel actors, watching and finding them.

See the package's docstring for what it promises; placement rules are in
:mod:`.placement`, Ray's private APIs in :mod:`.cluster`, the per-kernel handle in
:mod:`.handle`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil

from raygate.actors.calls import GatewayKey, read_or_make_key
from raygate.settings import Integer, Number, setting

from ..base import (
    ConnectionInfo,
    KernelHandle,
    KernelStartError,
    Launcher,
    LaunchRequest,
)
from ..kernelside.keeper import KEEP_BYTES
from ..remote.state import default_state_dir
from . import cluster
from .handle import RayKernel, get
from .ledger import RayLedgerStore
from .placement import (
    actor_options,
    check_feasible,
    creation_error,
    pack_node,
    resource_shape,
    still_waiting,
)
from .reserve import WorkerReserve

if TYPE_CHECKING:
    from raygate.config import GatewayConfig

log = logging.getLogger("raygate.launchers.ray")

_ray_lock = threading.Lock()
_remote_class: Any = None
EMBEDDED_RAY_GRACE = 5.0
"""Seconds the embedded Ray's processes get to exit after ``ray.shutdown()``."""
NODES_TTL = 2.0
"""Seconds the launcher reuses the cluster's node list to check that a start is feasible."""


def _with_descendants(processes: list[psutil.Process]) -> list[psutil.Process]:
    everything = []
    for process in processes:
        try:
            everything += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return everything


def _reap(processes: list[psutil.Process], grace: float) -> None:
    """SIGKILL whichever of ``processes`` is still running after ``grace`` seconds."""
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        try:
            log.warning("ray: killing %s (pid %d), left by local Ray", process.name(), process.pid)
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


def _actor_class() -> Any:
    global _remote_class
    if _remote_class is None:
        import ray

        from raygate.actors.kernel import KernelActor

        _remote_class = ray.remote(KernelActor)
    return _remote_class


def connect_ray(address: str = "", namespace: str = "raygate", **init_args: Any) -> bool:
    """Connect this process to Ray once; returns True when this call started a local Ray.

    Joining a cluster with token authentication needs the token (``RAY_AUTH_TOKEN``, or a
    file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``) *and*
    ``RAY_AUTH_MODE=token``: Ray 2.60 does not turn token mode on by itself for an
    explicit address, so it is set here whenever a token is given.
    """
    import ray

    with _ray_lock:
        if ray.is_initialized():
            return False
        if not os.environ.get("RAY_AUTH_MODE") and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
        ):
            os.environ["RAY_AUTH_MODE"] = "token"
            cluster.reload_ray_settings()  # Ray caches its settings; make it see the mode
        common: dict[str, Any] = {
            "namespace": namespace,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if address:
            ray.init(address=address, **common)
            return False
        ray.init(address="local", include_dashboard=False, **common, **init_args)
        return True


@dataclass
class RaySettings:
    """Where kernels run as actors, and what one kernel reserves by default."""

    ray_address: str = setting(
        "",
        "Ray cluster to join (host:port of its GCS). Empty: start a local Ray for this "
        "gateway, whose kernels stop with it. Kernels on a joined cluster outlive the gateway.",
        envvars=("RAY_ADDRESS",),
    )
    ray_namespace: str = setting("raygate", "Ray namespace of the kernel actors.")
    ray_num_cpus: float = setting(
        0.0,
        "Logical CPUs of the local Ray started without --ray-address (0: the machine's "
        "count, at least 16: idle kernels use little).",
        Number(min=0),
    )
    ray_num_gpus: float | None = setting(
        None,
        "GPUs of the local Ray started without --ray-address (default: as Ray detects).",
        Number(min=0),
        show_default=False,
    )
    ray_kernel_cpus: float = setting(
        1.0,
        "CPUs a Ray kernel reserves when neither its kernelspec nor KERNEL_CPUS says.",
        Number(min=0),
    )
    ray_warm_workers: int = setting(
        4,
        "Idle Ray workers kept started per node for this gateway's next kernels, at most: "
        "after a burst of starts, as many as the node took in it (at least one), for ten "
        "minutes. A worker ahead of demand saves a kernel start the seconds of starting one "
        "(0: none kept).",
        Integer(0),
    )
    ray_auth_token_file: str = setting(
        "",
        "File with the Ray cluster's auth token, for clusters with token authentication "
        "(or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH).",
    )
    gateway_key_file: str = setting(
        "",
        "Key this deployment's gateway replicas share (give all of them the same file): Ray "
        "kernel actors answer only calls signed with it (docs/security.md). Default: "
        "gateway-key in the state directory, made if missing.",
        show_default=False,
    )


class RayLauncher(Launcher):
    """Kernels as detached Ray actors in one namespace of one Ray cluster."""

    kind = "ray"
    settings = RaySettings

    def __init__(
        self,
        address: str = "",
        namespace: str = "raygate",
        num_cpus: float = 0.0,
        num_gpus: float | None = None,
        kernel_cpus: float = 1.0,
        auth_token_file: str = "",
        eager: bool = True,
        warm_workers: bool = True,
        warm_workers_cap: int = 4,
        keep_output_bytes: int = KEEP_BYTES,
        gateway_key_file: str = "",
    ) -> None:
        self.address = address
        self.gateway_key_file = gateway_key_file or os.path.join(default_state_dir(), "gateway-key")
        """The deployment key its kernel actors answer to (:mod:`raygate.actors.calls`)."""
        self._key: GatewayKey | None = None
        self.namespace = namespace
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.kernel_cpus = kernel_cpus
        self.auth_token_file = auth_token_file
        self.eager = eager
        self.warm_workers = warm_workers
        self.keep_output_bytes = keep_output_bytes
        """Bound of the output each kernel actor keeps for a gateway restarted after a crash."""
        self.warm_delay = 1.5
        """Seconds without a launch in flight before idle workers are prestarted."""
        self.reserve = WorkerReserve(cap=warm_workers_cap if warm_workers else 0)
        self._refill_timer: asyncio.TimerHandle | None = None
        self._prestart_failed = False
        self.connected = False
        self.embedded = False
        self._ray_processes: list[psutil.Process] = []
        self.kernels_outlive_gateway = bool(address)
        self._connecting: asyncio.Lock | None = None
        self._nodes: tuple[list[dict[str, Any]], float] = ([], -NODES_TTL)
        self._waiting: Counter[tuple[tuple[str, float], ...]] = Counter()
        """Resource shapes of the starts whose actors have not answered yet (the 503 of one
        that gives up says how many were waiting for the same)."""

    @classmethod
    def from_settings(cls, settings: RaySettings, gateway: GatewayConfig) -> RayLauncher:
        return cls(
            address=settings.ray_address,
            namespace=settings.ray_namespace,
            num_cpus=settings.ray_num_cpus,
            num_gpus=settings.ray_num_gpus,
            kernel_cpus=settings.ray_kernel_cpus,
            auth_token_file=settings.ray_auth_token_file,
            # A gateway whose kernels mostly run elsewhere starts its local Ray on demand.
            eager=bool(settings.ray_address) or gateway.default_launcher == cls.kind,
            keep_output_bytes=gateway.replay_buffer_bytes,
            warm_workers_cap=settings.ray_warm_workers,
            gateway_key_file=settings.gateway_key_file
            or (os.path.join(gateway.state_dir, "gateway-key") if gateway.state_dir else ""),
        )

    # -- connection --------------------------------------------------------------------

    @property
    def key(self) -> GatewayKey:
        if self._key is None:
            self._key = GatewayKey(read_or_make_key(self.gateway_key_file))
        return self._key

    async def ask(
        self, actor: Any, kernel_id: str, method: str, *args: Any, timeout: float | None = 30.0
    ) -> Any:
        """Call a kernel actor's method with a ticket of this deployment; its sealed
        reply, opened. Called by :class:`RayKernel` and when kernels are (re)found."""
        ticket = self.key.ticket(method, kernel_id, args)
        return self.key.open(await get(getattr(actor, method).remote(ticket, *args), timeout))

    async def start(self) -> None:
        if self.eager:
            await self.connect()

    async def connect(self) -> None:
        if self.connected:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.connected:
                return
            if self.auth_token_file:
                os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.abspath(self.auth_token_file)
            init_args: dict[str, Any] = {
                "num_cpus": self.num_cpus or max(os.cpu_count() or 1, 16),
            }
            if self.num_gpus is not None:
                init_args["num_gpus"] = self.num_gpus
            started = time.monotonic()
            # Ray's core worker installs its own SIGTERM/SIGINT handlers (that dump a stack
            # and exit); the server's own must stay, so that a SIGTERM shuts down cleanly.
            handlers = {}
            if threading.current_thread() is threading.main_thread():
                handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
            before = {child.pid for child in psutil.Process().children()}
            try:
                self.embedded = await asyncio.to_thread(
                    connect_ray, self.address, self.namespace, **init_args
                )
            except Exception as exc:
                where = self.address or "a local Ray"
                raise KernelStartError(f"cannot connect to Ray at {where}: {exc}", 503) from exc
            finally:
                for sig, handler in handlers.items():
                    if handler is not None:
                        signal.signal(sig, handler)
            self.kernels_outlive_gateway = not self.embedded
            if self.embedded:
                self._ray_processes = [
                    child for child in psutil.Process().children() if child.pid not in before
                ]
            self.connected = True
            log.info(
                "ray: %s in %.1fs (namespace %s; kernels %s the gateway)",
                "started a local Ray" if self.embedded else f"joined {self.address or 'Ray'}",
                time.monotonic() - started,
                self.namespace,
                "outlive" if self.kernels_outlive_gateway else "stop with",
            )

    async def close(self) -> None:
        if not self.connected:
            return
        self.connected = False
        import ray

        # The embedded Ray stops here, and its kernels with it (the registry has shut them
        # down already); on a joined cluster this only disconnects, kernels keep running.
        doomed = _with_descendants(self._ray_processes)
        cluster.forget_raylets()
        await asyncio.to_thread(ray.shutdown)
        # ray.shutdown() does not always wait for every worker of the local Ray (CI once saw
        # two outlive the gateway): whatever the embedded Ray started must not outlive it.
        await asyncio.to_thread(_reap, doomed, EMBEDDED_RAY_GRACE)

    # -- starting ----------------------------------------------------------------------

    def _check_feasible(self, request: LaunchRequest, options: dict[str, Any]) -> None:
        """Fail now when no node, present or that the autoscaler could add, can ever hold
        the kernel (off the event loop: it asks the cluster). One query per start, and none
        within :data:`NODES_TTL` of the last (a burst of starts asks once); the autoscaler's
        node types, and fresh nodes, only when the nodes known do not hold it."""
        import ray

        nodes, read_at = self._nodes
        if time.monotonic() - read_at > NODES_TTL:
            nodes = ray.nodes()
            self._nodes = (nodes, time.monotonic())
        try:
            check_feasible(request, options, nodes)
        except KernelStartError:
            nodes = ray.nodes()
            self._nodes = (nodes, time.monotonic())
            check_feasible(request, options, nodes, cluster.autoscaler_node_types())

    def _pack(self, request: LaunchRequest, options: dict[str, Any]) -> None:
        """Point a ``pack`` kernel at the fullest node with room for it (softly: should that
        node fill up meanwhile, Ray places it elsewhere). Off the event loop."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        free = cluster.available_per_node()
        node = pack_node(
            resource_shape(options), free, self._nodes[0], request.resources.node_labels
        )
        if node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)

    def _meta(self, request: LaunchRequest) -> dict[str, Any]:
        return {
            **request.to_record(),
            "keep_output_bytes": self.keep_output_bytes,
            "gateway_key": self.key.public(),
            "created": datetime.now(UTC).isoformat(),
        }

    async def launch(self, request: LaunchRequest) -> RayKernel:
        await self.connect()
        self.reserve.launching()
        node: str | None = None
        try:
            handle = await self._launch(request)
            if not handle.request.spec.raygate.runtime_env:  # its worker is not the reserve's
                node = handle.placement["node_id"]
            return handle
        finally:
            self.reserve.placed(node, time.monotonic())
            self._refill_later()

    async def _launch(self, request: LaunchRequest) -> RayKernel:
        try:
            options = actor_options(request, self.namespace, self.kernel_cpus)
        except (TypeError, ValueError) as exc:
            raise KernelStartError(f"bad Ray options: {exc}", status=400) from None
        await asyncio.to_thread(self._check_feasible, request, options)
        if request.resources.strategy == "pack":
            await asyncio.to_thread(self._pack, request, options)
        import ray

        try:
            actor = _actor_class().options(**options).remote(self._meta(request), self.namespace)
        except (TypeError, ValueError) as exc:
            raise KernelStartError(f"Ray refused the kernel's options: {exc}", 400) from None
        # Answer before the registry's own launch timeout does, with a better message.
        budget = max(1.0, request.launch_timeout - 1.0)
        shape = tuple(sorted(resource_shape(options).items()))
        self._waiting[shape] += 1
        try:
            info = await self.ask(actor, request.kernel_id, "describe", timeout=budget)
        except TimeoutError:
            message = self._still_waiting(actor, options, budget, self._waiting[shape])
            self._kill(actor)
            raise KernelStartError(message, status=503) from None
        except ray.exceptions.RayActorError as exc:
            self._kill(actor)
            raise KernelStartError(creation_error(str(exc), type(exc).__name__)) from None
        except BaseException:
            self._kill(actor)  # cancelled: the client gave up, the registry's timeout, exit
            raise
        finally:
            self._waiting[shape] -= 1
            if not self._waiting[shape]:
                del self._waiting[shape]
        return self._handle(actor, info, request)

    def _refill_later(self) -> None:
        """Prestart idle workers once no launch has been in flight for ``warm_delay``
        seconds (:mod:`.reserve` says how many, where)."""
        if self._refill_timer is not None:
            self._refill_timer.cancel()
        loop = asyncio.get_running_loop()
        self._refill_timer = loop.call_later(self.warm_delay, self._refill)

    def _refill(self) -> None:
        self._refill_timer = None
        if not self.connected:
            return
        for node_id, count in self.reserve.refill(time.monotonic()).items():
            threading.Thread(
                target=self._prestart_workers,
                args=(node_id, count),
                name="ray-prestart",
                daemon=True,
            ).start()

    def _prestart_workers(self, node_id: str, count: int) -> None:
        try:
            cluster.prestart_worker(node_id, count, keep_alive=int(self.reserve.keep_alive))
        except Exception as exc:  # only an optimisation, but say once that it is lost
            self.reserve.lost(node_id, count)
            level = logging.DEBUG if self._prestart_failed else logging.WARNING
            self._prestart_failed = True
            log.log(
                level,
                "ray: could not prestart workers on node %s (kernels there start slower): %r",
                node_id,
                exc,
            )

    def _still_waiting(
        self, actor: Any, options: dict[str, Any], waited: float, waiting: int
    ) -> str:
        record = cluster.actor_record(cluster.actor_id(actor))
        try:
            free = cluster.available_per_node()
        except Exception:
            free = None
        return still_waiting(record.state if record else "", options, free, waited, waiting)

    @staticmethod
    def _kill(actor: Any) -> None:
        import ray

        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass

    def _handle(self, actor: Any, info: dict[str, Any], request: LaunchRequest) -> RayKernel:
        placement = dict(info["placement"])
        placement["actor_id"] = cluster.actor_id(actor)
        placement["namespace"] = self.namespace
        kernel = RayKernel(
            self, request, ConnectionInfo.from_dict(info["connection"]), actor, placement
        )
        created = info["meta"].get("created")
        if created:
            kernel.created = datetime.fromisoformat(created)
        return kernel

    def ledger_store(self) -> RayLedgerStore | None:
        """Joined to a cluster, replicas share per-user caps in its KV store; the embedded
        Ray has no other replica."""
        if not self.address:
            return None
        return RayLedgerStore(self.namespace, self._live_names)

    # -- watching ----------------------------------------------------------------------

    def _live_names(self) -> set[str]:
        import ray

        return {
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == self.namespace
        }

    def _exited(self) -> set[str]:
        from raygate.actors.kernel import EXIT_KV_NAMESPACE

        prefix = f"{self.namespace}/"
        return {k[len(prefix) :] for k in cluster.kv_keys(prefix, EXIT_KV_NAMESPACE)}

    def forget_exit(self, kernel_id: str) -> None:
        from raygate.actors.kernel import EXIT_KV_NAMESPACE, exit_key

        try:
            cluster.kv_delete(exit_key(self.namespace, kernel_id), EXIT_KV_NAMESPACE)
        except Exception:
            pass

    async def check_alive(self, handles: list[KernelHandle]) -> dict[str, bool]:
        """Two cluster queries for all kernels: which actors live, which kernels exited."""
        if not handles or not self.connected:
            return {h.kernel_id: True for h in handles}
        # Off the event loop: a cluster that does not answer must not stall the gateway.
        live, exited = await asyncio.to_thread(lambda: (self._live_names(), self._exited()))
        return {h.kernel_id: h.kernel_id in live and h.kernel_id not in exited for h in handles}

    async def capacity(self) -> dict[str, Any] | None:
        """Each live node's CPUs, GPUs and memory, in all and free now (the status page)."""
        if not self.connected:
            return None
        import ray

        def read() -> dict[str, Any]:
            free = cluster.available_per_node()
            nodes = []
            for node in ray.nodes():
                if not node.get("Alive"):
                    continue
                total, avail = node.get("Resources") or {}, free.get(node["NodeID"]) or {}
                entry = {
                    "node_id": node["NodeID"],
                    "host": node.get("NodeManagerHostname", ""),
                    "ip": node.get("NodeManagerAddress", ""),
                }
                for key, name in (("cpus", "CPU"), ("gpus", "GPU"), ("memory", "memory")):
                    entry[key] = {"total": total.get(name, 0.0), "available": avail.get(name, 0.0)}
                nodes.append(entry)
            return {"nodes": nodes}

        return await asyncio.to_thread(read)

    # -- finding kernels again ------------------------------------------------------------

    async def find_running(self) -> list[KernelHandle]:
        if not self.connected:
            return []
        return await self.find_new(())

    async def find_new(self, known: Collection[str]) -> list[KernelHandle]:
        if not self.connected:
            return []
        import ray

        names = sorted(n for n in await asyncio.to_thread(self._live_names) if n not in known)
        if not names:
            return []

        async def describe(name: str) -> KernelHandle | None:
            try:
                actor = await asyncio.to_thread(ray.get_actor, name, self.namespace)
                # Actors still starting (or not ours) do not answer in time: next round.
                info = await self.ask(actor, name, "describe", timeout=5.0)
                if info["meta"].get("pooled"):
                    return None  # a warm kernel of some gateway's pool: nobody's to serve
                return self._handle(actor, info, LaunchRequest.from_record(info["meta"]))
            except Exception as exc:
                log.debug("ray: actor %s not served (yet): %s", name, exc)
                return None

        found = await asyncio.gather(*(describe(name) for name in names))
        return [h for h in found if h is not None]
