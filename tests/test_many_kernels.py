"""Many kernels through one gateway: each answers, all go, and the open-files limit holds.

benchmarks/many_kernels.py measures the costs; these tests check what users see.
"""

from __future__ import annotations

import asyncio
import re
import resource
import time

import httpx
import psutil
import pytest

from conftest import ServerProcess, wait_gone
from kgclient import Gateway
from raygate.limits import FDS_PER_KERNEL, MIN_RESERVE, reserve

pytestmark = [pytest.mark.timeout(300), pytest.mark.serial]

KERNELS = 30


async def start_many(server: ServerProcess, count: int, batch: int = 6) -> list[dict]:
    """Start ``count`` kernels, ``batch`` at a time, as several notebook users would."""
    headers = {"Authorization": f"token {server.token}"}
    models: list[dict] = []
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=240) as http:
        for first in range(0, count, batch):
            replies = await asyncio.gather(
                *(
                    http.post("/api/kernels", json={"name": "python3"})
                    for _ in range(min(batch, count - first))
                )
            )
            for r in replies:
                assert r.status_code == 201, r.text
                models.append(r.json())
    return models


async def answers(client: Gateway, kernel_id: str, n: int) -> str:
    return (await client.run(kernel_id, f"print({n} * 2)")).stdout


def steady_fds(process: psutil.Process, reads: int = 10) -> int:
    """The most descriptors ``process`` holds over ``reads`` reads 50 ms apart: one read can
    fall in the instant a connection or a libzmq descriptor comes or goes."""
    counts = []
    for _ in range(reads):
        counts.append(process.num_fds())
        time.sleep(0.05)
    return max(counts)


def released(process: psutil.Process, fds: int, timeout: float = 15) -> bool:
    """Whether ``process`` holds at most ``fds`` descriptors within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while process.num_fds() > fds:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_thirty_kernels_each_answer_and_all_go(start_server) -> None:
    server = start_server("--default-launcher", "local")
    gateway = psutil.Process(server.proc.pid)
    fds_before = steady_fds(gateway)
    models = asyncio.run(start_many(server, KERNELS))
    ids = [m["id"] for m in models]
    assert len(set(ids)) == KERNELS
    listed = {k["id"]: k for k in server.client.get("/api/kernels").json()}
    assert set(listed) == set(ids)
    assert all(listed[i]["execution_state"] == "idle" for i in ids)

    async def ask_all() -> list[str]:
        return await asyncio.gather(*(answers(server.client, i, n) for n, i in enumerate(ids)))

    assert asyncio.run(ask_all()) == [f"{n * 2}\n" for n in range(KERNELS)]

    pids = server.kernel_pids()
    assert len(pids) >= KERNELS
    for kernel_id in ids:
        assert server.client.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert server.client.get("/api/kernels").json() == []
    assert wait_gone(pids) == []
    # Every kernel's sockets were closed: what the gateway holds now beyond what it held
    # before is libzmq's own (its I/O and reaper threads start with the first socket: 5),
    # less than one kernel's 8, where a leak of one socket per kernel would be 30 or more.
    assert released(gateway, fds_before + 7)


def test_start_refused_near_the_open_files_limit(start_server) -> None:
    server = start_server("--default-launcher", "local")
    gateway = psutil.Process(server.proc.pid)
    # Leave room for two kernels above the descriptors kept for clients.
    limit = steady_fds(gateway) + MIN_RESERVE + 2 * FDS_PER_KERNEL + 4
    assert reserve(limit) == MIN_RESERVE
    _, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.proc.pid, resource.RLIMIT_NOFILE, (limit, hard))
    started: list[str] = []
    refused = None
    for _ in range(6):
        r = server.client.post("/api/kernels", json={"name": "python3"})
        if r.status_code != 201:
            refused = r
            break
        started.append(r.json()["id"])
    assert refused is not None, "no start was refused"
    assert refused.status_code == 503
    body = refused.json()
    assert body["reason"] == "Service Unavailable"
    assert "open-files limit" in body["message"]
    # The refusal is the rule applied to what the gateway itself counted, not a guess.
    used = int(re.search(rf"\((\d+) of {limit} in use, {MIN_RESERVE} kept", body["message"])[1])
    assert used + FDS_PER_KERNEL > limit - MIN_RESERVE
    # Room was left for two kernels; the first kernel also brings libzmq's own threads (5).
    assert 1 <= len(started) <= 2
    # The gateway goes on serving: the kernels it holds answer, and kernels shut down make
    # room for the next start (once libzmq's I/O thread has closed their descriptors, just
    # after the sockets are closed: until then a start may still be refused). All of them:
    # with two started, one shut down leaves room for one more only to the descriptor, and
    # a client's connection coming or going refused that start in a CI run.
    assert server.client.get("/api/kernels").status_code == 200
    assert asyncio.run(answers(server.client, started[0], 21)) == "42\n"
    pids = server.kernel_pids()
    assert pids
    while started:
        server.client.shutdown_kernel(started.pop())
    deadline = time.monotonic() + 15
    r = server.client.post("/api/kernels", json={"name": "python3"})
    while r.status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
        r = server.client.post("/api/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text
    started.append(r.json()["id"])
    for kernel_id in started:
        server.client.shutdown_kernel(kernel_id)
    assert wait_gone(pids + server.kernel_pids()) == []
