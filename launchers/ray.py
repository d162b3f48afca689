"""Kernels as Ray actors, placed by the resources they ask for.

Each kernel is a detached actor (:class:`raygate.actors.kernel.KernelActor`) named by
its kernel id in the gateway's Ray namespace, created with the kernel's resource request
as its options (CPUs, memory, GPUs, custom resources, accelerator type, node labels,
scheduling strategy) and the kernelspec's ``metadata.raygate.runtime_env``. The actor
starts the kernel on its node and the gateway connects ZMQ to it there.

* A request no node (and no autoscaler node type) can ever hold fails at once with a 400
  that names what was asked and what the cluster has; one that must wait for capacity
  waits up to the launch timeout, then fails with a 503 and its actor is removed.
* Liveness of all kernels is two cluster queries (named actors, exit notices), not a
  call per kernel.
* Joined to a cluster (``--ray-address``), kernels outlive the gateway: a gateway that
  starts later, or another replica, finds them by their names. With the embedded Ray
  (``raygate serve`` with no address starts one for itself) kernels stop with the
  gateway, as that Ray does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil

from raygate.resources import ResourceRequest, format_bytes

from .base import (
    ConnectionInfo,
    KernelHandle,
    KernelSpecInfo,
    KernelStartError,
    Launcher,
    LaunchRequest,
)
from .kernelside.keeper import KEEP_BYTES

if TYPE_CHECKING:
    from raygate.config import GatewayConfig

log = logging.getLogger("raygate.launchers.ray")

_ray_lock = threading.Lock()
_remote_class: Any = None
EMBEDDED_RAY_GRACE = 5.0
"""Seconds the embedded Ray's processes get to exit after ``ray.shutdown()``."""


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


async def _get(ref: Any, timeout: float | None = None) -> Any:
    """Await a Ray ObjectRef from the gateway's event loop."""
    future = asyncio.wrap_future(ref.future())
    return await (asyncio.wait_for(future, timeout) if timeout else future)


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
            from ray._raylet import Config

            Config.initialize("")  # Ray caches its settings; make it see the token mode
        common = {"namespace": namespace, "log_to_driver": False, "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **common)
            return False
        ray.init(address="local", include_dashboard=False, **common, **init_args)
        return True


def actor_options(
    request: LaunchRequest, namespace: str, default_cpus: float = 1.0
) -> dict[str, Any]:
    """The Ray actor options that carry a kernel's resource request."""
    res: ResourceRequest = request.resources
    options: dict[str, Any] = {
        "name": request.kernel_id,
        "namespace": namespace,
        "lifetime": "detached",
        "max_restarts": 0,
        "max_concurrency": 4,
        "num_cpus": res.cpus if res.cpus is not None else default_cpus,
        "num_gpus": res.gpus or 0,
    }
    if res.memory:
        options["memory"] = int(res.memory)
    if res.custom:
        options["resources"] = dict(res.custom)
    if res.accelerator_type:
        options["accelerator_type"] = res.accelerator_type
    if res.node_labels:
        options["label_selector"] = dict(res.node_labels)
    if res.strategy == "spread":
        options["scheduling_strategy"] = "SPREAD"
    elif res.strategy == "node":
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=res.node_id, soft=res.soft
        )
    runtime_env = request.spec.metadata.get("raygate", {}).get("runtime_env")
    if runtime_env:
        options["runtime_env"] = runtime_env
    return options


