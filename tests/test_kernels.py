"""Kernels through the HTTP API and the WebSocket, against a real gateway and ipykernel."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime

import pytest

from conftest import interrupt_running_sleep
from kgclient import Gateway, message

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_api_info(gateway: Gateway) -> None:
    r = gateway.get("/api")
    assert r.status_code == 200
    assert set(r.json()) >= {"version", "gateway_version"}


def test_kernelspecs(gateway: Gateway) -> None:
    body = gateway.get("/api/kernelspecs").json()
    assert body["default"] == "python3"
    spec = body["kernelspecs"]["python3"]
    assert set(spec) >= {"name", "spec", "resources"}
    assert spec["spec"]["language"] == "python"
    logo = spec["resources"]["logo-64x64"]
    r = gateway.get(logo)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert gateway.get("/api/kernelspecs/python3").json()["name"] == "python3"
    # jupyter_server's gateway client with KERNEL_USERNAME set asks this way
    assert (
        gateway.get("/api/kernelspecs", params={"user": "bob/python3"}).json()["name"] == "python3"
    )
    assert gateway.get("/api/kernelspecs", params={"user": "bob"}).json()["default"] == "python3"


def test_kernel_lifecycle_model(gateway: Gateway) -> None:
    r = gateway.post("/api/kernels", json={"name": "python3"})
    assert r.status_code == 201
    model = r.json()
    kernel_id = model["id"]
    assert str(uuid.UUID(kernel_id)) == kernel_id
    assert r.headers["location"] == f"/api/kernels/{kernel_id}"
    assert TIMESTAMP.match(model["last_activity"])
    datetime.strptime(model["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert model["execution_state"] in ("idle", "busy", "starting")
    assert model["connections"] == 0
    assert any(k["id"] == kernel_id for k in gateway.get("/api/kernels").json())
    assert gateway.get(f"/api/kernels/{kernel_id}").json()["id"] == kernel_id
    assert gateway.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert gateway.get(f"/api/kernels/{kernel_id}").status_code == 404
    assert all(k["id"] != kernel_id for k in gateway.get("/api/kernels").json())


async def test_execute_legacy_and_v1(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    for binary in (False, True):
        ws = await gateway.connect(kernel["id"], binary=binary)
        out = await ws.execute("x = 6 * 7\nprint('hello')\nx")
        assert out.status == "ok"
        assert out.stdout == "hello\n"
        assert out.result == "42"
        await ws.close()


async def test_binary_buffers_reach_client(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    code = (
        "from ipykernel.comm import Comm\n"
        "c = Comm(target_name='t', data={})\n"
        "c.send(data={'n': 1}, buffers=[b'\\x00\\xffraw'])\n"
    )
    for binary in (False, True):
        ws = await gateway.connect(kernel["id"], binary=binary)
        await ws.execute(code)
        comm_msgs = [m for m in ws.received if m["header"]["msg_type"] == "comm_msg"]
        assert comm_msgs, [m["header"]["msg_type"] for m in ws.received]
        assert bytes(comm_msgs[-1]["buffers"][0]) == b"\x00\xffraw"
        await ws.close()


async def test_model_counts_connections_and_activity(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    before = gateway.get(f"/api/kernels/{kernel['id']}").json()["last_activity"]
    a = await gateway.connect(kernel["id"])
    b = await gateway.connect(kernel["id"], binary=True)
    await a.execute("1")
    model = gateway.get(f"/api/kernels/{kernel['id']}").json()
    assert model["connections"] == 2
    assert model["last_activity"] > before
    await a.close()
    await b.close()
    for _ in range(50):
        if gateway.get(f"/api/kernels/{kernel['id']}").json()["connections"] == 0:
            break
        await asyncio.sleep(0.1)
    assert gateway.get(f"/api/kernels/{kernel['id']}").json()["connections"] == 0


async def test_two_clients_see_iopub_but_only_their_replies(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    a = await gateway.connect(kernel["id"])
    b = await gateway.connect(kernel["id"], binary=True)
    out_a = await a.execute("print('from a')")
    assert out_a.stdout == "from a\n"
    # b saw a's output on iopub ...
    seen = []
    while True:
        m = await b.recv(10)
        seen.append(m)
        if (
            m["header"]["msg_type"] == "status"
            and m["content"]["execution_state"] == "idle"
            and any(s["header"]["msg_type"] == "stream" for s in seen)
        ):
            break
    assert any(
        m["header"]["msg_type"] == "stream" and m["content"]["text"] == "from a\n" for m in seen
    )
    # ... but not a's execute_reply
    assert not any(m["header"]["msg_type"] == "execute_reply" for m in seen)
    out_b = await b.execute("print('from b')")
    assert out_b.stdout == "from b\n"
    await a.close()
    await b.close()


async def test_stdin_round_trip(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    ws = await gateway.connect(kernel["id"])
    out = await ws.execute("name = input('who? ')\nprint('hi', name)", stdin="ada")
    assert out.stdout.endswith("hi ada\n")
    await ws.close()


async def test_interrupt_keeps_state(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    ws = await gateway.connect(kernel["id"])
    await ws.execute("kept = 'yes'")
    await interrupt_running_sleep(gateway, ws, kernel["id"])
    again = await ws.execute("kept")
    assert again.result == "'yes'"
    await ws.close()


async def test_restart_clears_state_and_notifies(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    ws = await gateway.connect(kernel["id"])
    await ws.execute("gone = 1")
    r = gateway.post(f"/api/kernels/{kernel['id']}/restart")
    assert r.status_code == 200
    assert r.json()["id"] == kernel["id"]
    states = [
        m["content"]["execution_state"] for m in ws.received if m["header"]["msg_type"] == "status"
    ]
    while "starting" not in states:
        m = await ws.recv(10)
        if m["header"]["msg_type"] == "status":
            states.append(m["content"]["execution_state"])
    out = await ws.execute("'gone' in globals()")
    assert out.result == "False"
    # `restarting` means "died, restarting automatically" to JupyterLab (a modal error):
    # never sent for a restart the client asked for
    assert "restarting" not in [
        m["content"].get("execution_state")
        for m in ws.received
        if m["header"]["msg_type"] == "status"
    ]
    await ws.close()


async def test_kernel_env_reaches_kernel(gateway: Gateway) -> None:
    kernel = gateway.start_kernel(
        env={"KERNEL_USERNAME": "ada", "KERNEL_EXTRA": "x y", "NOT_ALLOWED": "z"}
    )
    assert kernel["username"] == "ada"
    ws = await gateway.connect(kernel["id"])
    out = await ws.execute(
        "import os\nprint(os.environ['KERNEL_USERNAME'], os.environ['KERNEL_EXTRA'],"
        " os.environ.get('NOT_ALLOWED'), os.environ['KERNEL_ID'])"
    )
    assert out.stdout.split() == ["ada", "x", "y", "None", kernel["id"]]
    await ws.close()


async def test_large_output_arrives_whole(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    for binary in (False, True):
        ws = await gateway.connect(kernel["id"], binary=binary)
        out = await ws.execute("print('x' * (20 * 1024 * 1024 - 1))", timeout=120)
        assert len(out.stdout) == 20 * 1024 * 1024
        assert set(out.stdout[:-1]) == {"x"}
        await ws.close()


async def test_interrupt_request_on_control_stops_running_code(gateway: Gateway) -> None:
    """A client's own ``interrupt_request`` reaches the kernel through the bridge (kernels
    whose spec says ``interrupt_mode: message`` are tested in test_errors and test_ray)."""
    kernel = gateway.start_kernel()
    ws = await gateway.connect(kernel["id"])
    printed = asyncio.Event()
    code = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"
    task = asyncio.create_task(ws.execute(code, printed=printed))
    await asyncio.wait_for(printed.wait(), 20)
    control = await gateway.connect(kernel["id"])
    reply = await control.request("interrupt_request", {}, channel="control")
    assert reply["header"]["msg_type"] == "interrupt_reply"
    assert reply["content"]["status"] == "ok"
    out = await asyncio.wait_for(task, 20)
    assert out.status == "error" and out.ename == "KeyboardInterrupt"
    await control.close()
    await ws.close()


@pytest.mark.parametrize("binary", [False, True])
async def test_malformed_ws_messages_keep_connection(gateway: Gateway, binary: bool) -> None:
    kernel = gateway.start_kernel()
    ws = await gateway.connect(kernel["id"], binary=binary)
    await ws.ws.send("not json")
    await ws.ws.send('{"channel": "shell"}')
    await ws.ws.send('{"channel": "iopub", "header": {"msg_type": "x"}}')
    await ws.ws.send(b"\x00\x01")
    await ws.ws.send(b"\xff" * 64)
    bad = message("execute_request", {"code": "1"})
    bad["channel"] = "nowhere"
    await ws.ws.send(__import__("json").dumps(bad))
    out = await ws.execute("1 + 1")
    assert out.result == "2"
    await ws.close()


async def test_slow_client_gets_every_byte(start_server) -> None:
    """A client that stops reading holds output back (bounded), and loses none of it."""
    server = start_server("--default-launcher", "local", "--ws-buffer-bytes", "1048576")
    gw = server.client
    kernel = gw.start_kernel()
    ws = await gw.connect(kernel["id"], max_queue=1)
    request = message("execute_request", {"code": "for i in range(8): print(str(i) * 2**20)"})
    await ws.send(request)
    await asyncio.sleep(3)  # the client reads nothing meanwhile
    text = ""
    while True:
        m = await ws.recv(60)
        if m["parent_header"].get("msg_id") != request["header"]["msg_id"]:
            continue  # e.g. the status of raygate's own readiness probe, late under load
        if m["header"]["msg_type"] == "stream":
            text += m["content"]["text"]
        if m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            break
    assert text == "".join(str(i) * 2**20 + "\n" for i in range(8))
    await ws.close()


def test_server_pings_idle_websockets(start_server) -> None:
    """An idle client that never pings still hears from the server."""
    import base64
    import os
    import socket

    server = start_server("--default-launcher", "local", "--ws-ping-interval", "0.5")
    kernel = server.client.start_kernel()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/kernels/{kernel['id']}/channels?token={server.token} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101")
    data = data.split(b"\r\n\r\n", 1)[1]

    def take(n: int) -> bytes:
        nonlocal data
        while len(data) < n:
            data += sock.recv(65536)
        chunk, data = data[:n], data[n:]
        return chunk

    opcodes = []
    while 0x9 not in opcodes:  # the socket's timeout ends this if no ping comes
        first, second = take(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(take(2), "big")
        elif length == 127:
            length = int.from_bytes(take(8), "big")
        take(length)
        opcodes.append(first & 0x0F)
    sock.close()


async def test_reply_reaches_reconnected_session(gateway: Gateway) -> None:
    """A client that reconnects with the same session_id gets the reply to its request."""
    kernel = gateway.start_kernel()
    first = await gateway.connect(kernel["id"], session="notebook-1")
    request = message("execute_request", {"code": "import time; time.sleep(1.5); 'late'"})
    await first.send(request)
    await first.close()
    second = await gateway.connect(kernel["id"], session="notebook-1")
    while True:
        m = await second.recv(30)
        if m["header"]["msg_type"] == "execute_reply":
            break
    assert m["parent_header"]["msg_id"] == request["header"]["msg_id"]
    assert m["content"]["status"] == "ok"
    await second.close()
