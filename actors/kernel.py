"""The kernel actor: one kernel process, started and supervised on the node Ray chose.

The gateway creates one detached, named actor per kernel (name = kernel id, in the
gateway's namespace) with the kernel's resource request as its options, so Ray places
it and holds the resources as long as the kernel lives. The actor:

* starts the kernel process in its constructor (one round trip less at launch) through
  the kernel supervisor (:mod:`raygate.launchers.kernelside.supervisor`, as every
  launcher does) on the node's IP, with the kernelspec's argv and env, the GPUs Ray
  assigned it, and what it needs to ``import ray; ray.init()`` into the same cluster;
* has every kernel process forked from one thread that lives as long as the actor, so
  the kernel dies with the actor even when its worker process is SIGKILLed;
* signals, interrupts, restarts (same ports, same id, resources kept) and stops it;
* keeps the launch metadata so a gateway that starts later can serve the kernel again;
* records an unexpected exit of the kernel in Ray's internal KV store, so the gateway
  learns of it for every kernel at once with one query (the fact only: the reason, with
  the kernel's last output, is the gateway's to ask for);
* answers only calls of this deployment's gateways (:mod:`raygate.actors.calls`): every
  method takes a signed ticket first and returns its result sealed to the gateway;
* with ``--kernel-isolation users`` runs the kernel as its user's account (looked up on
  this node) and gives it the cluster's address only when its kernelspec grants it.

Messages never go through the actor: the gateway connects ZMQ straight to the kernel.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raygate.actors.calls import Verifier, guarded
from raygate.launchers.kernelside.account import Account
from raygate.launchers.kernelside.isolation import cluster_access, kernel_host_env
from raygate.launchers.kernelside.keeper import KEEP_BYTES
from raygate.launchers.kernelside.limits import KernelLimits
from raygate.launchers.kernelside.process import describe_exit
from raygate.launchers.kernelside.supervisor import KernelCommand, KernelSupervisor

EXIT_KV_NAMESPACE = "raygate-exits"
"""Ray internal-KV namespace of exit notices; keys are ``<namespace>/<kernel id>``."""


def exit_key(namespace: str, kernel_id: str) -> str:
    return f"{namespace}/{kernel_id}"


def kernel_command(meta: dict[str, Any]) -> KernelCommand:
    """What the launch metadata (``RayLauncher._meta``, updated by ``assign``) asks to run."""
    spec = meta["spec"]
    return KernelCommand(
        kernel_id=meta["kernel_id"],
        argv=list(spec["argv"]),
        spec_env=dict(spec.get("env") or {}),
        request_env=dict(meta.get("env") or {}),
        username=meta.get("username"),
        cwd=meta.get("cwd"),
    )


class KernelActor:
    """Wrapped with ``ray.remote`` by the launcher; see the module docstring."""

    def __init__(self, meta: dict[str, Any], namespace: str) -> None:
        import ray

        self.meta = meta
        self.namespace = namespace
        self.kernel_id: str = meta["kernel_id"]
        self.spec: dict[str, Any] = meta["spec"]
        self.calls = Verifier(meta.get("gateway_key"))
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.gpu_ids = [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]
        self.assigned = {k: v for k, v in ctx.get_assigned_resources().items() if v}
        self.lock = threading.RLock()
        account = Account.lookup(meta["account"]) if meta.get("account") else None
        isolation = "users" if account else "none"
        # ray.init() in the kernel joins this cluster, in a namespace of its own; isolated
        # kernels only when granted (the token comes with the worker's environment).
        granted = cluster_access((self.spec.get("metadata") or {}).get("raygate"), isolation)
        self.supervisor = KernelSupervisor(
            kernel_command(meta),
            ip=self.node_ip,
            # With Curve the secret key is made here and stays on this node.
            encryption=meta.get("encryption") or "none",
            defaults={"RAY_ADDRESS": ctx.gcs_address} if granted else {},
            host_env=kernel_host_env(os.environ, account, granted),
            # Exactly the GPUs Ray assigned (none for a kernel that asked for none).
            assigned={"CUDA_VISIBLE_DEVICES": ",".join(self.gpu_ids)},
            keep_output_bytes=int(meta.get("keep_output_bytes", KEEP_BYTES)),
            account=account,
            # Every kernel process is forked from this one thread, which lives as long as
            # the actor: PR_SET_PDEATHSIG fires when the forking *thread* exits.
            spawner=ThreadPoolExecutor(1, thread_name_prefix="kernel-spawner"),
            on_exit=self._exited,
            # Enforced on this node: Ray itself only schedules by the request.
            limits=KernelLimits.from_resources(meta.get("resources")),
        )
        # A SpawnError here fails the actor's creation; the launcher shows its message.
        self.connection = self.supervisor.start()
        self._clear_exit_notice()

    # -- the kernel process ------------------------------------------------------

    def _exited(self, reason: str) -> None:
        """The supervisor saw the kernel exit on its own: tell every gateway at once."""
        try:
            from raygate.launchers.ray import cluster

            # Any driver reads the KV store: the fact of the exit, not the output's tail.
            cluster.kv_put(
                exit_key(self.namespace, self.kernel_id),
                reason.split(":", 1)[0].encode(),
                EXIT_KV_NAMESPACE,
            )
        except Exception:
            pass  # the gateway still finds out through poll()

    def _clear_exit_notice(self) -> None:
        try:
            from raygate.launchers.ray import cluster

            cluster.kv_delete(exit_key(self.namespace, self.kernel_id), EXIT_KV_NAMESPACE)
        except Exception:
            pass

    # -- what the gateway calls -------------------------------------------------------

    @guarded
    def describe(self) -> dict[str, Any]:
        """Everything the gateway needs to serve this kernel, now or after a restart."""
        return self._describe()

    def _describe(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "connection": self.connection,
            "placement": {
                "launcher": "ray",
                "node_id": self.node_id,
                "node_ip": self.node_ip,
                "gpu_ids": self.gpu_ids,
                "resources": self.assigned,
                "actor_pid": os.getpid(),
                "pid": self.supervisor.pid,
            },
        }

    @guarded
    def assign(self, update: dict[str, Any]) -> None:
        """Record the start request a warm kernel now serves (its user, env, working
        directory): what later gateways read, and what a restart starts the kernel with."""
        with self.lock:
            self.meta = {**self.meta, **update}
            self.supervisor.command = kernel_command(self.meta)

    @guarded
    def poll(self) -> dict[str, Any]:
        code = self.supervisor.returncode()
        alive = self.supervisor.alive()
        if alive:
            return {"alive": True, "reason": describe_exit(None)}
        return {"alive": False, "reason": self.supervisor.exit_reason() or describe_exit(code)}

    @guarded
    def signal(self, signum: int) -> None:
        self.supervisor.signal(signum)

    @guarded
    def interrupt(self) -> None:
        """Interrupt the kernel as its kernelspec says: SIGINT, or a control message."""
        if self.spec.get("interrupt_mode") != "message":
            self.supervisor.signal(signal.SIGINT)
            return
        self.supervisor.send_control("interrupt_request", {})

    @guarded
    def restart(self) -> dict[str, Any]:
        """A fresh kernel process on the same ports; returns :meth:`describe`."""
        asyncio.run(self.supervisor.restart())
        self._clear_exit_notice()
        return self._describe()

    @guarded
    def kept_output(self, after: list[str]) -> list[list[bytes]] | None:
        """The kernel's iopub messages after the oldest of ``after`` still kept (all kept
        when none is), as raw frames; None without a keeper."""
        kept = self.supervisor.kept_output(after)
        return None if kept is None else kept[0]

    @guarded
    def stop(self) -> None:
        """Stop the kernel process but keep the actor (and its resources) for a restart."""
        asyncio.run(self.supervisor.stop())

    @guarded
    def shutdown(self) -> None:
        asyncio.run(self.supervisor.stop())
        self.supervisor.close()
        self._clear_exit_notice()

    @guarded
    def failure_reason(self) -> str:
        return self.supervisor.exit_reason()

    def __repr__(self) -> str:
        return f"KernelActor({self.kernel_id})"
