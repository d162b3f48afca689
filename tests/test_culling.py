"""Culling as clients see it: a warning on stderr first, then the kernel is gone.

The tests run local-launcher gateways with short timeouts: idle kernels are culled after
5 s without a message, busy ones after 10 s, with a 3 s warning, checked every 0.5 s. Those
with the same options share one (culling is per kernel, and each test's kernel is culled).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import websockets

from conftest import ServerProcess, wait_gone
from kgclient import Gateway, KernelWS, message

IDLE_TIMEOUT = 5
BUSY_TIMEOUT = 10
WARNING = 3
CULLING = (
    "--default-launcher", "local",
    "--cull-idle-timeout", str(IDLE_TIMEOUT),
    "--cull-busy-timeout", str(BUSY_TIMEOUT),
    "--cull-warning", str(WARNING),
    "--cull-interval", "0.5",
)  # fmt: skip
WARNING_PREFIX = "raygate: this kernel will be shut down in"


@pytest.fixture(scope="module")
def culling_server() -> Iterator[ServerProcess]:
    """``CULLING`` with ``--cull-connected``, for the tests that use just that."""
    server = ServerProcess([*CULLING, "--cull-connected"])
    server.wait_ready()
    yield server
    server.stop()


def is_cull_warning(msg: dict) -> bool:
    return (
        msg["channel"] == "iopub"
        and msg["header"]["msg_type"] == "stream"
        and msg["content"].get("name") == "stderr"
        and msg["content"].get("text", "").startswith(WARNING_PREFIX)
    )


async def next_warning(ws: KernelWS, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.recv(max(0.1, deadline - time.monotonic()))
        if is_cull_warning(msg):
            return msg


async def wait_culled(gw: Gateway, kernel_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while gw.get(f"/api/kernels/{kernel_id}").status_code != 404:
        assert time.monotonic() < deadline, f"kernel {kernel_id} was not culled"
        await asyncio.sleep(0.2)


async def assert_closed_by_gateway(ws: KernelWS) -> None:
    """The WebSocket ends (after any messages still queued) when its kernel is culled."""
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await ws.recv(timeout=30)


def assert_gone(gw: Gateway, kernel: dict) -> None:
    r = gw.get(f"/api/kernels/{kernel['id']}")
    assert r.status_code == 404
    assert set(r.json()) == {"reason", "message"}
    assert wait_gone([kernel["placement"]["pid"]]) == []


async def test_idle_kernel_is_warned_then_culled(culling_server: ServerProcess) -> None:
    server = culling_server
    gw = server.client
    kernel = gw.start_kernel()
    ws = await gw.connect(kernel["id"])
    assert (await ws.execute("1")).status == "ok"
    warning = await next_warning(ws)
    warned = time.monotonic()
    text = warning["content"]["text"]
    assert f"shut down in {WARNING} s because it has been idle for" in text
    assert warning["parent_header"] == {}
    assert warning["header"]["username"] == "raygate" and warning["header"]["msg_id"]
    # warned first, culled after: the kernel is still there when the warning arrives
    assert gw.get(f"/api/kernels/{kernel['id']}").status_code == 200
    await assert_closed_by_gateway(ws)
    # ... and it is given the full warning period (less the warning's way here)
    assert time.monotonic() - warned >= WARNING - 0.5
    await wait_culled(gw, kernel["id"])
    assert_gone(gw, kernel)
    assert f"kernel {kernel['id']}: culled after" in server.output()


async def test_warning_longer_than_the_timeout_is_cut_to_it(start_server) -> None:
    timeout = 3
    server: ServerProcess = start_server(
        "--default-launcher", "local",
        "--cull-idle-timeout", str(timeout),
        "--cull-warning", "60",
        "--cull-interval", "0.5",
        "--cull-connected",
    )  # fmt: skip
    gw = server.client
    kernel = gw.start_kernel()
    ws = await gw.connect(kernel["id"])
    assert (await ws.execute("1")).status == "ok"
    last_message = time.monotonic()
    warning = await next_warning(ws, timeout=10)
    # warned at once (the whole timeout is the warning period), and culled after it
    assert f"shut down in {timeout} s because it has been idle for" in warning["content"]["text"]
    assert time.monotonic() - last_message < 2
    await wait_culled(gw, kernel["id"])
    culled_after = time.monotonic() - last_message
    assert timeout - 0.5 <= culled_after < timeout + 5, culled_after
    await ws.close()
    assert_gone(gw, kernel)


async def test_busy_kernel_uses_the_busy_timeout(culling_server: ServerProcess) -> None:
    server = culling_server
    gw = server.client
    kernel = gw.start_kernel()
    ws = await gw.connect(kernel["id"], binary=True)
    request = message("execute_request", {"code": "import time; time.sleep(60)", "silent": False})
    await ws.send(request)
    while (await ws.recv())["header"]["msg_type"] != "execute_input":
        pass
    warning = await next_warning(ws)
    text = warning["content"]["text"]
    # the first warning is the busy one: the kernel outlived the idle timeout
    assert "because it has been busy without output for" in text
    inactive = int(text.split(" for ")[1].split(" s")[0])
    assert inactive >= BUSY_TIMEOUT - WARNING - 1  # rounding
    model = gw.get(f"/api/kernels/{kernel['id']}").json()
    assert model["execution_state"] == "busy"
    await assert_closed_by_gateway(ws)
    await wait_culled(gw, kernel["id"])
    assert_gone(gw, kernel)
    # the sleep never finished: no reply reached the client
    replies = [m for m in ws.received if m["header"]["msg_type"] == "execute_reply"]
    assert replies == []


async def test_activity_after_the_warning_keeps_the_kernel(culling_server: ServerProcess) -> None:
    server = culling_server
    gw = server.client
    kernel = gw.start_kernel()
    ws = await gw.connect(kernel["id"])
    await next_warning(ws)
    # Keep it busy with small cells for longer than the warning period: the cull the
    # warning announced must not happen.
    kept_until = time.monotonic() + WARNING + 2
    while time.monotonic() < kept_until:
        assert (await ws.execute("print('still here')")).stdout == "still here\n"
        await asyncio.sleep(0.3)
    assert gw.get(f"/api/kernels/{kernel['id']}").status_code == 200
    assert (await ws.execute("2 + 2")).result == "4"
    # left alone again, it is warned anew and culled
    await next_warning(ws)
    await assert_closed_by_gateway(ws)
    await wait_culled(gw, kernel["id"])
    assert_gone(gw, kernel)


async def test_connected_kernel_survives_without_cull_connected(start_server) -> None:
    server: ServerProcess = start_server(*CULLING)
    gw = server.client
    connected = gw.start_kernel()
    ws = await gw.connect(connected["id"])
    assert (await ws.execute("1")).status == "ok"
    alone = gw.start_kernel()
    await wait_culled(gw, alone["id"])
    assert_gone(gw, alone)
    # past another full idle timeout and warning, the connected kernel is still served
    await asyncio.sleep(IDLE_TIMEOUT + WARNING)
    assert gw.get(f"/api/kernels/{connected['id']}").json()["connections"] == 1
    assert (await ws.execute("print('alive')")).stdout == "alive\n"
    assert not any(is_cull_warning(m) for m in ws.received)
    await ws.close()
