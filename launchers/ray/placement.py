"""Where a Ray kernel may run: actor options, feasibility and diagnosis (pure).

From the launcher-neutral :class:`~raygate.resources.ResourceRequest` this module makes
the kernel actor's Ray options, decides whether any node (present, or one the autoscaler
may add) can ever hold it, and words what went wrong: a request no node holds, a wait
for capacity given up, an actor that died or failed to start. It reads nothing from the
cluster itself: the launcher passes in what ``ray.nodes()`` and :mod:`.cluster` report,
so every rule here is unit-tested without Ray running (``tests/test_ray_placement.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from raygate.resources import ResourceRequest, format_bytes

from ..base import KernelStartError, LaunchRequest
from .cluster import ActorRecord

Node = Mapping[str, Any]
"""One entry of ``ray.nodes()``: ``NodeID``, ``Alive``, ``Resources``, ``Labels``,
``NodeManagerAddress``, ..."""


def actor_options(
    request: LaunchRequest, namespace: str, default_cpus: float = 1.0
) -> dict[str, Any]:
    """The Ray actor options that carry a kernel's resource request (the launcher, for
    ``KernelActor.options``)."""
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

        assert res.node_id, "a node strategy names its node (raygate/resources.py parses it)"
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=res.node_id, soft=res.soft
        )
    runtime_env = request.spec.raygate.runtime_env
    if runtime_env:
        options["runtime_env"] = runtime_env
    return options


def resource_shape(options: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources an actor with these options needs on one node."""
    shape = {"CPU": options.get("num_cpus") or 0, "GPU": options.get("num_gpus") or 0}
    shape["memory"] = options.get("memory") or 0
    shape.update(options.get("resources") or {})
    if options.get("accelerator_type"):
        shape[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return {k: float(v) for k, v in shape.items() if v}


def pack_node(
    shape: Mapping[str, float],
    free: Mapping[str, Mapping[str, float]],
    nodes: Sequence[Node],
    labels: Mapping[str, str] | None = None,
) -> str | None:
    """For ``KERNEL_SCHEDULING_STRATEGY=pack``: the node to ask for (softly), so that
    kernels fill one node before the next. Ray has no such policy for actors: its default
    spreads once a node is half used.

    Of the live nodes with room for the kernel now (``free``:
    :func:`.cluster.available_per_node`; ``labels``: the kernel's node labels), the one left
    with the least free CPU once it is placed, then the least free memory. A kernel that
    asks for no GPU goes to a node with GPUs only when no other has room, as Ray's own
    scheduler does, so that GPU kernels find their nodes free. None when no node has room
    now: the kernel then waits wherever Ray finds room first.
    """
    wants_gpu = shape.get("GPU", 0) > 0
    best: tuple[bool, float, float, str] | None = None
    for node in nodes:
        node_id = node["NodeID"]
        room = free.get(node_id)
        if not node.get("Alive") or room is None or not fits(shape, room):
            continue
        if labels and labels_match(labels, node.get("Labels") or {}) is not True:
            continue
        has_gpus = (node.get("Resources") or {}).get("GPU", 0) > 0
        key = (
            has_gpus and not wants_gpu,
            room.get("CPU", 0) - shape.get("CPU", 0),
            room.get("memory", 0) - shape.get("memory", 0),
            node_id,
        )
        if best is None or key < best:
            best = key
    return best[-1] if best else None


def format_resources(resources: Mapping[str, float]) -> str:
    """``2 CPU, 1 GPU, 1.0 GiB memory``: what a message says a kernel asks or a node has
    (node ids and the object store left out)."""
    parts = []
    for name, amount in sorted(resources.items()):
        if name.startswith("node:") or name.startswith("object_store"):
            continue
        if name == "memory":
            parts.append(f"{format_bytes(amount)} memory")
        else:
            parts.append(f"{amount:g} {name}")
    return ", ".join(parts) or "nothing"


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool | None:
    """Whether a node's labels satisfy a plain ``key: value`` selector; None when the
    selector uses operators (``!``, ``in(...)``) this check leaves to Ray."""
    for key, want in selector.items():
        if want.startswith("!") or "(" in want:
            return None
        if labels.get(key) != want:
            return False
    return True


def fits(shape: Mapping[str, float], total: Mapping[str, float]) -> bool:
    """Whether a node with ``total`` resources could hold ``shape`` when empty."""
    return all(total.get(name, 0) + 1e-9 >= amount for name, amount in shape.items())


def check_feasible(
    request: LaunchRequest,
    options: Mapping[str, Any],
    nodes: Sequence[Node],
    node_types: Sequence[Mapping[str, float]] = (),
) -> None:
    """Raise a 400 when no node, present or of a type the autoscaler may add, can ever
    hold the kernel; return when one can (it may still have to wait for capacity).

    ``nodes`` is ``ray.nodes()``, ``node_types`` :func:`.cluster.autoscaler_node_types`.
    """
    shape = resource_shape(options)
    res = request.resources
    alive = [n for n in nodes if n.get("Alive")]
    pinned = res.strategy == "node" and not res.soft
    if pinned and not any(n["NodeID"] == res.node_id for n in alive):
        raise KernelStartError(
            f"the kernel asks to run on node {res.node_id}, which is not in the cluster",
            status=400,
        )
    candidates = [
        n
        for n in alive
        if not (pinned and n["NodeID"] != res.node_id)
        and not (res.node_labels and labels_match(res.node_labels, n.get("Labels") or {}) is False)
    ]
    if any(fits(shape, n.get("Resources") or {}) for n in candidates):
        return
    if any(fits(shape, group) for group in node_types):
        return  # the autoscaler can add a node that holds it: wait for it
    have = "; ".join(
        f"node {n['NodeID'][:8]} ({n.get('NodeManagerAddress', '?')}): "
        f"{format_resources(n.get('Resources') or {})}"
        + (
            " labels " + ",".join(f"{k}={v}" for k, v in sorted(n["Labels"].items()))
            if res.node_labels and n.get("Labels")
            else ""
        )
        for n in alive
    )
    raise KernelStartError(
        f"no node of the Ray cluster can ever hold this kernel: it asks for "
        f"{format_resources(shape)}"
        + (f" on nodes labelled {dict(res.node_labels)}" if res.node_labels else "")
        + f"; the cluster has {have or 'no nodes'}"
        + (" (and no autoscaler node type holds it)" if node_types else ""),
        status=400,
    )


def still_waiting(
    state: str,
    options: Mapping[str, Any],
    free: Mapping[str, Mapping[str, float]] | None,
    waited: float,
    waiting: int = 1,
) -> str:
    """Why a kernel actor has not started after ``waited`` seconds, for the 503 the
    launcher answers: ``state`` is its actor's, ``free`` what each node has free now
    (None when unknown), ``waiting`` how many starts of this gateway (this one included)
    were waiting for the same resources when it gave up."""
    if state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", ""):
        have = ""
        if free:
            have = "; ".join(
                f"node {node[:8]}: {format_resources(r)}" for node, r in sorted(free.items())
            )
        others = ""
        if waiting > 1:
            others = f"; {waiting} kernel starts were waiting for that, this one included"
        shape = resource_shape(options)
        if free and any(fits(shape, r) for r in free.values()):
            # Room, yet no actor: its worker process had not started. A node starts only
            # a few at a time (Ray's maximum_startup_concurrency: its CPU count), each
            # seconds of CPU, so a burst larger than that waits in line.
            return (
                f"gave up after waiting {waited:g}s for Ray to start the kernel's worker "
                f"process: the kernel asks for {format_resources(shape)}, which the cluster "
                f"has free (free now: {have}), but a node starts only a few worker processes "
                "at a time" + others.replace("for that", "for a worker") + "; its actor was "
                "removed. Fewer kernels at once, --ray-warm-workers or a warm pool "
                "(--prewarm, --prewarm-max) start bursts sooner"
            )
        return (
            f"gave up after waiting {waited:g}s for capacity: the kernel asks for "
            f"{format_resources(resource_shape(options))} and no node has that free"
            + (f" (free now: {have})" if have else "")
            + others
            + "; its actor was removed"
        )
    return f"the kernel's actor did not start within {waited:g}s (state {state}); removed"


def death_reason(record: ActorRecord | None) -> str:
    """Why an actor died, in words, from its actor-table record (empty when unknown)."""
    if record is None:
        return ""
    if not record.state:
        return "its actor is gone"
    if not record.death_context and not record.death_message:
        return f"its actor is {(record.state or 'gone').lower()}"
    context, message = record.death_context, record.death_message
    if context == "node_death_context" or ("node" in message.lower() and "died" in message):
        return f"the node it ran on died: {message}".rstrip(": ")
    if "ray.kill" in message:
        return "its actor was killed (the kernel was shut down, perhaps by another gateway)"
    if context == "oom_context":
        return f"its actor was killed for lack of memory: {message}".rstrip(": ")
    return f"its actor died: {message.splitlines()[0] if message else context}"


def creation_error(text: str, kind: str = "") -> str:
    """The useful part of an actor's creation failure (its constructor's exception),
    from the text of the ``RayActorError`` (``kind``: the error's type name)."""
    for marker in (
        "KernelStartError: ",
        "SpawnError: ",
        "FileNotFoundError: ",
        "PermissionError: ",
    ):
        if marker in text:
            return text.split(marker, 1)[1].strip().splitlines()[0]
    lines = [line for line in text.splitlines() if line.strip()]
    return "the kernel's actor failed to start: " + (lines[-1] if lines else kind or "unknown")
