"""One real multi-node Ray cluster on this machine for the whole test session.

Built with Ray's own cluster utilities: a head node (CPUs only) and a second node with
two logical GPUs, a custom resource ``special`` and the label ``raygate-test=gpu``, both
in child processes of the test run, so they stop with it. Token authentication is on (a
fresh token per session), as Ray 2.59+ has it by default: every gateway the tests start
gets ``RAY_AUTH_TOKEN`` in its environment and must turn token mode on by itself.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

HEAD_CPUS = 4
GPU_NODE_CPUS = 2
GPU_NODE_GPUS = 2
GPU_NODE_LABELS = {"raygate-test": "gpu"}


class RayTestCluster:
    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.cluster: Any = None
        self.gpu_node_id = ""
        self.head_node_id = ""
        self._saved_env: dict[str, str | None] = {}

    @property
    def address(self) -> str:
        return self.cluster.address

    def env(self) -> dict[str, str]:
        """What a gateway joining this cluster needs in its environment: only the token
        (not RAY_AUTH_MODE: raygate turns token mode on when it is given a token)."""
        return {"RAY_AUTH_TOKEN": self.token}

    def start(self) -> None:
        # The nodes inherit these; this process needs them for its own GCS queries.
        for name, value in (("RAY_AUTH_MODE", "token"), ("RAY_AUTH_TOKEN", self.token)):
            self._saved_env[name] = os.environ.get(name)
            os.environ[name] = value
        from ray.cluster_utils import Cluster

        common = {"include_dashboard": False, "object_store_memory": 80 * 1024 * 1024}
        self.cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": HEAD_CPUS, **common}
        )
        gpu_node = self.cluster.add_node(
            num_cpus=GPU_NODE_CPUS,
            num_gpus=GPU_NODE_GPUS,
            resources={"special": 1},
            labels=dict(GPU_NODE_LABELS),
            **common,
        )
        self.gpu_node_id = gpu_node.node_id
        self.head_node_id = self.cluster.head_node.node_id

    def actors(self, namespace: str) -> dict[str, str]:
        """``{name: state}`` of the actors in ``namespace`` that are not dead."""
        from ray.core.generated import gcs_pb2

        accessor = self.cluster.global_state._connect_and_get_accessor()
        out = {}
        for raw in accessor.get_actor_table(None, None):
            data = gcs_pb2.ActorTableData.FromString(raw)
            state = gcs_pb2.ActorTableData.ActorState.Name(data.state)
            if data.ray_namespace == namespace and state != "DEAD":
                out[data.name] = state
        return out

    def wait_actors(self, namespace: str, expect: set[str], timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        actors = self.actors(namespace)
        while set(actors) != expect and time.monotonic() < deadline:
            time.sleep(0.2)
            actors = self.actors(namespace)
        return actors

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
