"""A small Kernel Gateway client for the tests: HTTP with httpx, WebSockets with websockets.

It speaks both WebSocket framings, so tests can check each the way real clients use them.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

TLS = ssl.create_default_context()
"""The one TLS context of a test process's HTTP clients: httpx makes a new one per client
otherwise, reading the CA bundle (45 ms of CPU here), and pollers made a client per poll."""

V1 = "v1.kernel.websocket.jupyter.org"


def message(msg_type: str, content: dict, channel: str = "shell", session: str = "") -> dict:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "test",
            "session": session or uuid.uuid4().hex,
            "date": "2026-01-01T00:00:00.000000Z",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
        "buffers": [],
    }


def encode_v1(msg: dict, buffers: list[bytes] = ()) -> bytes:
    parts = [
        json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")
    ]
    chunks = [msg["channel"].encode(), *parts, *buffers]
    offsets = [8 * (len(chunks) + 2)]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(chunks)


def decode_v1(data: bytes) -> dict:
    (count,) = struct.unpack_from("<Q", data)
    offsets = struct.unpack_from(f"<{count}Q", data, 8)
    chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count - 1)]
    msg = {"channel": chunks[0].decode()}
    for key, chunk in zip(("header", "parent_header", "metadata", "content"), chunks[1:5]):
        msg[key] = json.loads(chunk)
    msg["buffers"] = chunks[5:]
    return msg


def decode_legacy_binary(data: bytes) -> dict:
    (count,) = struct.unpack_from("!I", data)
    offsets = list(struct.unpack_from(f"!{count}I", data, 4)) + [len(data)]
    msg = json.loads(data[offsets[0] : offsets[1]])
    msg["buffers"] = [data[offsets[i] : offsets[i + 1]] for i in range(1, count)]
    return msg


@dataclass
class ExecResult:
    status: str = ""
    stdout: str = ""
    stderr: str = ""
    result: Any = None
    error: dict | None = None
    reply: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)

    @property
    def ename(self) -> str:
        """The exception's name as the ``execute_reply`` gives it. ipykernel sets it even
        where IPython failed to format the traceback and so sent no ``error`` message
        (IPython #13598: now and then, a KeyboardInterrupt that lands where the frame has
        no line number)."""
        return self.reply.get("ename", "")


class KernelWS:
    """One WebSocket to a kernel's channels."""

    def __init__(self, ws: Any, binary: bool, session: str) -> None:
        self.ws = ws
        self.binary = binary
        self.session = session
        self.received: list[dict] = []

    async def send(self, msg: dict) -> None:
        msg["header"]["session"] = self.session
        await self.ws.send(encode_v1(msg) if self.binary else json.dumps(msg))

    async def recv(self, timeout: float = 30) -> dict:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(data, str):
            msg = json.loads(data)
        elif self.binary:
            msg = decode_v1(data)
        else:
            msg = decode_legacy_binary(data)
        self.received.append(msg)
        return msg

    async def request(
        self, msg_type: str, content: dict, channel: str = "shell", timeout: float = 30
    ) -> dict:
        msg = message(msg_type, content, channel)
        await self.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            reply = await self.recv(max(0.1, deadline - time.monotonic()))
            if (
                reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]
                and reply["channel"] == channel
            ):
                return reply

    async def execute(
        self,
        code: str,
        timeout: float = 60,
        stdin: str | None = None,
        printed: asyncio.Event | None = None,
    ) -> ExecResult:
        """Run ``code`` and collect what it sends; ``printed`` is set on its first stdout
        (a test that interrupts code that prints, then sleeps, waits for it: the code is
        then surely running)."""
        msg = message(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": stdin is not None,
                "stop_on_error": True,
            },
        )
        await self.send(msg)
        msg_id = msg["header"]["msg_id"]
        out = ExecResult()
        got_reply = got_idle = False
        deadline = time.monotonic() + timeout
        while not (got_reply and got_idle):
            try:
                m = await self.recv(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                # What the cell printed so far says where it hung.
                raise TimeoutError(
                    f"no answer within {timeout:g}s; output so far: "
                    f"stdout {out.stdout[-2000:]!r}, stderr {out.stderr[-2000:]!r}"
                ) from None
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            out.messages.append(m)
            t = m["header"]["msg_type"]
            if t == "stream":
                if m["content"]["name"] == "stdout":
                    out.stdout += m["content"]["text"]
                    if printed is not None:
                        printed.set()
                else:
                    out.stderr += m["content"]["text"]
            elif t == "execute_result":
                out.result = m["content"]["data"].get("text/plain")
            elif t == "error":
                out.error = m["content"]
            elif t == "input_request" and stdin is not None:
                reply = message("input_reply", {"value": stdin}, channel="stdin")
                reply["parent_header"] = m["header"]
                await self.send(reply)
            elif t == "execute_reply":
                out.reply = m["content"]
                out.status = m["content"]["status"]
                got_reply = True
            elif t == "status" and m["content"]["execution_state"] == "idle":
                got_idle = True
        return out

    async def close(self) -> None:
        await self.ws.close()


class Gateway:
    """HTTP access to a running gateway."""

    def __init__(self, url: str, token: str = "") -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {token}"}, timeout=120, verify=TLS
        )

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.post(path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.delete(path, **kw)

    def start_kernel(self, name: str = "python3", env: dict | None = None) -> dict:
        body: dict[str, Any] = {"name": name}
        if env is not None:
            body["env"] = env
        r = self.post("/api/kernels", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def shutdown_kernel(self, kernel_id: str) -> None:
        r = self.delete(f"/api/kernels/{kernel_id}")
        assert r.status_code in (204, 404), r.text

    async def run(self, kernel_id: str, code: str, timeout: float = 60) -> ExecResult:
        """Execute ``code`` on a connection of its own to the kernel."""
        ws = await self.connect(kernel_id)
        try:
            return await ws.execute(code, timeout=timeout)
        finally:
            await ws.close()

    async def connect(
        self, kernel_id: str, binary: bool = False, session: str | None = None, **kw: Any
    ) -> KernelWS:
        session = session or uuid.uuid4().hex
        ws_url = (
            self.url.replace("http", "ws", 1)
            + f"/api/kernels/{kernel_id}/channels?session_id={session}"
        )
        headers = {"Authorization": f"token {self.token}"}
        ws = await websockets.connect(
            ws_url,
            additional_headers=headers,
            subprotocols=[V1] if binary else None,
            max_size=None,
            compression=None,  # as jupyter_server's gateway client: no permessage-deflate
            **kw,
        )
        return KernelWS(ws, binary, session)
