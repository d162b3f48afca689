"""Warm kernel pools (``--prewarm``): real local gateways and real ipykernels.

A start served from the pool is recognised by its kernel id: the pool's kernels are listed
(by id) in ``/api/status`` before the request, and a warm start returns one of those ids.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from conftest import ServerProcess, wait_gone
from kernelspecs import make_test_kernelspecs
from kgclient import Gateway
from raygate.kernels.pool import DEMAND_WINDOW, _Shelf


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_test_kernelspecs(str(tmp_path_factory.mktemp("specs")))


@pytest.fixture(scope="module")
def server(specs: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        ["--default-launcher", "local", "--kernelspec-dirs", specs, "--prewarm", "python3=2"]
    )
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def gw(server: ServerProcess) -> Iterator[Gateway]:
    yield server.client
    for k in server.client.get("/api/kernels").json():
        server.client.shutdown_kernel(k["id"])


def pool_of(client: Gateway, name: str = "python3") -> dict:
    r = client.get("/api/status")
    assert r.status_code == 200, r.text
    return r.json()["pool"][name]


def wait_pool(client: Gateway, ready: int, name: str = "python3", timeout: float = 90) -> dict:
    """The pool's status once it holds ``ready`` ready kernels (and starts no more)."""
    deadline = time.monotonic() + timeout
    while True:
        pool = pool_of(client, name)
        if pool["ready"] == ready and pool["starting"] == 0:
            return pool
        assert time.monotonic() < deadline, f"pool never reached {ready} ready kernels: {pool}"
        time.sleep(0.2)


def status_row(client: Gateway, kernel_id: str) -> dict:
    rows = client.get("/api/status").json()["kernels"]
    return next(row for row in rows if row["id"] == kernel_id)


def test_pool_fills_and_is_not_listed(gw: Gateway) -> None:
    pool = wait_pool(gw, 2)
    assert pool["size"] == 2 and pool["launcher"] == "local"
    assert len(set(pool["kernels"])) == 2
    metrics = gw.get("/metrics").text
    assert 'raygate_warm_kernels{kernelspec="python3",state="ready"} 2.0' in metrics
    # Pool kernels are nobody's: not in the kernel list, not fetchable as a kernel.
    assert gw.get("/api/kernels").json() == []
    assert gw.get(f"/api/kernels/{pool['kernels'][0]}").status_code == 404


async def test_warm_start_gets_the_requests_env(gw: Gateway, tmp_path) -> None:
    pool = wait_pool(gw, 2)
    workdir = str(tmp_path)
    foo = 'it\'s "quoted"\n'
    env = {"KERNEL_USERNAME": "alice", "KERNEL_FOO": foo, "KERNEL_WORKING_DIR": workdir}
    model = gw.start_kernel("python3", env=env)
    assert model["id"] in pool["kernels"]  # served from the pool
    assert model["username"] == "alice"
    assert status_row(gw, model["id"])["warm"] is True
    assert [k["id"] for k in gw.get("/api/kernels").json()] == [model["id"]]

    show = "import os; print(os.environ['KERNEL_USERNAME'], os.getcwd())"
    ws = await gw.connect(model["id"])
    try:
        first = await ws.execute(
            "import os\nprint(repr(os.environ['KERNEL_FOO']), os.environ['KERNEL_ID'])"
        )
        assert first.status == "ok", first.error
        assert first.stdout == f"{foo!r} {model['id']}\n"
        assert first.reply["execution_count"] == 1  # the env was set silently
        second = await ws.execute(show)
        assert second.stdout == f"alice {workdir}\n"
        assert second.reply["execution_count"] == 2
    finally:
        await ws.close()

    # A restart keeps what the request asked for.
    assert gw.post(f"/api/kernels/{model['id']}/restart").status_code == 200
    again = await gw.run(model["id"], show)
    assert again.stdout == f"alice {workdir}\n"


def test_other_resource_shape_starts_cold(gw: Gateway) -> None:
    pool = wait_pool(gw, 2)
    model = gw.start_kernel("python3", env={"KERNEL_MEMORY": "1Gi"})
    assert model["id"] not in pool["kernels"]
    assert status_row(gw, model["id"])["warm"] is False
    assert pool_of(gw)["kernels"] == pool["kernels"]  # the pool was left alone


