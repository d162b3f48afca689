"""Per-user caps hold across gateway replicas: two real ``raygate serve`` replicas joined to
the session's Ray cluster (one namespace), a users file, per-user caps on kernels, GPUs
and memory; concurrent starts of one user split over both replicas start exactly what the
caps allow, and a replica killed mid-start does not block its user for long.

The replicas run without periodic discovery, so that nothing but the shared ledger (and
its reconciliation) can make one replica see the other's kernels: a replica that adopted
the other's kernels would also release their claims itself when they end.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from conftest import ServerProcess
from kernelspecs import ipykernel_argv, make_test_kernelspecs, write_kernelspec
from kgclient import Gateway

KERNELS, GPUS, MEMORY = 2, 1, "500Mi"
USERS = {f"tok-{name}": name for name in ("kernels", "gpus", "memory", "killed")}


def replica_args(cluster, namespace: str, root: str) -> list[str]:
    users = f"{root}/users.toml"
    return [
        "--ray-address", cluster.address,
        "--ray-namespace", namespace,
        "--kernelspec-dirs", f"{root}/specs",
        "--users-file", users,
        "--discovery-interval", "0",
        "--ray-kernel-cpus", "0.25",
        "--max-kernels-per-user", str(KERNELS),
        "--max-gpus-per-user", str(GPUS),
        "--max-memory-per-user", MEMORY,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def setup(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    root = str(tmp_path_factory.mktemp("caps"))
    specs = make_test_kernelspecs(f"{root}/specs")
    # a kernel whose start takes long: the window in which a replica holds a reservation
    slow = "import time, os, sys; time.sleep(60); os.execv(sys.argv[1], sys.argv[1:])"
    write_kernelspec(specs, "slow", [ipykernel_argv()[0], "-c", slow, *ipykernel_argv()])
    with open(f"{root}/users.toml", "w") as f:
        f.writelines(f'"{token}" = "{name}"\n' for token, name in USERS.items())
    namespace = f"rg-caps-{uuid.uuid4().hex[:8]}"
    return namespace, replica_args(ray_cluster, namespace, root)


@pytest.fixture(scope="module")
def replicas(ray_cluster, setup) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    _, args = setup
    a = ServerProcess(args, env=ray_cluster.env())
    b = ServerProcess(args, env=ray_cluster.env())
    try:
        a.wait_ready(120)
        b.wait_ready(120)
        yield a, b
    finally:
        a.stop(check=False)
        b.stop(check=False)
        a.check_log()
        b.check_log()


@pytest.fixture
def both(replicas, ray_cluster, setup) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The replicas; every kernel a test started on either is shut down after it."""
    yield replicas
    for server in replicas:
        for kernel in server.client.get("/api/kernels").json():
            server.client.shutdown_kernel(kernel["id"])
    assert ray_cluster.wait_actors(setup[0], set(), timeout=30) == {}


def as_user(server: ServerProcess, name: str) -> Gateway:
    return Gateway(server.url, next(t for t, n in USERS.items() if n == name))


async def start_split(
    replicas: tuple[ServerProcess, ...], user: str, n: int, env: dict[str, str]
) -> list[tuple[ServerProcess, httpx.Response]]:
    """``n`` concurrent starts by ``user``, every other one on each replica."""
    token = next(t for t, name in USERS.items() if name == user)
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(headers=headers, timeout=180) as client:
        targets = [replicas[i % len(replicas)] for i in range(n)]
        body = {"name": "python3", "env": env}
        responses = await asyncio.gather(
            *(client.post(f"{t.url}/api/kernels", json=body) for t in targets)
        )
    return list(zip(targets, responses, strict=True))


def assert_refused(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 403, r.text
    body = r.json()
    assert set(body) == {"reason", "message"}, body
    for word in words:
        assert word in body["message"], body


@pytest.mark.parametrize(
    ("user", "env", "allowed", "words"),
    [
        ("kernels", {}, KERNELS, ("Per-user kernel limit reached", f"at most {KERNELS} per user")),
        ("gpus", {"KERNEL_GPUS": "1"}, GPUS, ("Per-user GPU limit reached", "at most 1 GPU")),
        (
            "memory",
            {"KERNEL_MEMORY": "300Mi"},
            1,
            ("Per-user memory limit reached", "at most 500.0 MiB per user"),
        ),
    ],
)
def test_concurrent_starts_on_two_replicas_start_exactly_the_cap(
    both, user: str, env: dict[str, str], allowed: int, words: tuple[str, ...]
) -> None:
    results = asyncio.run(start_split(both, user, 2 * allowed, env))
    started = [(server, r.json()) for server, r in results if r.status_code == 201]
    refused = [r for _, r in results if r.status_code != 201]
    # every answer in full when it fails (pytest cuts a long assertion message short)
    answers = "\n".join(f"{s.url}: {r.status_code} {r.text}" for s, r in results)
    assert len(started) == allowed, answers
    for r in refused:
        assert_refused(r, *words, f"'{user}'")
    # a replica serves only what it started (no discovery here): the starts really split
    for server in both:
        mine = {k["id"] for s, k in started if s is server}
        assert {k["id"] for k in server.client.get("/api/kernels").json()} == mine
    # one ends on the replica that started it: a start on the other one succeeds again
    server, kernel = started[0]
    other = both[1] if server is both[0] else both[0]
    server.client.shutdown_kernel(kernel["id"])
    assert as_user(other, user).start_kernel(env=env)["username"] == user
    # and the user is at the cap again, on both
    for replica in both:
        r = as_user(replica, user).post("/api/kernels", json={"name": "python3", "env": env})
        assert_refused(r, *words)


def test_a_replica_killed_mid_start_does_not_block_its_user(both, ray_cluster, setup) -> None:
    namespace, args = setup
    a, b = both
    held = as_user(a, "killed").start_kernel()
    doomed = ServerProcess(args, env=ray_cluster.env(), expect_errors=["Traceback"])
    try:
        doomed.wait_ready(120)
        before = set(ray_cluster.actors(namespace))

        def start_slow() -> None:
            try:
                as_user(doomed, "killed").post("/api/kernels", json={"name": "slow"})
            except httpx.HTTPError:
                pass  # the replica is killed while it waits

        threading.Thread(target=start_slow, daemon=True).start()
        deadline = time.monotonic() + 60
        while not (set(ray_cluster.actors(namespace)) - before) and time.monotonic() < deadline:
            time.sleep(0.2)
        (orphan,) = set(ray_cluster.actors(namespace)) - before
        doomed.stop(signal.SIGKILL, check=False)
    finally:
        doomed.stop(signal.SIGKILL, check=False)
    # the start's kernel exists (its actor lives on): it holds its place
    r = as_user(b, "killed").post("/api/kernels", json={"name": "python3"})
    assert_refused(r, "Per-user kernel limit reached", "holds 2 kernels")
    # once it is gone (as if the start had failed with its replica), nothing holds it
    ray_cluster.kill_actors({(namespace, orphan)})
    deadline = time.monotonic() + 30
    while True:
        r = as_user(b, "killed").post("/api/kernels", json={"name": "python3"})
        if r.status_code == 201 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 201, r.text
    assert r.json()["username"] == "killed"
    # released by reconciliation (no replica here adopts another's kernels)
    assert "dropped 1 claim(s) that hold nothing any more" in b.output()
    assert orphan in b.output()
    assert {held["id"], r.json()["id"]} <= set(ray_cluster.actors(namespace))
