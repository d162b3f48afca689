"""A minimal Kernel Gateway API client: HTTP with httpx, the channels WebSocket with websockets.

It uses only what every Kernel Gateway-compatible server offers (raygate, Jupyter Kernel
Gateway, Jupyter Enterprise Gateway), so one client measures them all alike. Messages are
not signed: the gateway signs what it forwards to the kernel.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.typing import Subprotocol

try:  # the JSON library jupyter_client's Session prefers, so clients compare fairly
    from orjson import loads
except ImportError:
    # json's loads takes what orjson's does here (str or bytes); only its signature differs
    from json import loads  # type: ignore[assignment]

V1 = Subprotocol("v1.kernel.websocket.jupyter.org")
FRAMINGS = ("legacy", "v1")


class BenchError(Exception):
    """A failure the operator sees as one line: unreachable server, refused token, ..."""


@dataclass
class Outcome:
    """What one request to a kernel brought back, up to its reply and its idle status."""

    status: str = ""
    reply: dict[str, Any] = field(default_factory=dict)
    stdout: list[str] = field(default_factory=list)
    stream_bytes: int = 0
    """UTF-8 bytes of every stream message (stdout and stderr) the request caused."""
    stream_messages: int = 0

    def take_output(self, msg: dict[str, Any]) -> bool:
        """Count an iopub message of this request; True once it is the idle status."""
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            text = msg["content"]["text"]
            self.stream_bytes += len(text.encode())
            self.stream_messages += 1
            if msg["content"]["name"] == "stdout":
                self.stdout.append(text)
        return kind == "status" and msg["content"]["execution_state"] == "idle"


def execute_content(code: str) -> dict[str, Any]:
    return {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }


def new_message(
    msg_type: str, content: dict[str, Any], session: str, channel: str = "shell"
) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "raygate-bench",
            "session": session,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": channel,
    }


# -- the two WebSocket framings ------------------------------------------------------


def encode_v1(msg: dict[str, Any]) -> bytes:
    chunks = [msg["channel"].encode()] + [
        json.dumps(msg[key]).encode() for key in ("header", "parent_header", "metadata", "content")
    ]
    offsets = [8 * (len(chunks) + 2)]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(chunks)


def decode_v1(data: bytes) -> dict[str, Any]:
    (count,) = struct.unpack_from("<Q", data)
    offsets = struct.unpack_from(f"<{count}Q", data, 8)
    chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count - 1)]
    msg: dict[str, Any] = {"channel": chunks[0].decode()}
    for key, chunk in zip(("header", "parent_header", "metadata", "content"), chunks[1:5]):
        msg[key] = loads(chunk)
    return msg


def decode_legacy_binary(data: bytes) -> dict[str, Any]:
    """A legacy binary frame (a message with buffers): only its JSON part is needed here."""
    (count,) = struct.unpack_from("!I", data)
    offsets = list(struct.unpack_from(f"!{count}I", data, 4)) + [len(data)]
    return loads(data[offsets[0] : offsets[1]])


# -- one WebSocket on a kernel's channels ---------------------------------------------


class KernelSocket:
    """One channels WebSocket; the framing is what the server agreed to."""

    def __init__(self, ws: Any, session: str) -> None:
        self.ws = ws
        self.session = session
        self.binary = ws.subprotocol == V1

    @property
    def framing(self) -> str:
        return "v1" if self.binary else "legacy"

    async def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        msg = new_message(msg_type, content, self.session, channel)
        await self.ws.send(encode_v1(msg) if self.binary else json.dumps(msg))
        return msg["header"]["msg_id"]

    async def recv(self) -> dict[str, Any]:
        data = await self.ws.recv()
        if isinstance(data, str):
            return loads(data)
        return decode_v1(data) if self.binary else decode_legacy_binary(data)

    async def until_done(self, msg_id: str) -> Outcome:
        """Read until the shell reply to ``msg_id`` and its idle status have both arrived."""
        out = Outcome()
        replied = idle = False
        while not (replied and idle):
            msg = await self.recv()
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["channel"] == "shell":
                out.reply = msg["content"]
                out.status = msg["content"].get("status", "")
                replied = True
            elif out.take_output(msg):
                idle = True
        return out

    async def execute(self, code: str) -> Outcome:
        return await self.until_done(await self.send("execute_request", execute_content(code)))

    async def kernel_info(self) -> dict[str, Any]:
        """The kernel_info_reply, asking again each second: a server may not pass on a request
        that arrives while it is still connecting the kernel's sockets."""
        asked: set[str] = set()
        while True:
            asked.add(await self.send("kernel_info_request", {}))
            try:
                async with asyncio.timeout(1.0):
                    while True:
                        msg = await self.recv()
                        if (
                            msg["channel"] == "shell"
                            and msg["header"]["msg_type"] == "kernel_info_reply"
                            and msg["parent_header"].get("msg_id") in asked
                        ):
                            return msg["content"]
            except TimeoutError:
                continue

    async def close(self) -> None:
        await self.ws.close()