async def test_concurrent_starts(gw: Gateway) -> None:
    pool = wait_pool(gw, 2)

    async def start(client: httpx.AsyncClient, i: int) -> dict:
        r = await client.post("/api/kernels", json={"env": {"KERNEL_NTH": str(i)}})
        assert r.status_code == 201, r.text
        return r.json()

    headers = {"Authorization": f"token {gw.token}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=120) as client:
        models = await asyncio.gather(*(start(client, i) for i in range(10)))
    ids = [m["id"] for m in models]
    assert len(set(ids)) == 10
    assert len({m["placement"]["pid"] for m in models}) == 10  # no kernel handed out twice
    warm = [i for i, m in enumerate(models) if m["id"] in pool["kernels"]]
    assert len(warm) == 2, "both pool kernels are handed out, each once"
    assert sorted(m["id"] for m in models if status_row(gw, m["id"])["warm"]) == sorted(
        pool["kernels"]
    )
    for i, m in enumerate(models):
        result = await gw.run(m["id"], "import os; print(os.environ['KERNEL_NTH'])")
        assert result.stdout == f"{i}\n", (i, result)
    refilled = wait_pool(gw, 2)
    assert not set(refilled["kernels"]) & set(ids)


def test_dead_pool_kernel_is_replaced(server: ServerProcess, gw: Gateway) -> None:
    pool = wait_pool(gw, 2)
    pids = server.kernel_pids()
    assert len(pids) == 2  # no user kernels now: these are the pool's
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        now = pool_of(gw)
        if now["ready"] == 2 and len(set(now["kernels"]) - set(pool["kernels"])) == 1:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    model = gw.start_kernel("python3")
    assert model["id"] in now["kernels"]


def test_pool_counts_against_max_kernels(start_server: Callable[..., ServerProcess], specs: str):
    server = start_server(
        "--default-launcher", "local", "--kernelspec-dirs", specs,
        "--prewarm", "python3=2", "--max-kernels", "2",
    )  # fmt: skip
    client = server.client
    pool = wait_pool(client, 2)
    # A cold start needs room: a pool kernel gives way to it.
    cold = client.start_kernel("python3", env={"KERNEL_MEMORY": "1Gi"})
    assert cold["id"] not in pool["kernels"]
    assert pool_of(client)["ready"] + pool_of(client)["starting"] <= 1
    warm = client.start_kernel("python3")
    assert warm["id"] in pool["kernels"]
    r = client.post("/api/kernels", json={"name": "python3"})
    assert r.status_code == 403, r.text
    assert set(r.json()) == {"reason", "message"}
    assert pool_of(client)["ready"] == 0  # no room for pool kernels
    client.shutdown_kernel(cold["id"])
    client.shutdown_kernel(warm["id"])
    wait_pool(client, 2)


async def test_pool_grows_with_a_burst_within_max_kernels(
    start_server: Callable[..., ServerProcess], specs: str
) -> None:
    server = start_server(
        "--default-launcher", "local", "--kernelspec-dirs", specs,
        "--prewarm", "python3=1", "--prewarm-max", "3", "--max-kernels", "4",
    )  # fmt: skip
    client = server.client
    wait_pool(client, 1)
    headers = {"Authorization": f"token {client.token}"}
    async with httpx.AsyncClient(base_url=client.url, headers=headers, timeout=120) as http:
        answers = await asyncio.gather(*(http.post("/api/kernels", json={}) for _ in range(3)))
    assert [r.status_code for r in answers] == [201] * 3, [r.text for r in answers]
    # Three starts asked for: the pool wants three, but --max-kernels leaves room for one.
    pool = wait_pool(client, 1)
    assert pool["target"] == 3
    for r in answers:
        client.shutdown_kernel(r.json()["id"])
    assert wait_pool(client, 3)["size"] == 1


def test_a_growing_shelf_follows_the_starts_of_its_window() -> None:
    shelf = _Shelf("python3", 1, None, most=3)  # type: ignore[arg-type]
    assert shelf.target(0.0) == 1
    shelf.asked.extend([0.0, 1.0, 2.0, 3.0])
    assert shelf.target(3.0) == 3  # four starts, at most three
    assert shelf.target(DEMAND_WINDOW + 1.5) == 2  # the oldest two are out of the window
    assert shelf.target(DEMAND_WINDOW + 10.0) == 1


@pytest.mark.parametrize(
    ("value", "words"),
    [("nosuch=1", "no kernelspec named 'nosuch'"), ("python3", "KERNELSPEC=N")],
)
def test_bad_prewarm_fails_at_startup(specs: str, value: str, words: str, refused_serve) -> None:
    r = refused_serve(
        "--default-launcher", "local", "--kernelspec-dirs", specs, "--prewarm", value
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert words in r.stderr, r.stderr
    assert "--prewarm" in r.stderr


def test_no_orphans_after_sigterm(start_server: Callable[..., ServerProcess], specs: str):
    server = start_server(
        "--default-launcher", "local", "--kernelspec-dirs", specs, "--prewarm", "python3=2"
    )
    wait_pool(server.client, 2)
    server.client.start_kernel("python3")
    wait_pool(server.client, 2)  # a user's kernel and two pool kernels
    pids = server.kernel_pids()
    assert len(pids) == 3
    runtime_dirs = {_runtime_dir(pid) for pid in pids} - {None}
    # One more hand-out: its replacement is being launched when the gateway stops.
    server.client.start_kernel("python3")
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert wait_gone(pids) == []
    assert "Application shutdown complete" in server.output()
    left = [p.pid for p in psutil.process_iter() if _runtime_dir(p.pid) in runtime_dirs]
    assert wait_gone(left) == []


def _runtime_dir(pid: int) -> str | None:
    """The local launcher's directory of a kernel process's connection file."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    for arg in cmdline:
        if "raygate-local-" in arg:
            return os.path.dirname(arg)
    return None


async def test_ray_pool_kernels_go_with_the_gateway(ray_cluster, specs: str) -> None:
    """On a joined Ray cluster a user's kernels outlive the gateway, but pool kernels,
    which belong to nobody, are shut down with it."""
    namespace = f"rg-pool-{uuid.uuid4().hex[:8]}"
    args = ["--ray-address", ray_cluster.address, "--ray-namespace", namespace]
    args += ["--kernelspec-dirs", specs, "--prewarm", "python3=1"]
    server = ServerProcess(args, env=ray_cluster.env())
    later = None
    try:
        server.wait_ready(120)
        pool = wait_pool(server.client, 1, timeout=120)
        model = server.client.start_kernel("python3", env={"KERNEL_FOO": "on-ray"})
        assert model["id"] in pool["kernels"]
        assert model["launcher"] == "ray"
        out = await server.client.run(model["id"], "import os; print(os.environ['KERNEL_FOO'])")
        assert out.stdout == "on-ray\n"
        wait_pool(server.client, 1, timeout=120)
        assert server.client.get("/api/kernels").json()[0]["id"] == model["id"]
        server.stop(signal.SIGTERM)
        assert "left 1 kernel(s) running" in server.output()
        assert ray_cluster.wait_actors(namespace, {model["id"]}, timeout=30) == {
            model["id"]: "ALIVE"
        }
        # The next gateway finds the user's kernel, and only it.
        later = ServerProcess(args[:-2], env=ray_cluster.env())
        later.wait_ready(120)
        assert [k["id"] for k in later.client.get("/api/kernels").json()] == [model["id"]]
        later.client.shutdown_kernel(model["id"])
        assert ray_cluster.wait_actors(namespace, set(), timeout=30) == {}
    finally:
        server.stop(signal.SIGKILL)
        if later is not None:
            later.stop()


@pytest.mark.ray
async def test_embedded_ray_pool(start_server: Callable[..., ServerProcess], specs: str) -> None:
    """Warm Ray kernels: the env reaches them, again after a restart (the actor restarts
    the kernel with the env it was launched with), and SIGTERM leaves no process behind."""
    server = start_server(
        "--ray-num-cpus", "2", "--ray-namespace", "rg-pool", "--kernelspec-dirs", specs,
        "--prewarm", "python3=1",
    )  # fmt: skip
    pool = wait_pool(server.client, 1, timeout=120)
    model = server.client.start_kernel("python3", env={"KERNEL_FOO": "on-ray"})
    assert model["id"] in pool["kernels"] and model["launcher"] == "ray"
    show = "import os; print(os.environ['KERNEL_FOO'])"
    assert (await server.client.run(model["id"], show)).stdout == "on-ray\n"
    assert server.client.post(f"/api/kernels/{model['id']}/restart").status_code == 200
    assert (await server.client.run(model["id"], show)).stdout == "on-ray\n"
    wait_pool(server.client, 1, timeout=120)
    processes = server.kernel_pids()  # the local Ray's, the actors and kernels among them
    restarted = server.client.get(f"/api/kernels/{model['id']}").json()
    assert restarted["placement"]["pid"] != model["placement"]["pid"]
    assert restarted["placement"]["pid"] in processes
    server.stop(signal.SIGTERM)
    assert "Application shutdown complete" in server.output()
    assert wait_gone(processes, timeout=60) == []
