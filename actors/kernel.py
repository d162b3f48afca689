"""The kernel actor: one kernel process, started and supervised on the node Ray chose.

The gateway creates one detached, named actor per kernel (name = kernel id, in the
gateway's namespace) with the kernel's resource request as its options, so Ray places
it and holds the resources as long as the kernel lives. The actor:

* starts the kernel process in its constructor (one round trip less at launch) on the
  node's IP, with the kernelspec's argv and env, the GPUs Ray assigned it, and what it
  needs to ``import ray; ray.init()`` into the same cluster;
* spawns every kernel process from one thread that lives as long as the actor, with
  SIGINT/SIGTERM unblocked (Ray workers block SIGINT) and PR_SET_PDEATHSIG, so the kernel
  dies with the actor even when its worker process is SIGKILLed;
* signals, interrupts, restarts (same ports, same id, resources kept) and stops it;
* keeps the launch metadata so a gateway that starts later can serve the kernel again;
* records an unexpected exit of the kernel in Ray's internal KV store, so the gateway
  learns of it for every kernel at once with one query.

Messages never go through the actor: the gateway connects ZMQ straight to the kernel.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raygate.launchers.keeper import KEEP_BYTES, OutputKeeper
from raygate.launchers.process import (
    format_argv,
    signal_group,
    spawn_kernel,
    tail,
    terminate,
    write_connection_file,
)

EXIT_KV_NAMESPACE = "raygate-exits"
"""Ray internal-KV namespace of exit notices; keys are ``<namespace>/<kernel id>``."""

# Variables of the Ray worker process that must not leak into the kernel's own driver.
_WORKER_ONLY_ENV = ("RAY_JOB_ID", "RAY_RAYLET_PID", "RAY_CLIENT_MODE", "RAY_LD_PRELOAD_ON_WORKERS")


def exit_key(namespace: str, kernel_id: str) -> str:
    return f"{namespace}/{kernel_id}"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class KernelActor:
    """Wrapped with ``ray.remote`` by the launcher; see the module docstring."""

    def __init__(self, meta: dict[str, Any], namespace: str) -> None:
        import ray

        self.meta = meta
        self.namespace = namespace
        self.kernel_id: str = meta["kernel_id"]
        self.spec: dict[str, Any] = meta["spec"]
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.gcs_address = ctx.gcs_address
        self.gpu_ids = [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]
        self.assigned = {k: v for k, v in ctx.get_assigned_resources().items() if v}
        self.runtime_dir = tempfile.mkdtemp(prefix=f"raygate-kernel-{self.kernel_id[:8]}-")
        self.connection_file = os.path.join(self.runtime_dir, "connection.json")
        self.log_path = os.path.join(self.runtime_dir, "kernel.log")
        self.connection = self._write_connection_file()
        self.proc: subprocess.Popen | None = None
        self.expected_exit = False
        self.exit_reason = ""
        self.lock = threading.RLock()
        # Every kernel process is forked from this one thread, which lives as long as the
        # actor: PR_SET_PDEATHSIG fires when the forking *thread* exits.
        self.spawner = ThreadPoolExecutor(1, thread_name_prefix="kernel-spawner")
        self.keeper = self._start_keeper()
        self._spawn()

    # -- the kernel process ------------------------------------------------------

    def _write_connection_file(self) -> dict[str, Any]:
        # With Curve the secret key is made here and stays on this node; the gateway is
        # given the public key only.
        return write_connection_file(
            self.connection_file, self.node_ip, self.meta.get("encryption") or "none"
        )

    def _start_keeper(self) -> OutputKeeper | None:
        """Keep the kernel's recent output here, for a gateway restarted after a crash."""
        max_bytes = int(self.meta.get("keep_output_bytes", KEEP_BYTES))
        if max_bytes <= 0:
            return None
        url = f"tcp://{self.node_ip}:{self.connection['iopub_port']}"
        return OutputKeeper(url, max_bytes, self.connection.get("curve_publickey"))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _WORKER_ONLY_ENV}
        env.update(self.spec.get("env") or {})
        env.update(self.meta.get("env") or {})
        env["KERNEL_ID"] = self.kernel_id
        if self.meta.get("username"):
            env["KERNEL_USERNAME"] = self.meta["username"]
        # Exactly the GPUs Ray assigned (none for a kernel that asked for none).
        env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_ids)
        # ray.init() in the kernel joins this cluster, in a namespace of its own.
        env.setdefault("RAY_ADDRESS", self.gcs_address)
        return env

    def _spawn(self) -> None:
        argv = format_argv(self.spec["argv"], self.connection_file)
        cwd = self.meta.get("cwd")
        cwd = cwd if cwd and os.path.isdir(cwd) else None
        env = self._env()
        proc = self.spawner.submit(spawn_kernel, argv, env, self.log_path, cwd).result()
        with self.lock:
            self.proc = proc
            self.expected_exit = False
            self.exit_reason = ""
        self._clear_exit_notice()
        threading.Thread(target=self._watch, args=(proc,), name="kernel-watch", daemon=True).start()

    def _watch(self, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self.lock:
            if proc is not self.proc or self.expected_exit:
                return
            reason = _describe_exit(code)
            output = tail(self.log_path)
            self.exit_reason = f"{reason}: {output}" if output else reason
        try:
            from ray.experimental import internal_kv

            internal_kv._internal_kv_put(
                exit_key(self.namespace, self.kernel_id),
                self.exit_reason.encode(),
                overwrite=True,
                namespace=EXIT_KV_NAMESPACE,
            )
        except Exception:
            pass  # the gateway still finds out through poll()

    def _clear_exit_notice(self) -> None:
        try:
            from ray.experimental import internal_kv

            internal_kv._internal_kv_del(
                exit_key(self.namespace, self.kernel_id), namespace=EXIT_KV_NAMESPACE
            )
        except Exception:
            pass

    def _stop(self) -> None:
        with self.lock:
            proc = self.proc
            self.expected_exit = True
        if proc is not None:
            asyncio.run(terminate(proc))

    # -- what the gateway calls -------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Everything the gateway needs to serve this kernel, now or after a restart."""
        with self.lock:
            pid = self.proc.pid if self.proc is not None else None
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
                "pid": pid,
            },
        }

    def assign(self, update: dict[str, Any]) -> None:
        """Record the start request a warm kernel now serves (its user, env, working
        directory): what later gateways read, and what a restart starts the kernel with."""
        with self.lock:
            self.meta = {**self.meta, **update}

    def poll(self) -> dict[str, Any]:
        with self.lock:
            code = self.proc.poll() if self.proc is not None else -1
            return {"alive": code is None, "reason": self.exit_reason or _describe_exit(code)}

    def signal(self, signum: int) -> None:
        with self.lock:
            proc = self.proc
        if proc is not None:
            signal_group(proc, signum)

    def interrupt(self) -> None:
        """Interrupt the kernel as its kernelspec says: SIGINT, or a control message."""
        if self.spec.get("interrupt_mode") != "message":
            self.signal(signal.SIGINT)
            return
        import zmq
        from jupyter_client.session import Session

        from raygate.launchers.base import ConnectionInfo

        session = Session(key=self.connection["key"].encode())
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 1000
        ConnectionInfo.from_dict(self.connection).secure(sock)
        try:
            sock.connect(f"tcp://{self.node_ip}:{self.connection['control_port']}")
            session.send(sock, session.msg("interrupt_request", {}))
        finally:
            sock.close()

    def restart(self) -> dict[str, Any]:
        """A fresh kernel process on the same ports; returns :meth:`describe`."""
        self._stop()
        self._spawn()
        if self.keeper is not None:  # the same port; the key may be new
            url = f"tcp://{self.node_ip}:{self.connection['iopub_port']}"
            self.keeper.retarget(url, self.connection.get("curve_publickey"))
        return self.describe()

    def kept_output(self, after: list[str]) -> list[list[bytes]] | None:
        """The kernel's iopub messages after the oldest of ``after`` still kept (all kept
        when none is), as raw frames; None without a keeper."""
        if self.keeper is None:
            return None
        return self.keeper.after(after)[0]

    def stop(self) -> None:
        """Stop the kernel process but keep the actor (and its resources) for a restart."""
        self._stop()

    def shutdown(self) -> None:
        self._stop()
        if self.keeper is not None:
            self.keeper.close()
        self._clear_exit_notice()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def failure_reason(self) -> str:
        with self.lock:
            code = self.proc.poll() if self.proc is not None else None
            if self.exit_reason:
                return self.exit_reason
        output = tail(self.log_path)
        status = _describe_exit(code) if code is not None else ""
        return f"{status}: {output}" if status and output else status or output

    def __repr__(self) -> str:
        return f"KernelActor({self.kernel_id})"
