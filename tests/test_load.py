"""Many clients at once: 10 kernels, 5 WebSocket clients each (both framings), every client
running small cells in a loop. Every request gets its own reply and output, no reply
reaches a client that did not ask, and the gateway's memory does not grow with the load."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import psutil
import pytest

from conftest import ServerProcess, wait_gone
from kgclient import Gateway, KernelWS, message

KERNELS = 10
CLIENTS_PER_KERNEL = 5
WARMUP_CELLS = 3
ROUND_CELLS = 20
"""Cells each client runs in each of the two rounds of load (2,000 executions in all)."""
RSS_GROWTH_LIMIT = 50 * 1024 * 1024
"""Bytes the gateway may grow by from after the warm-up to after the load."""

pytestmark = pytest.mark.serial
SECOND_ROUND_GROWTH_LIMIT = 16 * 1024 * 1024
"""Bytes it may grow by in the second round: as much work as the first, whose growth
(buffers, allocator arenas) a gateway that does not leak does not repeat."""


@dataclass
class ClientLog:
    """What one client asked for and what it saw."""

    name: str
    executed: int = 0
    failures: list[str] = field(default_factory=list)
    foreign: list[dict] = field(default_factory=list)
    """Replies (shell, control, stdin) whose parent this client never sent."""
    sent: set[str] = field(default_factory=set)


async def execute_one(ws: KernelWS, log: ClientLog) -> None:
    """Run one cell that prints a text of this client's own, and check what came back."""
    text = f"{log.name}-{log.executed}"
    request = message(
        "execute_request",
        {"code": f"print({text!r})", "silent": False, "store_history": False},
    )
    msg_id = request["header"]["msg_id"]
    log.sent.add(msg_id)
    await ws.send(request)
    reply: dict | None = None
    output = ""
    idle = False
    while reply is None or not idle:
        m = await ws.recv(timeout=60)
        ws.received.clear()  # the test checks each message as it comes; keep no history
        parent = m["parent_header"].get("msg_id")
        if m["channel"] != "iopub":
            if parent not in log.sent:
                log.foreign.append(m)
            elif parent == msg_id and m["header"]["msg_type"] == "execute_reply":
                reply = m
        elif parent == msg_id:
            # iopub reaches every client of the kernel; only this client's own is checked.
            if m["header"]["msg_type"] == "stream":
                output += m["content"]["text"]
            elif m["header"]["msg_type"] == "status":
                idle = m["content"]["execution_state"] == "idle"
    if reply["content"]["status"] != "ok":
        log.failures.append(f"{text}: reply {reply['content']}")
    if output != text + "\n":
        log.failures.append(f"{text}: output {output!r}")
    log.executed += 1


async def run_client(ws: KernelWS, log: ClientLog, cells: int) -> None:
    """Execute ``cells`` cells, one after the other."""
    for _ in range(cells):
        await execute_one(ws, log)


def rss(server: ServerProcess) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


async def test_many_clients_on_many_kernels(start_server) -> None:
    server: ServerProcess = start_server("--default-launcher", "local")
    gw: Gateway = server.client
    kernels = await asyncio.gather(*(asyncio.to_thread(gw.start_kernel) for _ in range(KERNELS)))
    pids = server.kernel_pids()
    assert len(pids) >= KERNELS

    clients: list[tuple[KernelWS, ClientLog]] = []
    for k, kernel in enumerate(kernels):
        for c in range(CLIENTS_PER_KERNEL):
            binary = c % 2 == 1  # legacy JSON and v1 binary clients on every kernel
            # Unbounded receive queue: a client done before the others is still sent their
            # iopub, which it no longer reads; a full queue would stall its close handshake.
            ws = await gw.connect(kernel["id"], binary=binary, max_queue=None)
            clients.append((ws, ClientLog(f"k{k}c{c}{'v1' if binary else 'json'}")))
    try:
        await asyncio.gather(*(run_client(ws, log, cells=WARMUP_CELLS) for ws, log in clients))
        rss_warm = rss(server)

        await asyncio.gather(*(run_client(ws, log, cells=ROUND_CELLS) for ws, log in clients))
        rss_first = rss(server)
        await asyncio.gather(*(run_client(ws, log, cells=ROUND_CELLS) for ws, log in clients))
        rss_loaded = rss(server)

        for _, log in clients:
            assert log.failures == [], (log.name, log.failures[:5])
            assert log.foreign == [], (log.name, log.foreign[:2])
            assert log.executed == WARMUP_CELLS + 2 * ROUND_CELLS, log.name
        total = sum(log.executed for _, log in clients)
        growth = rss_loaded - rss_warm
        assert growth < RSS_GROWTH_LIMIT, (
            f"gateway RSS grew by {growth / 2**20:.1f} MiB over {total} executions"
        )
        again = rss_loaded - rss_first
        assert again < SECOND_ROUND_GROWTH_LIMIT, (
            f"gateway RSS grew by {again / 2**20:.1f} MiB in the second round of load"
        )
    finally:
        await asyncio.gather(*(ws.close() for ws, _ in clients))

    # still healthy: every kernel listed, idle, with its clients gone, and answering
    assert gw.get("/api/health").status_code == 200
    deadline = time.monotonic() + 30
    while True:
        models = {k["id"]: k for k in gw.get("/api/kernels").json()}
        if all(models[k["id"]]["connections"] == 0 for k in kernels):
            break
        assert time.monotonic() < deadline, "closed clients still counted as connections"
        await asyncio.sleep(0.2)
    assert all(models[k["id"]]["execution_state"] == "idle" for k in kernels)
    assert (await gw.run(kernels[0]["id"], "print('after the load')")).stdout == "after the load\n"

    deleted = await asyncio.gather(
        *(asyncio.to_thread(gw.delete, f"/api/kernels/{k['id']}") for k in kernels)
    )
    assert [r.status_code for r in deleted] == [204] * KERNELS
    assert gw.get("/api/kernels").json() == []
    assert wait_gone(pids) == []
    server.stop()
