"""One real multi-node Ray cluster on this machine for the whole test session.

Built with Ray's own cluster utilities: a head node (CPUs only) and a second node with
two logical GPUs, a custom resource ``special`` and the label ``raygate-test=gpu``. Token
authentication is on (a fresh token per session), as Ray 2.59+ has it by default.

The cluster lives in a child process of the test run (this module run as a script), which
alone has ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` in its environment; the nodes are its children
and stop with it, also when the process that started it dies (its stdin closes). The pytest
process never gets the token in its environment, so a gateway has it only when a test passes
``cluster.env()`` and then has to turn token mode on by itself, as it must for a user. The
tests' own questions (which actors are alive, kill what a test left behind) go to that child
as JSON lines over a Unix socket, so that pytest-xdist workers can use a cluster their
controller started (``describe``/``attach``, see tests/conftest.py).

The nodes' Python lacks ``rfc3987_syntax`` (:data:`NODE_LEAVES_OUT`), as a Ray node's does
where jupyter_server is not installed (Ray's images): jsonschema, which ``import ray``
imports, compiles its grammars at import when it is there, 3.5 s of CPU of every Ray
worker's start on this machine (docs/benchmarks.md), a third of the suite's Ray time.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO, Any

HEAD_CPUS = 4
GPU_NODE_CPUS = 2
GPU_NODE_GPUS = 2
GPU_NODE_LABELS = {"raygate-test": "gpu"}
NODE_LEAVES_OUT = ("rfc3987_syntax",)


def left_out(modules: Sequence[str], root: str = "") -> str:
    """A directory (``root``, or a new one) whose packages of these names fail to import, to
    put first on the Ray nodes' PYTHONPATH: the Ray processes (and their kernels) run as if
    they were not installed."""
    root = root or tempfile.mkdtemp(prefix="raygate-ray-without-")
    for name in modules:
        os.makedirs(os.path.join(root, name))
        with open(os.path.join(root, name, "__init__.py"), "w") as f:
            f.write(f"raise ImportError('{name} is left out of the Ray test cluster')\n")
    return root


def python_without(blocked: str) -> dict[str, str]:
    """The environment of a process whose Python lacks what the ``left_out`` directory
    ``blocked`` blocks: a gateway, and the Ray it joins or starts."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [blocked, os.environ.get("PYTHONPATH")]))}