def resource_shape(options: dict[str, Any]) -> dict[str, float]:
    """The Ray resources an actor with these options needs on one node."""
    shape = {"CPU": options.get("num_cpus") or 0, "GPU": options.get("num_gpus") or 0}
    shape["memory"] = options.get("memory") or 0
    shape.update(options.get("resources") or {})
    if options.get("accelerator_type"):
        shape[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return {k: float(v) for k, v in shape.items() if v}


def _fmt_resources(resources: dict[str, float]) -> str:
    parts = []
    for name, amount in sorted(resources.items()):
        if name.startswith("node:") or name.startswith("object_store"):
            continue
        if name == "memory":
            parts.append(f"{format_bytes(amount)} memory")
        else:
            parts.append(f"{amount:g} {name}")
    return ", ".join(parts) or "nothing"


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool | None:
    """Whether a node's labels satisfy a plain ``key: value`` selector; None when the
    selector uses operators (``!``, ``in(...)``) this check leaves to Ray."""
    for key, want in selector.items():
        if want.startswith("!") or "(" in want:
            return None
        if labels.get(key) != want:
            return False
    return True


def _fits(shape: dict[str, float], total: dict[str, float]) -> bool:
    return all(total.get(name, 0) + 1e-9 >= amount for name, amount in shape.items())


def _death_reason(actor_id: str) -> str:
    """Why an actor died, in words, from the cluster's actor table."""
    try:
        import ray

        info = ray._private.state.state.actor_table(actor_id)
    except Exception:
        return ""
    if not info:
        return "its actor is gone"
    cause = info.get("DeathCause")
    if cause is None:
        return f"its actor is {info.get('State', 'gone').lower()}"
    context = cause.WhichOneof("context")
    detail = getattr(cause, context) if context else None
    message = (getattr(detail, "error_message", "") or "").strip() if detail else ""
    if context == "node_death_context" or ("node" in message.lower() and "died" in message):
        return f"the node it ran on died: {message}".rstrip(": ")
    if "ray.kill" in message:
        return "its actor was killed (the kernel was shut down, perhaps by another gateway)"
    if context == "oom_context":
        return f"its actor was killed for lack of memory: {message}".rstrip(": ")
    return f"its actor died: {message.splitlines()[0] if message else context}"


class RayKernel(KernelHandle):
    """A kernel inside a :class:`KernelActor`."""

    def __init__(
        self,
        launcher: RayLauncher,
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
        return self.actor._actor_id.hex()

    async def _call(self, method: str, *args: Any, timeout: float | None = 30.0) -> Any:
        return await _get(getattr(self.actor, method).remote(*args), timeout)

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
            reason = _death_reason(self.actor_id) or "its actor is gone"
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
        return await self._call("kept_output", list(after), timeout=30.0)

    async def failure_reason(self) -> str:
        import ray

        try:
            return await self._call("failure_reason", timeout=5.0)
        except (TimeoutError, ray.exceptions.RayActorError):
            return _death_reason(self.actor_id) or "its actor is gone"

    async def assign(self, request: LaunchRequest) -> None:
        await self._call(
            "assign",
            {
                "env": dict(request.env),
                "username": request.username,
                "cwd": request.cwd,
                "launch_timeout": request.launch_timeout,
                "pooled": request.pooled,
            },
        )
        self.request = request


class RayLauncher(Launcher):
    """Kernels as detached Ray actors in one namespace of one Ray cluster."""

    kind = "ray"

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
        keep_output_bytes: int = KEEP_BYTES,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.kernel_cpus = kernel_cpus
        self.auth_token_file = auth_token_file
        self.eager = eager
        self.warm_workers = warm_workers
        self.keep_output_bytes = keep_output_bytes
        """Bound of the output each kernel actor keeps for a gateway restarted after a crash."""
        self._raylets: dict[str, Any] = {}
        self.warm_delay = 1.5
        self.connected = False
        self.embedded = False
        self._ray_processes: list[psutil.Process] = []
        self.kernels_outlive_gateway = bool(address)
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig) -> RayLauncher:
        return cls(
            address=config.ray_address,
            namespace=config.ray_namespace,
            num_cpus=config.ray_num_cpus,
            num_gpus=config.ray_num_gpus,
            kernel_cpus=config.ray_kernel_cpus,
            auth_token_file=config.ray_auth_token_file,
            # A gateway whose kernels mostly run elsewhere starts its local Ray on demand.
            eager=bool(config.ray_address) or config.default_launcher == cls.kind,
            keep_output_bytes=config.replay_buffer_bytes,
        )

    # -- connection --------------------------------------------------------------------

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
        await asyncio.to_thread(ray.shutdown)
        # ray.shutdown() does not always wait for every worker of the local Ray (CI once saw
        # two outlive the gateway): whatever the embedded Ray started must not outlive it.
        await asyncio.to_thread(_reap, doomed, EMBEDDED_RAY_GRACE)

    # -- starting ----------------------------------------------------------------------

    def _check_feasible(self, request: LaunchRequest, options: dict[str, Any]) -> None:
        """Fail now when no node, present or that the autoscaler could add, can ever hold
        the kernel."""
        import ray

        shape = resource_shape(options)
        res = request.resources
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if (
            res.strategy == "node"
            and not res.soft
            and not any(n["NodeID"] == res.node_id for n in nodes)
        ):
            raise KernelStartError(
                f"the kernel asks to run on node {res.node_id}, which is not in the cluster",
                status=400,
            )
        candidates = []
        for node in nodes:
            if res.strategy == "node" and not res.soft and node["NodeID"] != res.node_id:
                continue
            if (
                res.node_labels
                and _labels_match(res.node_labels, node.get("Labels") or {}) is False
            ):
                continue
            candidates.append(node)
        if any(_fits(shape, n.get("Resources") or {}) for n in candidates):
            return
        for group in self._autoscaler_node_types():
            if _fits(shape, group):
                return  # the autoscaler can add a node that holds it: wait for it
        have = "; ".join(
            f"node {n['NodeID'][:8]} ({n.get('NodeManagerAddress', '?')}): "
            f"{_fmt_resources(n.get('Resources') or {})}"
            + (
                " labels " + ",".join(f"{k}={v}" for k, v in sorted(n["Labels"].items()))
                if res.node_labels and n.get("Labels")
                else ""
            )
            for n in nodes
        )
        raise KernelStartError(
            f"no node of the Ray cluster can ever hold this kernel: it asks for "
            f"{_fmt_resources(shape)}"
            + (f" on nodes labelled {res.node_labels}" if res.node_labels else "")
            + f"; the cluster has {have or 'no nodes'}"
            + (" (and no autoscaler node type holds it)" if self._has_autoscaler else ""),
            status=400,
        )

    _has_autoscaler = False

    def _autoscaler_node_types(self) -> list[dict[str, float]]:
        """The per-node resources of each node type the autoscaler may add."""
        import ray

        try:
            config = ray._private.state.state.get_cluster_config()
        except Exception:
            return []
        if config is None:
            return []
        groups = [g for g in config.node_group_configs if g.max_count != 0]
        self._has_autoscaler = bool(groups)
        return [{k: float(v) for k, v in g.resources.items()} for g in groups]

    def _meta(self, request: LaunchRequest) -> dict[str, Any]:
        return {
            "kernel_id": request.kernel_id,
            "spec": asdict(request.spec),
            "env": dict(request.env),
            "username": request.username,
            "cwd": request.cwd,
            "launch_timeout": request.launch_timeout,
            "resources": request.resources.to_dict(),
            "encryption": request.encryption,
            "pooled": request.pooled,
            "keep_output_bytes": self.keep_output_bytes,
            "created": datetime.now(UTC).isoformat(),
        }

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        await self.connect()
        try:
            options = actor_options(request, self.namespace, self.kernel_cpus)
        except (TypeError, ValueError) as exc:
            raise KernelStartError(f"bad Ray options: {exc}", status=400) from None
        await asyncio.to_thread(self._check_feasible, request, options)
        import ray

        try:
            actor = _actor_class().options(**options).remote(self._meta(request), self.namespace)
        except (TypeError, ValueError) as exc:
            raise KernelStartError(f"Ray refused the kernel's options: {exc}", 400) from None
        # Answer before the registry's own launch timeout does, with a better message.
        budget = max(1.0, request.launch_timeout - 1.0)
        try:
            info = await _get(actor.describe.remote(), budget)
        except TimeoutError:
            message = self._still_waiting(actor, request, options, budget)
            self._kill(actor)
            raise KernelStartError(message, status=503) from None
        except ray.exceptions.RayActorError as exc:
            self._kill(actor)
            raise KernelStartError(_actor_error(exc)) from None
        except BaseException:
            self._kill(actor)  # cancelled by the registry's timeout, or the gateway stops
            raise
        handle = self._handle(actor, info, request)
        if self.warm_workers and "runtime_env" not in options:
            self._warm(handle.placement["node_id"])
        return handle

    def _warm(self, node_id: str) -> None:
        """Have an idle worker process ready on the node that just took a kernel.

        A kernel actor needs a worker process of its own, and starting one costs seconds
        (mostly ``import ray``). Ray prestarts a few when a node starts; after each launch
        this asks the node's raylet to prestart one more for this gateway's job, so the
        next kernel there starts in about the time of the kernel process itself.
        """
        threading.Thread(
            target=self._prestart_worker, args=(node_id,), name="ray-prestart", daemon=True
        ).start()

    def _prestart_worker(self, node_id: str) -> None:
        import ray

        # Not while the kernel just launched is still starting: they would share the CPU.
        time.sleep(self.warm_delay)
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

        try:
            stub = self._raylets.get(node_id)
            if stub is None:
                node = next(n for n in ray.nodes() if n["NodeID"] == node_id and n["Alive"])
                address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
                channel = init_grpc_channel(address, asynchronous=False)
                stub = self._raylets[node_id] = node_manager_pb2_grpc.NodeManagerServiceStub(
                    channel
                )
            request = node_manager_pb2.PrestartWorkersRequest(
                language=common_pb2.PYTHON,
                job_id=bytes.fromhex(ray.get_runtime_context().get_job_id()),
                keep_alive_duration_secs=600,
                num_workers=1,
            )
            stub.PrestartWorkers(request, timeout=10)
        except Exception as exc:  # only an optimisation
            self._raylets.pop(node_id, None)
            log.debug("ray: could not prestart a worker on %s: %s", node_id, exc)

    def _still_waiting(
        self, actor: Any, request: LaunchRequest, options: dict[str, Any], waited: float
    ) -> str:
        import ray

        try:
            state = ray._private.state.state.actor_table(actor._actor_id.hex()).get("State")
        except Exception:
            state = ""
        asked = _fmt_resources(resource_shape(options))
        if state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", ""):
            try:
                free = ray._private.state.state.available_resources_per_node()
                have = "; ".join(
                    f"node {node[:8]}: {_fmt_resources(r)}" for node, r in sorted(free.items())
                )
            except Exception:
                have = ""
            return (
                f"gave up after waiting {waited:g}s for capacity: the kernel asks for {asked} "
                f"and no node has that free"
                + (f" (free now: {have})" if have else "")
                + "; its actor was removed"
            )
        return f"the kernel's actor did not start within {waited:g}s (state {state}); removed"

    @staticmethod
    def _kill(actor: Any) -> None:
        import ray

        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass

    def _handle(self, actor: Any, info: dict[str, Any], request: LaunchRequest) -> RayKernel:
        placement = dict(info["placement"])
        placement["actor_id"] = actor._actor_id.hex()
        placement["namespace"] = self.namespace
        kernel = RayKernel(
            self, request, ConnectionInfo.from_dict(info["connection"]), actor, placement
        )
        created = info["meta"].get("created")
        if created:
            kernel.created = datetime.fromisoformat(created)
        return kernel

    # -- watching ----------------------------------------------------------------------

    def _live_names(self) -> set[str]:
        import ray

        return {
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == self.namespace
        }

    def _exited(self) -> set[str]:
        from ray.experimental import internal_kv

        from raygate.actors.kernel import EXIT_KV_NAMESPACE

        prefix = f"{self.namespace}/"
        keys = internal_kv._internal_kv_list(prefix, namespace=EXIT_KV_NAMESPACE)
        return {(k.decode() if isinstance(k, bytes) else k)[len(prefix) :] for k in keys}

    def forget_exit(self, kernel_id: str) -> None:
        from ray.experimental import internal_kv

        from raygate.actors.kernel import EXIT_KV_NAMESPACE, exit_key

        try:
            internal_kv._internal_kv_del(
                exit_key(self.namespace, kernel_id), namespace=EXIT_KV_NAMESPACE
            )
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
            free = ray._private.state.state.available_resources_per_node()
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
                info = await _get(actor.describe.remote(), 5.0)
                if info["meta"].get("pooled"):
                    return None  # a warm kernel of some gateway's pool: nobody's to serve
                return self._handle(actor, info, _request_from_meta(info["meta"]))
            except Exception as exc:
                log.debug("ray: actor %s not served (yet): %s", name, exc)
                return None

        found = await asyncio.gather(*(describe(name) for name in names))
        return [h for h in found if h is not None]


def _request_from_meta(meta: dict[str, Any]) -> LaunchRequest:
    spec = KernelSpecInfo(**meta["spec"])
    return LaunchRequest(
        kernel_id=meta["kernel_id"],
        spec=spec,
        env=dict(meta.get("env") or {}),
        launch_timeout=float(meta.get("launch_timeout") or 60.0),
        username=meta.get("username"),
        cwd=meta.get("cwd"),
        resources=ResourceRequest.from_dict(meta.get("resources")),
        encryption=meta.get("encryption") or "none",
        pooled=bool(meta.get("pooled")),
    )


def _actor_error(exc: Exception) -> str:
    """The useful part of an actor's creation failure (its constructor's exception)."""
    text = str(exc)
    for marker in (
        "KernelStartError: ",
        "SpawnError: ",
        "FileNotFoundError: ",
        "PermissionError: ",
    ):
        if marker in text:
            return text.split(marker, 1)[1].strip().splitlines()[0]
    lines = [line for line in text.splitlines() if line.strip()]
    return "the kernel's actor failed to start: " + (lines[-1] if lines else type(exc).__name__)
