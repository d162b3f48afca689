"""Bad input gets a clear JSON error, and the gateway stays healthy after."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time

import httpx
import psutil
import pytest
import websockets

from conftest import ServerProcess, assert_interrupts
from kernelspecs import make_test_kernelspecs
from kgclient import Gateway, message


def assert_error(r: httpx.Response, status: int, words: str = "") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"reason", "message"}, body
    assert words.lower() in body["message"].lower(), body
    return body


def assert_healthy(gateway: Gateway) -> None:
    assert gateway.get("/api").status_code == 200
    assert gateway.get("/api/kernels").status_code == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    specs = make_test_kernelspecs(str(tmp_path_factory.mktemp("specs")))
    server = ServerProcess(
        ["--default-launcher", "local", "--max-kernels", "2", "--kernelspec-dirs", specs]
    )
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def gw(server: ServerProcess) -> Gateway:
    yield server.client
    for k in server.client.get("/api/kernels").json():
        server.client.shutdown_kernel(k["id"])


def test_malformed_json(gw: Gateway) -> None:
    r = gw.post("/api/kernels", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 400, "malformed json")
    assert_error(gw.post("/api/kernels", json=["python3"]), 400, "json object")
    assert_error(gw.post("/api/kernels", json={"name": 3}), 400, "name")
    assert_healthy(gw)


def test_unknown_kernelspec(gw: Gateway) -> None:
    assert_error(gw.post("/api/kernels", json={"name": "nope"}), 404, "nope")
    assert_error(gw.get("/api/kernelspecs/nope"), 404, "nope")
    assert_error(gw.get("/kernelspecs/nope/logo-64x64.png"), 404, "nope")
    assert_error(gw.get("/kernelspecs/python3/../../etc/passwd"), 404)
    assert_error(gw.get("/kernelspecs/python3/kernel.json.nope"), 404)
    assert_healthy(gw)


def test_unknown_kernel(gw: Gateway) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for method, path in [
        ("GET", f"/api/kernels/{missing}"),
        ("DELETE", f"/api/kernels/{missing}"),
        ("POST", f"/api/kernels/{missing}/interrupt"),
        ("POST", f"/api/kernels/{missing}/restart"),
        ("GET", "/api/kernels/not-a-uuid"),
    ]:
        assert_error(gw.http.request(method, path), 404, "kernel does not exist")
    assert_error(gw.get("/api/nowhere"), 404)
    assert_healthy(gw)


async def test_unknown_kernel_websocket(server: ServerProcess) -> None:
    url = (
        server.url.replace("http", "ws")
        + "/api/kernels/00000000-0000-0000-0000-000000000000/channels"
    )
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, additional_headers={"Authorization": f"token {server.token}"})
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.body)["message"].startswith("Kernel does not exist")
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, additional_headers={"Authorization": "token wrong"})
    assert info.value.response.status_code == 401
    # A refusal is not an error of the gateway's: uvicorn's spurious "without completing
    # handshake" ERROR (Kludex/uvicorn#3138) would let any client fill the log with errors.
    logged = [line for line in server.output().splitlines() if "handshake" in line]
    assert logged == [], logged


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ("KERNEL_X=1", "object"),
        ({"KERNEL_GPUS": 1}, "must be a string"),
        ({"KERNEL_X": None}, "must be a string"),
        ({"KERNEL X": "1"}, "invalid environment variable name"),
        ({"": "1"}, "invalid environment variable name"),
        ({"KERNEL_X": "a\x00b"}, "nul"),
        ({"KERNEL_X": "x" * 100_000}, "longer than"),
        ({"KERNEL_LAUNCH_TIMEOUT": "soon"}, "kernel_launch_timeout"),
        ({"KERNEL_LAUNCH_TIMEOUT": "-5"}, "positive"),
    ],
)
def test_bad_env(gw: Gateway, env: object, words: str) -> None:
    assert_error(gw.post("/api/kernels", json={"name": "python3", "env": env}), 400, words)
    assert gw.get("/api/kernels").json() == []
    assert_healthy(gw)


def test_kernel_that_fails_to_start(gw: Gateway) -> None:
    body = assert_error(gw.post("/api/kernels", json={"name": "broken"}), 500, "failed to start")
    assert "boom: no such module foo" in body["message"]
    assert "exited with code 3" in body["message"]
    assert gw.get("/api/kernels").json() == []
    assert_healthy(gw)


@pytest.mark.parametrize("spec", ["port-taken", "iopub-taken"])
async def test_kernel_whose_port_was_taken_is_started_again(
    server: ServerProcess, gw: Gateway, spec: str
) -> None:
    kernel = gw.start_kernel(spec)
    assert (await gw.run(kernel["id"], "print(6 * 7)")).stdout == "42\n"
    assert "a port it was given was taken first" in server.output()


async def test_a_kernel_that_leaves_a_request_unread_is_nudged(
    server: ServerProcess, gw: Gateway
) -> None:
    """The kernel reads its first cell only when another shell message arrives (as ipykernel
    7 sometimes does): the cell still runs, and only its own messages reach the client."""
    kernel = gw.start_kernel("unread-shell")
    ws = await gw.connect(kernel["id"])
    out = await ws.execute("print(6 * 7)", timeout=30)
    assert out.stdout == "42\n"
    assert f"kernel {kernel['id']}: nudged" in server.output()
    after = await ws.execute("print('next')")
    assert after.stdout == "next\n"
    cells = {cell.messages[0]["parent_header"]["msg_id"] for cell in (out, after)}
    strangers = [
        (m["channel"], m["header"]["msg_type"], m["parent_header"].get("msg_type"))
        for m in ws.received
        if m["parent_header"].get("msg_id") not in cells
    ]
    # The nudge's reply is raygate's. Its busy and idle are shown, as a readiness probe's
    # are (which may also still arrive): clients leave a kernel_info_request's statuses out
    # of the kernel's state.
    assert strangers, "the nudge's statuses"
    assert set(strangers) == {("iopub", "status", "kernel_info_request")}, strangers
    await ws.close()


def test_max_kernels_counts_starts_in_flight(server: ServerProcess, gw: Gateway) -> None:
    async def start_many() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"token {server.token}"}, timeout=120
        ) as client:
            return await asyncio.gather(
                *(client.post("/api/kernels", json={"name": "python3"}) for _ in range(4))
            )

    responses = asyncio.run(start_many())
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 201, 403, 403], [r.text for r in responses]
    for r in responses:
        if r.status_code == 403:
            assert_error(r, 403, "at most 2 kernels")
    assert len(gw.get("/api/kernels").json()) == 2
    # room again once one is gone
    gw.shutdown_kernel(gw.get("/api/kernels").json()[0]["id"])
    assert gw.post("/api/kernels", json={"name": "python3"}).status_code == 201


def raw_get(port: int, path: str, authorization: str) -> tuple[int, bytes]:
    """A GET with the header exactly as jupyter_server sends it (``token `` when it has none)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Authorization": authorization})
    response = conn.getresponse()
    return response.status, response.read()


