"""What the yarn launcher sends to and reads from the YARN Services API, as pure functions
(no I/O): the container size of a request, the service definition of a kernel, the
queue's limits from the scheduler's answer, the state of a service from its ``GET``.

The shapes are the Services API's (``Service``, ``Component``, ``Resource`` with
``additional`` resource types, ``ServiceState``, ``ContainerState``) and the RM REST API's
``/ws/v1/cluster/scheduler`` (a CapacityScheduler's queues with ``maximumAllocation``).
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..base import LaunchRequest
from ..kernelside.bootstrap import BASE64_SETTINGS
from ..remote import _resource_request

DEFAULT_MEMORY_MB = 1024
GPU_RESOURCE = "yarn.io/gpu"
COMPONENT = "kernel"
SERVICE_PREFIX = "raygate-"
NAME_RULE = re.compile(r"[a-z][a-z0-9-]{0,62}")
"""The Services API's rule for service and component names (DNS labels, no ``_``)."""

SERVICE_VERSION = "1"
LIVE_STATES = ("ACCEPTED", "STARTED", "STABLE", "FLEX", "UPGRADING", "UPGRADING_AUTO_FINALIZE")
ENDED_STATES = ("STOPPED", "SUCCEEDED", "FAILED")


@dataclass(frozen=True)
class ContainerSize:
    memory_mb: int
    vcores: int
    gpus: int

    def describe(self) -> str:
        gpus = f", {GPU_RESOURCE}={self.gpus}" if self.gpus else ""
        return f"memory={self.memory_mb}MB, vCores={self.vcores}{gpus}"

    def to_dict(self) -> dict[str, int]:
        return {"memory_mb": self.memory_mb, "vcores": self.vcores, "gpus": self.gpus}


def container_size(request: LaunchRequest) -> ContainerSize:
    """The kernel's container: memory rounded up to MB (1024 when not asked), vCores and
    GPUs rounded up to whole ones (YARN counts both in integers)."""
    res = _resource_request(request)
    memory = math.ceil(res.memory / 2**20) if res.memory else DEFAULT_MEMORY_MB
    vcores = max(1, math.ceil(res.cpus)) if res.cpus else 1
    gpus = math.ceil(res.gpus) if res.gpus else 0
    return ContainerSize(memory, vcores, gpus)


def service_name(kernel_id: str) -> str:
    """The service of a kernel: ``raygate-<kernel id>`` (a UUID keeps it within the
    name rule and its 63 characters)."""
    name = SERVICE_PREFIX + re.sub(r"[^a-z0-9-]", "-", kernel_id.lower())
    if not NAME_RULE.fullmatch(name):
        raise ValueError(f"kernel id {kernel_id!r} makes no valid YARN service name")
    return name


def kernel_id_of(name: str) -> str | None:
    """The kernel id a service name stands for (None for another service)."""
    return name[len(SERVICE_PREFIX) :] if name.startswith(SERVICE_PREFIX) else None


def encode_settings(settings: dict[str, Any]) -> str:
    """The bootstrap's settings for its variable: the NodeManager writes each variable into
    the container's launch script as ``export K="V"`` unescaped, so JSON (with its quotes)
    cannot travel there as it is."""
    return BASE64_SETTINGS + base64.b64encode(json.dumps(settings).encode()).decode()


def service_definition(
    name: str,
    queue: str,
    launch_command: str,
    env: dict[str, str],
    size: ContainerSize,
    description: str,
) -> dict[str, Any]:
    """A service of one component with one container that runs ``launch_command``.

    ``restart_policy: NEVER``: the bootstrap restarts the kernel itself, and a new
    bootstrap would hold a fresh kernel nobody asked for; once the container has
    exited the service AM ends the service.
    """
    resource: dict[str, Any] = {"cpus": size.vcores, "memory": str(size.memory_mb)}
    if size.gpus:
        resource["additional"] = {GPU_RESOURCE: {"value": size.gpus, "unit": ""}}
    return {
        "name": name,
        "version": SERVICE_VERSION,
        "description": description,
        "queue": queue,
        "components": [
            {
                "name": COMPONENT,
                "number_of_containers": 1,
                "launch_command": launch_command,
                "resource": resource,
                "restart_policy": "NEVER",
                "configuration": {"env": env},
            }
        ],
    }


@dataclass(frozen=True)
class QueueLimits:
    """A leaf queue as the scheduler describes it."""

    name: str
    max_memory_mb: int | None
    max_vcores: int | None
    max_gpus: int | None


def _resource_amount(info: dict[str, Any], name: str) -> int | None:
    items = ((info.get("resourceInformations") or {}).get("resourceInformation")) or []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, dict) and item.get("name") == name:
            return int(item.get("value", 0))
    return None


def leaf_queues(scheduler: Any) -> dict[str, QueueLimits] | None:
    """The leaf queues by name (and by path) of a CapacityScheduler's
    ``/ws/v1/cluster/scheduler`` answer; None when it describes no queues (another
    scheduler), so the RM itself decides."""
    info = ((scheduler or {}).get("scheduler") or {}).get("schedulerInfo") or {}
    if info.get("type") != "capacityScheduler":
        return None
    found: dict[str, QueueLimits] = {}

    def walk(queue: dict[str, Any]) -> None:
        children = ((queue.get("queues") or {}).get("queue")) or []
        if isinstance(children, dict):
            children = [children]
        if children:
            for child in children:
                walk(child)
            return
        alloc = queue.get("maximumAllocation") or {}
        limits = QueueLimits(
            str(queue.get("queueName")),
            int(alloc["memory"]) if "memory" in alloc else None,
            int(alloc["vCores"]) if "vCores" in alloc else None,
            _resource_amount(alloc, GPU_RESOURCE),
        )
        found[limits.name] = limits
        if queue.get("queuePath"):
            found[str(queue["queuePath"])] = limits

    walk(info)
    return found


def over_queue_maximum(size: ContainerSize, limits: QueueLimits) -> str | None:
    """What of ``size`` the queue's maximum allocation cannot hold, in words (None: it
    fits)."""
    over = []
    if limits.max_memory_mb is not None and size.memory_mb > limits.max_memory_mb:
        over.append(f"memory={size.memory_mb}MB over its {limits.max_memory_mb}MB")
    if limits.max_vcores is not None and size.vcores > limits.max_vcores:
        over.append(f"vCores={size.vcores} over its {limits.max_vcores}")
    if size.gpus and (limits.max_gpus or 0) < size.gpus:
        over.append(f"{GPU_RESOURCE}={size.gpus} over its {limits.max_gpus or 0}")
    return "; ".join(over) or None


def kernel_container(service: dict[str, Any]) -> dict[str, Any] | None:
    """The running container of the kernel's component in a service's ``GET`` (None
    before the service AM has one)."""
    for comp in service.get("components") or []:
        if comp.get("name") == COMPONENT:
            for container in comp.get("containers") or []:
                return dict(container)
    return None
