"""A kernel's resource request in the forms remote environments use (numbers by name,
constraints in words): shared by the launchers that run the bootstrap."""

from __future__ import annotations

from typing import Any

from raygate.resources import ResourceRequest

from ..base import LaunchRequest


def _resource_request(request: LaunchRequest) -> ResourceRequest:
    res: Any = request.resources
    return res if isinstance(res, ResourceRequest) else ResourceRequest.from_dict(res or {})


def requested_resources(request: LaunchRequest) -> dict[str, float]:
    """The amounts a kernel asks for, by the names Dask workers and the like use:
    ``{"CPU": .., "GPU": .., "memory": bytes, <custom>: ..}`` (only what was asked)."""
    res = _resource_request(request)
    out: dict[str, float] = {}
    if res.cpus:
        out["CPU"] = res.cpus
    if res.gpus:
        out["GPU"] = res.gpus
    if res.memory:
        out["memory"] = float(res.memory)
    out.update({str(name): amount for name, amount in res.custom.items() if amount})
    return out


def placement_constraints(request: LaunchRequest) -> list[str]:
    """The parts of the request that pick nodes rather than amounts (accelerator type,
    node labels, a named node), in words; launchers that cannot honour them refuse."""
    res = _resource_request(request)
    out = []
    if res.accelerator_type:
        out.append(f"accelerator type {res.accelerator_type}")
    if res.node_labels:
        out.append("node labels " + ",".join(f"{k}={v}" for k, v in res.node_labels.items()))
    if res.strategy == "node":
        out.append(f"node {res.node_id}")
    return out


def describe_resources(resources: dict[str, float]) -> str:
    if not resources:
        return "no resources"
    return ", ".join(f"{name}={amount:g}" for name, amount in sorted(resources.items()))