def test_empty_token_accepted_without_auth(start_server) -> None:
    server = start_server("--default-launcher", "local", token="")
    status, body = raw_get(server.port, "/api/kernels", "token ")
    assert status == 200 and body == b"[]"


def test_auth(server: ServerProcess, gw: Gateway) -> None:
    for headers in ({}, {"Authorization": "token wrong"}):
        assert_error(httpx.get(server.url + "/api/kernels", headers=headers), 401, "token")
    assert raw_get(server.port, "/api/kernels", "token ")[0] == 401
    assert httpx.get(server.url + "/api/kernels", params={"token": server.token}).status_code == 200
    assert (
        httpx.get(
            server.url + "/api/kernels", headers={"Authorization": f"Bearer {server.token}"}
        ).status_code
        == 200
    )


async def test_websocket_auth(server: ServerProcess, gw: Gateway) -> None:
    kernel = gw.start_kernel()
    url = server.url.replace("http", "ws") + f"/api/kernels/{kernel['id']}/channels"
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url)
    assert info.value.response.status_code == 401
    ws = await websockets.connect(url + f"?token={server.token}&session_id=s1")
    await ws.close()


async def test_interrupt_by_message_mode(gw: Gateway) -> None:
    kernel = gw.start_kernel("by-message")
    await assert_interrupts(gw, kernel["id"])


