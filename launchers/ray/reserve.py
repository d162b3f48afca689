"""How many idle Ray workers to keep started on each node ahead of demand (pure).

A kernel actor needs a worker process of its own, and starting one is most of a cold Ray
start: ``import ray`` runs twice per worker (Ray's ``setup_worker.py``, then the worker it
execs), seconds of CPU on a small node. The launcher asks a node's raylet to prestart
workers for the gateway's job (:func:`.cluster.prestart_worker`) so that the next kernels
there find one ready; this module decides how many.

The number follows demand: after a burst (launches in flight, from the first to the
last), each node that took ``n`` kernels in it is refilled to ``min(n, cap)`` idle
workers, and at least one; the burst's size is remembered for ``keep_alive`` seconds, as
long as Ray keeps a prestarted worker alive, and forgotten afterwards (the reserve shrinks
back to one). Refills happen only when no launch is in flight: a worker started during a
burst competes for the CPU with the kernels that are starting.

The reserve is the launcher's own count (workers it asked for, minus kernels placed on
the node since, minus those older than ``keep_alive``): Ray does not say which idle
workers it holds. It errs towards starting one too few, never a stream of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Node:
    prestarted: list[float] = field(default_factory=list)
    """When each worker asked for and not yet used was asked for."""
    burst: int = 0
    """Kernels placed on the node in the burst now in flight."""
    target: int = 1
    target_until: float = 0.0


@dataclass
class WorkerReserve:
    """Idle workers to keep per node; owned by the :class:`~.launcher.RayLauncher`."""

    cap: int = 4
    """The most idle workers kept on one node (0: none at all)."""
    keep_alive: float = 600.0
    """Seconds Ray keeps a prestarted worker alive; a burst's size is kept as long."""
    nodes: dict[str, _Node] = field(default_factory=dict)
    in_flight: int = 0

    def launching(self) -> None:
        """A launch began (its node is not known yet)."""
        self.in_flight += 1

    def placed(self, node_id: str | None, now: float) -> None:
        """A launch ended, on ``node_id`` (None: it failed, or its worker was not one of
        the reserve's, e.g. a runtime_env of its own)."""
        self.in_flight = max(0, self.in_flight - 1)
        if node_id is None:
            return
        node = self.nodes.setdefault(node_id, _Node())
        node.burst += 1
        self._expire(node, now)
        if node.prestarted:
            node.prestarted.pop(0)  # the oldest first, as Ray's pool hands them out

    def refill(self, now: float) -> dict[str, int]:
        """Workers to prestart now on each node (empty while launches are in flight);
        counted as started."""
        if self.in_flight or self.cap <= 0:
            return {}
        wanted: dict[str, int] = {}
        for node_id, node in self.nodes.items():
            if node.burst:
                node.target = max(node.target, min(node.burst, self.cap), 1)
                node.target_until = now + self.keep_alive
                node.burst = 0
            elif now > node.target_until:
                node.target = 1
            self._expire(node, now)
            missing = min(node.target, self.cap) - len(node.prestarted)
            if missing > 0:
                wanted[node_id] = missing
                node.prestarted += [now] * missing
        return wanted

    def lost(self, node_id: str, count: int) -> None:
        """Prestarting ``count`` workers on ``node_id`` failed: they are not there."""
        node = self.nodes.get(node_id)
        if node is not None:
            del node.prestarted[len(node.prestarted) - count :]

    def forget(self, node_id: str) -> None:
        """The node is gone."""
        self.nodes.pop(node_id, None)

    def _expire(self, node: _Node, now: float) -> None:
        node.prestarted = [t for t in node.prestarted if now - t < self.keep_alive]
