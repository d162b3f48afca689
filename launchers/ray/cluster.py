"""Every use of Ray's private APIs in raygate, in one module.

Ray's public API has no way to ask why an actor died, what the autoscaler may add, what
each node has free, to reload Ray's cached settings, to keep a worker process warm on a
node, or to store small notices in the cluster's KV store; raygate needs each of these.
They live here, behind plain functions and plain data, so that a Ray upgrade is one file
to check: the launcher (:mod:`.launcher`, :mod:`.handle`) and the kernel actor
(:mod:`raygate.actors.kernel`) call these and nothing private of Ray's themselves.

Each function says which private API it uses, and each one that only improves a message
or a start time fails soft (returns nothing) when that API has changed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("raygate.launchers.ray")


# -- settings -------------------------------------------------------------------------


def reload_ray_settings() -> None:
    """Make Ray read its ``RAY_*`` settings from the environment again.

    Ray caches them at import (``ray._raylet.Config``); called after the launcher set
    ``RAY_AUTH_MODE`` itself, before ``ray.init``.
    """
    # Config is defined in Cython; ray's stub of _raylet does not declare it
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")


# -- actors -----------------------------------------------------------------------------


def actor_id(actor: Any) -> str:
    """The hex id of an actor handle (``ActorHandle._actor_id``)."""
    return actor._actor_id.hex()


@dataclass(frozen=True)
class ActorRecord:
    """What the cluster's actor table says of one actor."""

    state: str
    """``PENDING_CREATION``, ``ALIVE``, ``DEAD``, ... (empty when the table has no entry)."""
    death_context: str = ""
    """Which kind of death cause Ray recorded (``node_death_context``, ``oom_context``,
    ``actor_died_error_context``, ...), empty while alive or when it recorded none."""
    death_message: str = ""


def actor_record(actor_hex_id: str) -> ActorRecord | None:
    """The actor table's entry for an actor (``ray._private.state.state.actor_table``);
    ``ActorRecord("")`` when the table has none, None when the table cannot be read."""
    try:
        import ray

        info = ray._private.state.state.actor_table(actor_hex_id)
    except Exception:
        return None
    if not info:
        return ActorRecord("")
    cause = info.get("DeathCause")
    context, message = "", ""
    if cause is not None:
        context = cause.WhichOneof("context") or ""
        detail = getattr(cause, context) if context else None
        message = (getattr(detail, "error_message", "") or "").strip() if detail else ""
    return ActorRecord(str(info.get("State") or ""), context, message)


# -- capacity ---------------------------------------------------------------------------


def autoscaler_node_types() -> list[dict[str, float]]:
    """The per-node resources of each node type the autoscaler may add (the GCS's cluster
    config, ``ray._private.state.state.get_cluster_config``); empty without an autoscaler."""
    try:
        import ray

        config = ray._private.state.state.get_cluster_config()
    except Exception:
        return []
    if config is None:
        return []
    groups = [g for g in config.node_group_configs if g.max_count != 0]
    return [{k: float(v) for k, v in g.resources.items()} for g in groups]


def available_per_node() -> dict[str, dict[str, float]]:
    """``{node id: {resource: amount free now}}``
    (``ray._private.state.state.available_resources_per_node``)."""
    import ray

    return ray._private.state.state.available_resources_per_node()


# -- warm workers -----------------------------------------------------------------------

_raylets: dict[str, Any] = {}
_raylets_lock = threading.Lock()


def prestart_worker(node_id: str, count: int = 1, keep_alive: int = 600) -> None:
    """Ask a node's raylet to start ``count`` idle Python workers for this driver's job,
    kept alive for at least ``keep_alive`` seconds.

    Ray has no public call for it: this is the raylet's ``PrestartWorkers`` gRPC
    (``ray.core.generated.node_manager_pb2_grpc``) over ``ray._private.grpc_utils``, which
    needs ``grpcio`` (a dependency of raygate for this reason; ``ray`` alone lacks it).
    A worker started by a zero-CPU task instead would not do: Ray does not give a detached
    actor a worker that ran a task of the driver. Raises on failure; the caller treats it
    as a lost optimisation.
    """
    import ray
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

    with _raylets_lock:
        stub = _raylets.get(node_id)
    if stub is None:
        node = next(n for n in ray.nodes() if n["NodeID"] == node_id and n["Alive"])
        address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
        channel = init_grpc_channel(address, asynchronous=False)
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
    request = node_manager_pb2.PrestartWorkersRequest(
        language=common_pb2.PYTHON,
        job_id=bytes.fromhex(ray.get_runtime_context().get_job_id()),
        keep_alive_duration_secs=keep_alive,
        num_workers=count,
    )
    try:
        stub.PrestartWorkers(request, timeout=10)
    except Exception:
        with _raylets_lock:
            _raylets.pop(node_id, None)
        raise
    with _raylets_lock:
        _raylets[node_id] = stub


def forget_raylets() -> None:
    """Drop the cached raylet channels (the launcher disconnects from Ray)."""
    with _raylets_lock:
        _raylets.clear()


# -- the cluster's KV store (``ray.experimental.internal_kv``) --------------------------


def kv_put(key: str, value: bytes, namespace: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_delete(key: str, namespace: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(key, namespace=namespace)


def kv_keys(prefix: str, namespace: str) -> list[str]:
    """The keys under ``prefix`` in a KV namespace."""
    from ray.experimental import internal_kv

    keys = internal_kv._internal_kv_list(prefix, namespace=namespace)
    return [k.decode() if isinstance(k, bytes) else k for k in keys]


def kv_get(key: str, namespace: str) -> bytes | None:
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get(key, namespace=namespace)


def kv_put_if_absent(key: str, value: bytes, namespace: str) -> bool:
    """Store ``value`` under ``key`` unless the key exists; True when this call stored it.
    Atomic in the GCS, so replicas can build a compare-and-swap on it."""
    from ray.experimental import internal_kv

    # _internal_kv_put answers whether the key existed before (then nothing was written).
    existed = internal_kv._internal_kv_put(key, value, overwrite=False, namespace=namespace)
    return not existed


# -- drivers ----------------------------------------------------------------------------


def dead_jobs() -> set[str]:
    """Hex ids of the jobs (drivers, e.g. gateway replicas) the GCS marked dead
    (``ray._private.state.state.job_table``): a driver killed with SIGKILL is marked when
    its raylet sees its connection drop."""
    import ray

    return {job["JobID"] for job in ray._private.state.state.job_table() if job["IsDead"]}