async def test_kernel_death_is_announced_and_recovered(gw: Gateway) -> None:
    kernel = gw.start_kernel()
    ws = await gw.connect(kernel["id"])
    await ws.execute("before = 1")
    await ws.send(message("execute_request", {"code": "import os; os._exit(1)", "silent": False}))
    states = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "restarting" not in states:
        m = await ws.recv(30)
        if m["header"]["msg_type"] == "status":
            states.append(m["content"]["execution_state"])
            if m["content"]["execution_state"] == "restarting":
                assert "died" in m["content"]["reason"]
    assert "restarting" in states
    for _ in range(100):
        if gw.get(f"/api/kernels/{kernel['id']}").json()["execution_state"] == "idle":
            break
        await asyncio.sleep(0.1)
    out = await ws.execute("'before' in globals()")
    assert out.result == "False"
    await ws.close()


async def test_kernel_that_cannot_come_back_is_dead(server: ServerProcess, gw: Gateway) -> None:
    kernel = gw.start_kernel("fragile")
    specs_dir = server.proc.args[server.proc.args.index("--kernelspec-dirs") + 1]
    a = await gw.connect(kernel["id"])
    b = await gw.connect(kernel["id"], binary=True)
    open(os.path.join(specs_dir, "no-more-starts"), "w").close()
    try:
        await a.send(message("execute_request", {"code": "import os; os._exit(1)"}))
        for ws in (a, b):
            states = []
            while "dead" not in states:
                m = await ws.recv(30)
                if m["header"]["msg_type"] == "status":
                    states.append(m["content"]["execution_state"])
            assert states[-2:] == ["restarting", "dead"]
            assert "refusing to start again" in m["content"]["reason"]
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv(10)
        assert_error(gw.get(f"/api/kernels/{kernel['id']}"), 404)
    finally:
        os.unlink(os.path.join(specs_dir, "no-more-starts"))
    assert_healthy(gw)


def test_sessions_api(gw: Gateway) -> None:
    r = gw.post(
        "/api/sessions",
        json={"path": "a.ipynb", "type": "notebook", "name": "a", "kernel": {"name": "python3"}},
    )
    assert r.status_code == 201, r.text
    session = r.json()
    assert session["kernel"]["name"] == "python3"
    assert r.headers["location"] == f"/api/sessions/{session['id']}"
    # the same path gives the same session
    assert (
        gw.post("/api/sessions", json={"path": "a.ipynb", "kernel": {"name": "python3"}}).json()[
            "id"
        ]
        == session["id"]
    )
    assert [s["id"] for s in gw.get("/api/sessions").json()] == [session["id"]]
    r = gw.http.patch(f"/api/sessions/{session['id']}", json={"path": "b.ipynb"})
    assert r.json()["path"] == "b.ipynb"
    assert_error(gw.post("/api/sessions", json={}), 400, "path")
    assert_error(
        gw.post("/api/sessions", json={"path": "c.ipynb", "kernel": {"name": "nope"}}), 404, "nope"
    )
    assert_error(gw.get("/api/sessions/missing"), 404, "session")
    assert gw.delete(f"/api/sessions/{session['id']}").status_code == 204
    assert gw.get("/api/sessions").json() == []
    assert gw.get(f"/api/kernels/{session['kernel']['id']}").status_code == 404
    assert_healthy(gw)


def test_kernel_that_never_answers_is_a_504(server: ServerProcess, gw: Gateway) -> None:
    started = time.monotonic()
    r = gw.post("/api/kernels", json={"name": "silent", "env": {"KERNEL_LAUNCH_TIMEOUT": "2"}})
    body = assert_error(r, 504, "did not answer within")
    assert time.monotonic() - started < 15
    assert "failed to start" in body["message"]
    assert gw.get("/api/kernels").json() == []
    assert "time.sleep(600)" not in " ".join(
        " ".join(p.cmdline()) for p in psutil.Process(server.proc.pid).children(recursive=True)
    )
    assert_healthy(gw)
