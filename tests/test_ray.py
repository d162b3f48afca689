"""Kernels as Ray actors on a real two-node Ray cluster (logical GPUs, token auth).

The cluster (tests/ray_cluster.py) starts once per session; each gateway here is a real
``raygate serve --ray-address ...`` process, each kernel a real ipykernel in a kernel
actor. No GPU is needed: the GPUs are Ray's logical ones.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from conftest import (
    ServerProcess,
    assert_interrupts,
    cleaning_up,
    interrupt_running_sleep,
    wait_gone,
)
from kernelspecs import ipykernel_argv, make_test_kernelspecs, write_kernelspec
from kgclient import Gateway, message

NAMESPACE = "rg-tests"


def ray_args(cluster, namespace: str, specs: str, *extra: str) -> list[str]:
    return [
        "--ray-address",
        cluster.address,
        "--ray-namespace",
        namespace,
        "--kernelspec-dirs",
        specs,
        "--discovery-interval",
        "0.5",
        *extra,
    ]


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = make_test_kernelspecs(str(tmp_path_factory.mktemp("ray-specs")))
    write_kernelspec(
        root,
        "python3-env",
        ipykernel_argv(),
        metadata={
            "raygate": {
                "resources": {"cpus": 0.5},
                "runtime_env": {"env_vars": {"RAYGATE_FROM_RUNTIME_ENV": "yes"}},
            }
        },
    )
    return root


@pytest.fixture(scope="module")
def ray_server(ray_cluster, specs: str) -> Iterator[ServerProcess]:
    server = ServerProcess(ray_args(ray_cluster, NAMESPACE, specs), env=ray_cluster.env())
    server.wait_ready(120)
    yield server
    server.stop()


@pytest.fixture
def gw(ray_server: ServerProcess) -> Iterator[Gateway]:
    yield from cleaning_up(ray_server.client)


def wait_for(predicate, timeout: float = 30, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# -- placement ----------------------------------------------------------------------------


async def test_plain_kernel_sees_no_gpu_and_joins_the_cluster(gw: Gateway, ray_cluster) -> None:
    kernel = gw.start_kernel()
    assert kernel["launcher"] == "ray"
    placement = gw.get(f"/api/kernels/{kernel['id']}").json()["placement"]
    assert placement["gpu_ids"] == []
    assert placement["node_id"] and placement["node_ip"] and placement["resources"]["CPU"] == 1
    out = await gw.run(
        kernel["id"],
        "import os, ray\n"
        "print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))\n"
        "ray.init(logging_level='error')\n"
        "print(sorted(n['NodeID'] for n in ray.nodes() if n['Alive']))\n"
        "print(os.environ['KERNEL_ID'])",
        timeout=120,
    )
    assert out.status == "ok", out.error
    lines = out.stdout.splitlines()
    assert lines[0] == "''"
    assert ray_cluster.gpu_node_id in lines[1] and ray_cluster.head_node_id in lines[1]
    assert lines[2] == kernel["id"]


async def test_gpu_kernel_lands_on_the_gpu_node(gw: Gateway, ray_cluster) -> None:
    kernel = gw.start_kernel(env={"KERNEL_GPUS": "1", "KERNEL_MEMORY": "256Mi"})
    placement = gw.get(f"/api/kernels/{kernel['id']}").json()["placement"]
    assert placement["node_id"] == ray_cluster.gpu_node_id
    assert len(placement["gpu_ids"]) == 1
    assert placement["resources"]["GPU"] == 1
    assert placement["resources"]["memory"] == 256 * 2**20
    out = await gw.run(kernel["id"], "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])")
    assert out.stdout.strip() == placement["gpu_ids"][0]


def test_node_labels_and_custom_resources_place_the_kernel(gw: Gateway, ray_cluster) -> None:
    kernel = gw.start_kernel(env={"KERNEL_NODE_LABELS": "raygate-test=gpu", "KERNEL_CPUS": "0.5"})
    placement = kernel["placement"]
    assert placement["node_id"] == ray_cluster.gpu_node_id
    assert placement["resources"]["CPU"] == 0.5
    assert placement["gpu_ids"] == []


async def test_runtime_env_from_the_kernelspec(gw: Gateway) -> None:
    kernel = gw.start_kernel("python3-env")
    assert kernel["placement"]["resources"]["CPU"] == 0.5
    out = await gw.run(kernel["id"], "import os; print(os.environ['RAYGATE_FROM_RUNTIME_ENV'])")
    assert out.stdout.strip() == "yes"


def test_impossible_request_fails_fast(gw: Gateway) -> None:
    started = time.monotonic()
    r = gw.post("/api/kernels", json={"name": "python3", "env": {"KERNEL_GPUS": "8"}})
    assert r.status_code == 400, r.text
    assert time.monotonic() - started < 5
    message = r.json()["message"]
    assert "8 GPU" in message and "2 GPU" in message, message
    r = gw.post(
        "/api/kernels",
        json={"name": "python3", "env": {"KERNEL_RESOURCES": "special=1,nowhere=1"}},
    )
    assert r.status_code == 400 and "nowhere" in r.json()["message"], r.text


def test_node_strategy_pins_the_kernel_and_soft_falls_back(gw: Gateway, ray_cluster) -> None:
    for node in (ray_cluster.head_node_id, ray_cluster.gpu_node_id):
        kernel = gw.start_kernel(env={"KERNEL_SCHEDULING_STRATEGY": f"node:{node}"})
        assert kernel["placement"]["node_id"] == node
        gw.shutdown_kernel(kernel["id"])
    # a soft affinity to a node that cannot hold the kernel: another node does
    full = {"KERNEL_SCHEDULING_STRATEGY": f"node:{ray_cluster.head_node_id}:soft"}
    kernel = gw.start_kernel(env={**full, "KERNEL_GPUS": "1"})
    assert kernel["placement"]["node_id"] == ray_cluster.gpu_node_id


def test_spread_strategy_puts_kernels_on_different_nodes(gw: Gateway, ray_cluster) -> None:
    spread = {"KERNEL_SCHEDULING_STRATEGY": "spread", "KERNEL_CPUS": "0.5"}
    nodes = {gw.start_kernel(env=spread)["placement"]["node_id"] for _ in range(2)}
    assert nodes == {ray_cluster.head_node_id, ray_cluster.gpu_node_id}


def test_pack_strategy_fills_a_node_before_the_next(gw: Gateway, ray_cluster) -> None:
    """The head has 4 CPUs, the GPU node 2; a kernel that asks for no GPU goes to the GPU
    node only when no other node has room."""
    pack = {"KERNEL_SCHEDULING_STRATEGY": "pack", "KERNEL_CPUS": "2"}
    placed = [gw.start_kernel(env=pack)["placement"]["node_id"] for _ in range(3)]
    assert placed == [ray_cluster.head_node_id] * 2 + [ray_cluster.gpu_node_id]


def test_accelerator_type_no_node_has_fails_fast(gw: Gateway) -> None:
    started = time.monotonic()
    r = gw.post(
        "/api/kernels", json={"name": "python3", "env": {"KERNEL_ACCELERATOR_TYPE": "A100"}}
    )
    assert r.status_code == 400, r.text
    assert time.monotonic() - started < 5
    assert "A100" in r.json()["message"], r.text


async def test_token_from_a_file(ray_cluster, specs: str, tmp_path) -> None:
    """--ray-auth-token-file alone (no RAY_AUTH_TOKEN in the environment) joins the cluster."""
    token_file = tmp_path / "auth_token"
    token_file.write_text(ray_cluster.token)
    namespace = f"rg-token-file-{uuid.uuid4().hex[:8]}"
    args = ray_args(ray_cluster, namespace, specs, "--ray-auth-token-file", str(token_file))
    server = ServerProcess(args)
    try:
        server.wait_ready(120)
        kernel = server.client.start_kernel()
        assert (await server.client.run(kernel["id"], "print(6 * 7)")).stdout == "42\n"
        server.client.shutdown_kernel(kernel["id"])
    finally:
        server.stop()
    assert ray_cluster.wait_actors(namespace, set(), timeout=15) == {}


def test_bad_resource_values_are_400(gw: Gateway) -> None:
    for env, words in (
        ({"KERNEL_MEMORY": "lots"}, "KERNEL_MEMORY"),
        ({"KERNEL_GPUS": "-1"}, "KERNEL_GPUS"),
        ({"KERNEL_CPUS": "2", "KERNEL_CPUS_LIMIT": "1"}, "limit"),
        ({"KERNEL_SCHEDULING_STRATEGY": "sideways"}, "strategy"),
    ):
        r = gw.post("/api/kernels", json={"name": "python3", "env": env})
        assert r.status_code == 400, r.text
        assert words.lower() in r.json()["message"].lower(), r.text


def test_burst_beyond_capacity_starts_what_fits_and_503s_the_rest(gw: Gateway, ray_cluster) -> None:
    # The cluster has one "special", held already. Of four starts at once, the one that
    # fits starts; the three that ask for "special" wait up to their launch timeout, then
    # each gets a 503 that says what it waited for and how many waited; nothing of theirs
    # is left.
    holder = gw.start_kernel(env={"KERNEL_RESOURCES": "special=1", "KERNEL_CPUS": "0.5"})
    waits = {"KERNEL_RESOURCES": "special=1", "KERNEL_CPUS": "0.5", "KERNEL_LAUNCH_TIMEOUT": "4"}
    bodies = [{"name": "python3", "env": waits}] * 3 + [
        {"name": "python3", "env": {"KERNEL_CPUS": "0.1"}}
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: gw.post("/api/kernels", json=body), bodies))
    waited = time.monotonic() - started
    assert [r.status_code for r in answers] == [503, 503, 503, 201], [r.text for r in answers]
    assert waited > 2.5
    refused = [r.json()["message"] for r in answers[:3]]
    assert all("capacity" in m and "special" in m for m in refused), refused
    assert any("3 kernel starts were waiting for that" in m for m in refused), refused
    ids = {holder["id"], answers[3].json()["id"]}
    assert {k["id"] for k in gw.get("/api/kernels").json()} == ids
    assert set(ray_cluster.wait_actors(NAMESPACE, ids, timeout=10)) == ids


def test_start_the_client_gives_up_on_leaves_nothing(gw: Gateway, ray_cluster) -> None:
    holder = gw.start_kernel(env={"KERNEL_RESOURCES": "special=1", "KERNEL_CPUS": "0.5"})
    env = {"KERNEL_RESOURCES": "special=1", "KERNEL_CPUS": "0.5"}
    with pytest.raises(httpx.ReadTimeout):  # the client stops waiting long before the gateway
        gw.post("/api/kernels", json={"name": "python3", "env": env}, timeout=3)
    # Its actor, still waiting for the "special" the holder has, is removed: it would
    # otherwise start, for nobody, as soon as the holder goes.
    assert ray_cluster.wait_actors(NAMESPACE, {holder["id"]}, timeout=10) == {holder["id"]: "ALIVE"}
    assert [k["id"] for k in gw.get("/api/kernels").json()] == [holder["id"]]


# -- control ---------------------------------------------------------------------------


async def test_interrupt_keeps_state_restart_clears_it(gw: Gateway) -> None:
    kernel = gw.start_kernel()
    ws = await gw.connect(kernel["id"])
    await ws.execute("x = 42")
    await interrupt_running_sleep(gw, ws, kernel["id"])
    assert (await ws.execute("x")).result == "42"
    pid = gw.get(f"/api/kernels/{kernel['id']}").json()["placement"]["actor_pid"]
    r = gw.post(f"/api/kernels/{kernel['id']}/restart")
    assert r.status_code == 200, r.text
    out = await ws.execute("x")
    assert out.error and out.error["ename"] == "NameError"
    after = gw.get(f"/api/kernels/{kernel['id']}").json()["placement"]
    assert after["actor_pid"] == pid  # same actor, same resources
    await ws.close()


async def test_message_mode_interrupt(gw: Gateway) -> None:
    kernel = gw.start_kernel("by-message")
    await assert_interrupts(gw, kernel["id"])


async def test_kernel_that_exits_is_restarted_in_its_actor(gw: Gateway) -> None:
    """The actor reports the exit (one cluster query finds it); the registry restarts it."""
    kernel = gw.start_kernel()
    before = kernel["placement"]
    ws = await gw.connect(kernel["id"])
    await ws.execute("z = 1")
    await ws.send(message("execute_request", {"code": "import os; os._exit(3)"}))
    states = []
    deadline = time.monotonic() + 30
    while "restarting" not in states and time.monotonic() < deadline:
        m = await ws.recv(30)
        if m["header"]["msg_type"] == "status":
            states.append(m["content"]["execution_state"])
    assert "restarting" in states, states
    out = await ws.execute("z")
    assert out.error and out.error["ename"] == "NameError"
    after = gw.get(f"/api/kernels/{kernel['id']}").json()["placement"]
    assert after["actor_pid"] == before["actor_pid"] and after["pid"] != before["pid"]
    await ws.close()


def test_killed_actor_worker_leaves_no_kernel(gw: Gateway) -> None:
    kernel = gw.start_kernel()
    placement = kernel["placement"]
    kernel_pid, actor_pid = placement["pid"], placement["actor_pid"]
    assert psutil.pid_exists(kernel_pid)
    os.kill(actor_pid, signal.SIGKILL)  # as the OOM killer would
    assert wait_gone([kernel_pid], timeout=10) == []
    # the gateway notices, reports the kernel dead and drops it: after the cluster marks the
    # actor dead, which under load took over 30 s in one CI run (the monitor saw the kernel's
    # exit first; its calls to the actor wait for that)
    assert wait_for(lambda: gw.get(f"/api/kernels/{kernel['id']}").status_code == 404, timeout=90)


def test_shutdown_removes_actor_and_kernel(gw: Gateway, ray_cluster) -> None:
    kernel = gw.start_kernel()
    assert kernel["id"] in ray_cluster.actors(NAMESPACE)
    gw.shutdown_kernel(kernel["id"])
    assert wait_gone([kernel["placement"]["pid"]], timeout=10) == []
    assert kernel["id"] not in ray_cluster.wait_actors(
        NAMESPACE, set(ray_cluster.actors(NAMESPACE)) - {kernel["id"]}, timeout=10
    )


# -- kernels outlive the gateway -------------------------------------------------------------


async def test_kernel_survives_gateway_sigkill(ray_cluster, specs: str) -> None:
    namespace = f"rg-{uuid.uuid4().hex[:8]}"
    first = ServerProcess(ray_args(ray_cluster, namespace, specs), env=ray_cluster.env())
    second = None
    try:
        first.wait_ready(120)
        kernel = first.client.start_kernel()
        await first.client.run(kernel["id"], "x = 'still here'")
        first.stop(signal.SIGKILL)
        second = ServerProcess(ray_args(ray_cluster, namespace, specs), env=ray_cluster.env())
        second.wait_ready(120)
        listed = second.client.get("/api/kernels").json()
        assert [k["id"] for k in listed] == [kernel["id"]]
        assert listed[0]["created"] == kernel["created"]
        assert listed[0]["placement"]["pid"] == kernel["placement"]["pid"]
        out = await second.client.run(kernel["id"], "print(x)")
        assert out.stdout == "still here\n"
        # SIGTERM on a gateway joined to a cluster leaves the kernel running, too
        second.stop(signal.SIGTERM)
        assert "left 1 kernel(s) running" in second.output()
        assert set(ray_cluster.actors(namespace)) == {kernel["id"]}
        assert psutil.pid_exists(kernel["placement"]["pid"])
        second = ServerProcess(ray_args(ray_cluster, namespace, specs), env=ray_cluster.env())
        second.wait_ready(120)
        second.client.shutdown_kernel(kernel["id"])
        assert ray_cluster.wait_actors(namespace, set(), timeout=15) == {}
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()


async def test_two_replicas_serve_the_same_kernels(ray_cluster, specs: str) -> None:
    namespace = f"rg-{uuid.uuid4().hex[:8]}"
    a = ServerProcess(ray_args(ray_cluster, namespace, specs), env=ray_cluster.env())
    b = ServerProcess(ray_args(ray_cluster, namespace, specs), env=ray_cluster.env())
    try:
        a.wait_ready(120)
        b.wait_ready(120)
        kernel = a.client.start_kernel()
        await a.client.run(kernel["id"], "y = 7")
        assert wait_for(lambda: b.client.get(f"/api/kernels/{kernel['id']}").status_code == 200)
        assert [k["id"] for k in b.client.get("/api/kernels").json()] == [kernel["id"]]
        out = await b.client.run(kernel["id"], "y * 6")
        assert out.result == "42"
        # a kernel B starts shows up on A
        other = b.client.start_kernel()
        assert wait_for(lambda: a.client.get(f"/api/kernels/{other['id']}").status_code == 200)
        # a kernel shut down on A disappears from B, and its clients on B hear it died
        ws = await b.client.connect(kernel["id"])
        a.client.shutdown_kernel(kernel["id"])
        assert wait_for(
            lambda: b.client.get(f"/api/kernels/{kernel['id']}").status_code == 404, timeout=30
        )
        states = []
        try:
            while True:
                m = await ws.recv(5)
                if m["header"]["msg_type"] == "status":
                    states.append(m["content"]["execution_state"])
        except Exception:
            pass
        assert "dead" in states, states
        b.client.shutdown_kernel(other["id"])
        assert ray_cluster.wait_actors(namespace, set(), timeout=15) == {}
    finally:
        a.stop()
        b.stop()


@pytest.mark.ray
def test_embedded_ray_kernels_stop_with_the_gateway(start_server) -> None:
    """``raygate serve`` with no Ray address starts a Ray of its own; SIGTERM stops the
    gateway, its kernels and that Ray, leaving no process behind."""
    server = start_server("--ray-num-cpus", "2", "--ray-namespace", "rg-embedded")
    kernel = server.client.start_kernel()
    assert kernel["launcher"] == "ray"
    processes = server.kernel_pids()  # the local Ray's processes, actor and kernel among them
    assert kernel["placement"]["pid"] in processes
    server.stop(signal.SIGTERM)
    assert "shutting down 1 kernel(s)" in server.output()  # a clean exit, not Ray's handler
    assert wait_gone(processes, timeout=60) == []