class RayTestCluster:
    """The tests' handle on the cluster process. Made by the ``ray_cluster`` fixture."""

    def __init__(self, without: Sequence[str] = NODE_LEAVES_OUT) -> None:
        """``without``: modules the nodes' Python cannot import."""
        self.without = tuple(without)
        self.token = secrets.token_hex(16)
        self.address = ""
        self.gpu_node_id = ""
        self.head_node_id = ""
        self.socket_path = ""
        self._proc: subprocess.Popen[str] | None = None
        self.without_dir = ""

    def describe(self) -> dict[str, str]:
        """What another process needs to use this cluster (``attach``): its token among it,
        so it goes into a private file, never into an environment."""
        keys = ("token", "address", "gpu_node_id", "head_node_id", "socket_path", "without_dir")
        return {key: getattr(self, key) for key in keys}

    @classmethod
    def attach(cls, described: dict[str, str]) -> RayTestCluster:
        """A handle on a cluster another process started (and stops)."""
        cluster = cls()
        for key, value in described.items():
            setattr(cluster, key, value)
        return cluster

    def env(self) -> dict[str, str]:
        """What a gateway joining this cluster needs in its environment: the token (not
        RAY_AUTH_MODE: raygate turns token mode on when it is given a token), and the
        nodes' Python: what they lack, a gateway's ``pip install raygate[ray]`` lacks too
        (1.5 of ``import ray``'s 2.1 CPU-s here are rfc3987_syntax's grammars)."""
        env = {"RAY_AUTH_TOKEN": self.token}
        if self.without_dir:
            env.update(python_without(self.without_dir))
        return env

    def start(self, timeout: float = 120) -> None:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.socket_path = os.path.join(tempfile.mkdtemp(prefix="raygate-ray-"), "questions")
        if self.without:
            self.without_dir = left_out(self.without)
            env.update(python_without(self.without_dir))
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), self.socket_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        line = _readline(self._proc.stdout, timeout)
        if not line:  # it failed (its traceback is on stderr) and is exiting
            try:
                code: int | None = self._proc.wait(10)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(f"the Ray test cluster process did not start (exit code {code})")
        started = _answer(line)
        self.address = started["address"]
        self.gpu_node_id = started["gpu_node_id"]
        self.head_node_id = started["head_node_id"]

    def actors(self, namespace: str) -> dict[str, str]:
        """``{name: state}`` of the actors in ``namespace`` that are not dead."""
        return self._ask({"op": "actors", "namespace": namespace})

    def wait_actors(self, namespace: str, expect: set[str], timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        actors = self.actors(namespace)
        while set(actors) != expect and time.monotonic() < deadline:
            time.sleep(0.2)
            actors = self.actors(namespace)
        return actors

    def live_actors(self) -> set[tuple[str, str]]:
        """``(namespace, name)`` of every named actor that is not dead."""
        return {(ns, name) for ns, name in self._ask({"op": "live"})}

    def kill_actors(self, actors: set[tuple[str, str]]) -> None:
        """Kill these actors (what a failed test left holding CPUs and GPUs). Called by
        conftest's fixture that puts the cluster back as it was after each Ray test."""
        self._ask({"op": "kill", "actors": sorted(actors)})

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()  # the cluster process shuts the cluster down on EOF
                proc.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(os.path.dirname(self.socket_path), ignore_errors=True)
        if self.without_dir:
            shutil.rmtree(self.without_dir, ignore_errors=True)

    def _ask(self, request: dict, timeout: float = 60) -> Any:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                raise RuntimeError(f"the Ray test cluster process is gone: {exc}") from None
            sock.sendall((json.dumps(request) + "\n").encode())
            with sock.makefile() as answers:
                line = answers.readline()
        if not line:
            raise RuntimeError("the Ray test cluster process did not answer")
        return _answer(line)


def _answer(line: str) -> Any:
    answer = json.loads(line)
    if "error" in answer:
        raise RuntimeError(f"the Ray test cluster failed: {answer['error']}")
    return answer["result"]


def _readline(stream: IO[str], timeout: float) -> str:
    import select

    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError(f"the Ray test cluster did not answer in {timeout} s")
    return stream.readline()


# ---- the cluster process -------------------------------------------------------------


def _serve(socket_path: str) -> None:
    """Start the cluster, say so on stdout, then answer requests on ``socket_path`` (one
    per connection, one at a time) until stdin closes."""
    import threading
    import traceback

    import ray
    from ray.cluster_utils import Cluster
    from ray.core.generated import gcs_pb2

    # The answers go on a private copy of the pipe; fd 1 becomes stderr, so that neither
    # Ray's prints nor the node processes (which inherit fd 1) write into the pipe, where
    # output nobody reads would fill it and block them.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    common = {"include_dashboard": False, "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": HEAD_CPUS, **common})
    try:
        gpu_node = cluster.add_node(
            num_cpus=GPU_NODE_CPUS,
            num_gpus=GPU_NODE_GPUS,
            resources={"special": 1},
            labels=dict(GPU_NODE_LABELS),
            **common,
        )
        cluster.wait_for_nodes()
        started = {
            "address": cluster.address,
            "gpu_node_id": gpu_node.node_id,
            "head_node_id": cluster.head_node.node_id,
        }

        def live_actors() -> list[tuple[str, str, str]]:
            accessor = cluster.global_state._connect_and_get_accessor()
            found = []
            for raw in accessor.get_actor_table(None, None):
                data = gcs_pb2.ActorTableData.FromString(raw)
                state = gcs_pb2.ActorTableData.ActorState.Name(data.state)
                if state != "DEAD":
                    found.append((data.ray_namespace, data.name, state))
            return found

        def kill(actors: list[list[str]]) -> None:
            if actors and not ray.is_initialized():
                ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
            for namespace, name in actors:
                try:
                    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
                except ValueError:
                    pass  # gone meanwhile

        def answer(request: dict) -> dict:
            try:
                op = request["op"]
                result: Any
                if op == "actors":
                    ns = request["namespace"]
                    result = {n: s for a, n, s in live_actors() if a == ns}
                elif op == "live":
                    result = [[a, n] for a, n, _ in live_actors() if n]
                elif op == "kill":
                    result = kill(request["actors"])
                else:
                    raise ValueError(f"unknown op {op!r}")
                return {"result": result}
            except Exception:
                return {"error": traceback.format_exc()}

        listener = socket.socket(socket.AF_UNIX)
        listener.bind(socket_path)
        listener.listen(16)

        def serve_questions() -> None:
            while True:
                conn, _ = listener.accept()
                with conn, conn.makefile("rw") as stream:
                    line = stream.readline()
                    if line:
                        stream.write(json.dumps(answer(json.loads(line))) + "\n")

        threading.Thread(target=serve_questions, daemon=True).start()
        out.write(json.dumps({"result": started}) + "\n")
        out.flush()
        sys.stdin.read()  # until whoever started the cluster closes it, or dies
        listener.close()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    _serve(sys.argv[1])