# -- the HTTP API ----------------------------------------------------------------------


def _error_text(r: httpx.Response) -> str:
    """The server's own words: the ``message`` of a JSON error, else the start of the body."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:200]
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return r.text.strip()[:200]


class GatewayClient:
    """The Kernel Gateway HTTP API of one server, and WebSockets to its kernels."""

    def __init__(
        self, url: str, token: str = "", framing: str = "legacy", timeout: float = 120.0
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}")
        self.url = url.rstrip("/")
        self.token = token
        self.framing = framing
        self.timeout = timeout
        # No header without a token: h11 (httpx) refuses the trailing space of "token ".
        self.headers = {"Authorization": f"token {token}"} if token else {}
        if not self.url.startswith(("http://", "https://")):
            raise BenchError(f"bad URL {url!r}: it must start with http:// or https://")
        try:
            self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout)
        except (httpx.InvalidURL, ValueError) as exc:
            raise BenchError(f"bad URL {url!r}: {exc}") from None

    async def close(self) -> None:
        await self.http.aclose()

    async def request(
        self, method: str, path: str, expect: Iterable[int] = (200,), **kw: Any
    ) -> httpx.Response:
        """``method path``; anything but an ``expect``ed status is a :class:`BenchError`."""
        try:
            r = await self.http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise BenchError(
                f"{self.url}: {method} {path} got no answer within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise BenchError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        if r.status_code in expect:
            return r
        if r.status_code in (401, 403) and not path.startswith("/api/kernels/"):
            raise BenchError(
                f"{self.url} refused the token ({r.status_code} {r.reason_phrase}: "
                f"{_error_text(r)}); check --token"
            )
        raise BenchError(
            f"{self.url}: {method} {path} answered {r.status_code} {r.reason_phrase}: "
            f"{_error_text(r)}"
        )

    async def describe(self, kernelspec: str) -> dict[str, Any]:
        """Check the server speaks the API, takes the token and has ``kernelspec``; returns
        ``GET /api`` (the server's version)."""
        info = await self.request("GET", "/api", expect=(200, 401, 403))
        try:
            about = info.json() if info.status_code == 200 else {}
        except ValueError:
            raise BenchError(
                f"{self.url} does not look like a Kernel Gateway API server (GET /api is not JSON)"
            ) from None
        r = await self.request("GET", "/api/kernelspecs")
        try:
            specs = r.json()["kernelspecs"]
        except (ValueError, KeyError, TypeError):
            raise BenchError(
                f"{self.url} does not look like a Kernel Gateway API server "
                "(GET /api/kernelspecs has no kernelspecs)"
            ) from None
        if kernelspec not in specs:
            raise BenchError(
                f"{self.url} has no kernelspec {kernelspec!r} (it has: {', '.join(sorted(specs))})"
            )
        return about if isinstance(about, dict) else {}

    async def start_kernel(self, kernelspec: str) -> str:
        r = await self.request("POST", "/api/kernels", expect=(200, 201), json={"name": kernelspec})
        return r.json()["id"]

    async def delete_kernel(self, kernel_id: str) -> None:
        await self.request("DELETE", f"/api/kernels/{kernel_id}", expect=(200, 204, 404))

    async def interrupt(self, kernel_id: str) -> None:
        await self.request("POST", f"/api/kernels/{kernel_id}/interrupt", expect=(200, 204))

    async def restart(self, kernel_id: str) -> None:
        await self.request("POST", f"/api/kernels/{kernel_id}/restart", expect=(200, 201, 204))

    async def metrics(self) -> str | None:
        """The Prometheus text of ``/metrics``, or None where the server offers none."""
        try:
            r = await self.http.get("/metrics")
        except httpx.HTTPError:
            return None
        return r.text if r.status_code == 200 else None

    async def connect(self, kernel_id: str) -> KernelSocket:
        session = uuid.uuid4().hex
        url = self.url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        try:
            # No compression and no pings, as jupyter_server's gateway client.
            ws = await websockets.connect(
                f"{url}?session_id={session}",
                additional_headers=self.headers,
                subprotocols=[V1] if self.framing == "v1" else None,
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=self.timeout,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise BenchError(f"{url}: WebSocket failed: {exc}") from None
        return KernelSocket(ws, session)
