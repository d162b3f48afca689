"""The kernel's HMAC key never leaves the gateway: not in any API response, not on the
WebSocket, not in the gateway's log, even at debug level. Nor does the auth token reach
the log (the WebSocket library logs handshake headers at debug level)."""

from __future__ import annotations

import json
from typing import Any

from conftest import ServerProcess
from kgclient import Gateway, KernelWS

# Printed reversed, so that the kernel's own output does not carry the key to the client.
READ_KEY = """
import json
from ipykernel.connect import get_connection_file
with open(get_connection_file()) as f:
    key = json.load(f)["key"]
assert key.encode() == get_ipython().kernel.session.key
print(key[::-1])
"""


def traffic(ws: KernelWS) -> str:
    """Everything a WebSocket client received, as text (binary buffers included)."""
    return "\n".join(json.dumps(m, default=repr) for m in ws.received)


async def exercise_websocket(gw: Gateway, kernel_id: str, binary: bool) -> tuple[str, str]:
    """Run cells, ask kernel_info and comm_info, and read the key; returns (key, traffic)."""
    ws = await gw.connect(kernel_id, binary=binary)
    try:
        assert (await ws.execute("print('hello')")).stdout == "hello\n"
        await ws.request("kernel_info_request", {})
        await ws.request("comm_info_request", {})
        await ws.request("kernel_info_request", {}, channel="control")
        err = await ws.execute("1/0")
        assert err.error["ename"] == "ZeroDivisionError"
        out = await ws.execute(READ_KEY)
        assert out.status == "ok", out.error
        key = out.stdout.strip()[::-1]
        assert len(key) >= 32
        return key, traffic(ws)
    finally:
        await ws.close()


def api_responses(gw: Gateway, kernel_id: str, session_id: str) -> list[str]:
    """Every endpoint that describes kernels, sessions or the gateway, as clients see it."""
    responses: list[Any] = []
    for path in (
        "/api",
        "/api/kernelspecs",
        "/api/kernelspecs/python3",
        "/api/kernels",
        f"/api/kernels/{kernel_id}",
        "/api/sessions",
        f"/api/sessions/{session_id}",
        "/api/status",
        "/metrics",
        "/api/swagger.json",
        "/api/health",
        "/api/ready",
        "/status",
        "/api/kernels/00000000-0000-0000-0000-000000000000",
    ):
        r = gw.get(path)
        assert r.status_code in (200, 404), (path, r.status_code)
        responses.append(r)
    r = gw.http.patch(f"/api/sessions/{session_id}", json={"path": "renamed.ipynb"})
    assert r.status_code == 200
    responses.append(r)
    for path in (f"/api/kernels/{kernel_id}/interrupt", f"/api/kernels/{kernel_id}/restart"):
        r = gw.post(path)
        assert r.status_code in (200, 204), (path, r.text)
        responses.append(r)
    return [f"{r.headers}\n{r.text}" for r in responses]


async def test_hmac_key_is_never_shown(start_server) -> None:
    server: ServerProcess = start_server("--default-launcher", "local", "--log-level", "debug")
    gw = server.client
    r = gw.post("/api/kernels", json={"name": "python3"})
    assert r.status_code == 201
    seen = [r.text]
    kernel_id = r.json()["id"]
    r = gw.post(
        "/api/sessions",
        json={
            "path": "notebook.ipynb",
            "type": "notebook",
            "name": "",
            "kernel": {"id": kernel_id},
        },
    )
    assert r.status_code == 201, r.text
    seen.append(r.text)
    session_id = r.json()["id"]

    key, legacy = await exercise_websocket(gw, kernel_id, binary=False)
    _, v1 = await exercise_websocket(gw, kernel_id, binary=True)
    seen += [legacy, v1]
    seen += api_responses(gw, kernel_id, session_id)
    # after the restart, the kernel still answers (and the key is still kept to itself)
    key_again, after_restart = await exercise_websocket(gw, kernel_id, binary=False)
    assert key_again == key
    seen.append(after_restart)
    assert gw.delete(f"/api/sessions/{session_id}").status_code == 204
    server.stop()
    log = server.output()
    assert "DEBUG" in log  # the gateway really logged at debug level

    for text in seen:
        assert key not in text
    assert key not in log
    assert server.token not in log
    assert "authorization: [redacted]" in log  # the handshake's headers were logged
    assert key[::-1] in legacy  # the kernel's own output did reach the client
