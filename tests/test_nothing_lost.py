"""Faults while output flows: what was delivered, lost or duplicated is counted, and
nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import pytest
import websockets

from conftest import ServerProcess, wait_gone
from kgclient import Gateway, KernelWS, message

# Prints numbered lines, one message each, for about three seconds.
COUNTING = "import time\nfor i in range({n}):\n    print(f'line {{i}}', flush=True)\n    time.sleep({pause})\n"


def line_numbers(messages: list[dict]) -> list[int]:
    numbers = []
    for m in messages:
        if m["header"]["msg_type"] == "stream" and m["content"]["name"] == "stdout":
            numbers += [int(w.split()[1]) for w in m["content"]["text"].splitlines() if w]
    return numbers


async def read_until_idle(
    ws: KernelWS, msg_id: str, timeout: float = 60, reply: bool = False
) -> None:
    """Read until the request's iopub ``idle`` (and, with ``reply``, its execute_reply:
    the two travel on different sockets, so either may arrive first)."""
    deadline = time.monotonic() + timeout

    def seen(m: dict) -> bool:
        return m["parent_header"].get("msg_id") == msg_id

    idle = reply_seen = False
    while not (idle and (reply_seen or not reply)):
        m = await ws.recv(max(0.1, deadline - time.monotonic()))
        kind = m["header"]["msg_type"]
        idle = idle or (kind == "status" and m["content"]["execution_state"] == "idle" and seen(m))
        reply_seen = reply_seen or (kind == "execute_reply" and seen(m))


async def drain_closed(ws: KernelWS) -> None:
    """Read what the client library already holds after a close."""
    try:
        while True:
            await ws.recv(5)
    except (TimeoutError, websockets.ConnectionClosed):
        pass


@pytest.mark.parametrize("binary", [False, True])
async def test_reconnect_gets_missed_output_once(gateway: Gateway, binary: bool) -> None:
    kernel = gateway.start_kernel()
    first = await gateway.connect(kernel["id"], binary=binary, session="nb-1")
    request = message("execute_request", {"code": COUNTING.format(n=60, pause=0.05)})
    await first.send(request)
    while len(line_numbers(first.received)) < 10:
        await first.recv(30)
    await first.ws.close()
    await drain_closed(first)
    await asyncio.sleep(1.0)  # output keeps coming while nobody is connected
    second = await gateway.connect(kernel["id"], binary=not binary, session="nb-1")
    await read_until_idle(second, request["header"]["msg_id"], reply=True)
    seen_first, seen_second = line_numbers(first.received), line_numbers(second.received)
    assert seen_second, "the reconnected client got the output it missed"
    # once, in order: what the first client missed follows what it got, nothing twice
    assert seen_first + seen_second == list(range(60)), (seen_first, seen_second)
    replies = [m for m in second.received if m["header"]["msg_type"] == "execute_reply"]
    assert len(replies) == 1 and replies[0]["content"]["status"] == "ok"
    await second.close()


async def test_other_sessions_do_not_get_the_replay(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    first = await gateway.connect(kernel["id"], session="nb-a")
    request = message("execute_request", {"code": "print('while you were away')"})
    await first.ws.close()
    watcher = await gateway.connect(kernel["id"], session="nb-b")
    await watcher.send(request)
    await read_until_idle(watcher, request["header"]["msg_id"])
    fresh = await gateway.connect(kernel["id"], session="nb-c")
    await asyncio.sleep(0.5)
    back = await gateway.connect(kernel["id"], session="nb-a")
    got = []
    while not any(m["header"]["msg_type"] == "stream" for m in got):
        got.append(await back.recv(10))
    assert (
        "while you were away"
        in next(m for m in got if m["header"]["msg_type"] == "stream")["content"]["text"]
    )
    with pytest.raises(asyncio.TimeoutError):
        await fresh.recv(0.5)
    for ws in (watcher, fresh, back):
        await ws.close()


async def test_replay_bound_is_reported(start_server) -> None:
    server: ServerProcess = start_server(
        "--default-launcher", "local", "--replay-buffer-bytes", "20000"
    )
    gw = server.client
    kernel = gw.start_kernel()
    first = await gw.connect(kernel["id"], session="nb-1")
    await first.ws.close()
    request = message("execute_request", {"code": COUNTING.format(n=400, pause=0.002)})
    runner = await gw.connect(kernel["id"], session="other")
    await runner.send(request)
    await read_until_idle(runner, request["header"]["msg_id"])
    back = await gw.connect(kernel["id"], session="nb-1")
    got = []
    try:
        while True:
            got.append(await back.recv(2))
    except TimeoutError:
        pass
    notices = [
        m for m in got
        if m["header"]["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    ]  # fmt: skip
    assert len(notices) == 1, [m["header"]["msg_type"] for m in got]
    text = notices[0]["content"]["text"]
    assert "did not fit the replay buffer (20000 bytes)" in text
    # the notice belongs to the cell whose output was cut, and the newest output is there
    assert notices[0]["parent_header"]["msg_id"] == request["header"]["msg_id"]
    numbers = line_numbers(got)
    assert numbers and numbers[-1] == 399 and numbers == list(range(numbers[0], 400))
    await runner.close()
    await back.close()


async def test_kernel_killed_mid_output(gateway: Gateway, gateway_server: ServerProcess) -> None:
    kernel = gateway.start_kernel()
    ws = await gateway.connect(kernel["id"])
    await ws.send(message("execute_request", {"code": COUNTING.format(n=1000, pause=0.01)}))
    while len(line_numbers(ws.received)) < 20:
        await ws.recv(30)
    os.kill(kernel["placement"]["pid"], signal.SIGKILL)
    states = []
    while "restarting" not in states:
        m = await ws.recv(30)
        if m["header"]["msg_type"] == "status":
            states.append(m["content"]["execution_state"])
    numbers = line_numbers(ws.received)
    # every line that left the kernel arrived, in order, once
    assert numbers == list(range(len(numbers)))
    assert 20 <= len(numbers) < 1000
    reason = next(m for m in ws.received if m["content"].get("execution_state") == "restarting")
    assert "SIGKILL" in reason["content"]["reason"]
    assert wait_gone([kernel["placement"]["pid"]]) == []
    await ws.close()


async def test_sigterm_closes_websockets_and_finishes_starts(start_server) -> None:
    server: ServerProcess = start_server("--default-launcher", "local")
    gw = server.client
    kernel = gw.start_kernel()
    ws = await gw.connect(kernel["id"])
    await ws.execute("1")
    result: dict = {}

    def start_one() -> None:
        try:
            result["response"] = httpx.post(
                server.url + "/api/kernels",
                json={"name": "python3"},
                headers={"Authorization": f"token {server.token}"},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            result["error"] = exc

    before = set(server.kernel_pids())
    thread = threading.Thread(target=start_one)
    thread.start()
    # The start is in flight once its kernel process exists (it has not answered yet).
    deadline = time.monotonic() + 30
    while not set(server.kernel_pids()) - before and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert set(server.kernel_pids()) - before, "the start never began"
    pids = server.kernel_pids()
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await ws.recv(30)
    assert closed.value.rcvd is not None, "the server sent a close frame"
    thread.join(60)
    response = result.get("response")
    assert response is not None, result
    # The start in flight is finished (its kernel is then shut down with the gateway).
    assert response.status_code == 201, response.text
    server.proc.wait(30)
    assert wait_gone(pids) == []
