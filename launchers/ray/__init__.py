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

Modules: :mod:`.launcher` (:class:`RayLauncher`: connect, launch, watch, find again),
:mod:`.handle` (:class:`RayKernel`, one kernel's actor), :mod:`.placement` (pure: actor
options, feasibility, the wording of failures), :mod:`.cluster` (every use of Ray's
private APIs, so that a Ray upgrade is one file to check), :mod:`.ledger` (per-user caps
shared by the replicas of a namespace, in the cluster's KV store).
"""

from .handle import RayKernel
from .launcher import RayLauncher, connect_ray
from .placement import actor_options, resource_shape

__all__ = ["RayKernel", "RayLauncher", "actor_options", "connect_ray", "resource_shape"]
