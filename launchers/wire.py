"""The wire protocol both sides of the remote-kernel channel speak: the gateway (its
report listener, :mod:`raygate.launchers.remote.listener`, and control requests) and the
kernel-side bootstrap (:mod:`raygate.launchers.kernelside.bootstrap`).

It is an authenticated, encrypted channel between the gateway and a remote kernel bootstrap.

Two conversations use it, both over plain TCP and both sealed with the kernel's own
secret (32 random bytes made by the gateway for that kernel, never on a command line):

* the **report**: the bootstrap connects to the gateway's report listener and
  tells it where the kernel it started listens (connection info, control port, pid);
* **control**: the gateway connects to the bootstrap's control endpoint to interrupt,
  restart, stop or check the kernel (:func:`control_request`).

Every conversation is one request and one reply on a fresh connection:

1. the side that accepted the connection sends a *hello* frame: ``b"RGH1"`` and a
   16-byte random challenge;
2. the caller sends a sealed frame whose associated data binds the purpose, the kernel
   id and that challenge;
3. the acceptor answers with a sealed frame bound the same way (its own purpose).

Frames are a 4-byte big-endian length and a body of at most :data:`MAX_FRAME` bytes. A
sealed body is ``version (1) | len(kernel_id) (1) | kernel_id | nonce (12) | AES-256-GCM
ciphertext and tag``; the plaintext is JSON with a ``ts`` (seconds since the epoch).

Replay protection: a recorded frame is useless on any other connection, because the
challenge it is bound to is fresh per connection; besides, frames older or newer than
:data:`MAX_SKEW` seconds are refused, and the listener accepts one report per launch.
Anything that fails to authenticate is dropped without an answer (fail closed).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
HELLO = b"RGH1"
CHALLENGE_BYTES = 16
NONCE_BYTES = 12
SECRET_BYTES = 32
MAX_FRAME = 1 << 20
MAX_SKEW = 300.0
"""Seconds a sealed message's timestamp may differ from the receiver's clock."""

REPORT = "report"
REPORT_ACK = "report-ack"
CONTROL = "control"
CONTROL_REPLY = "control-reply"


class ChannelError(Exception):
    """A frame was malformed, forged, tampered with, replayed or too old."""


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def encode_secret(secret: bytes) -> str:
    return base64.b64encode(secret).decode()


def decode_secret(text: str) -> bytes:
    try:
        secret = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ChannelError("the kernel secret is not valid base64") from exc
    if len(secret) != SECRET_BYTES:
        raise ChannelError(f"the kernel secret must be {SECRET_BYTES} bytes")
    return secret


def _associated_data(purpose: str, kernel_id: str, challenge: bytes) -> bytes:
    return b"raygate\0" + purpose.encode() + b"\0" + kernel_id.encode() + b"\0" + challenge


def seal(
    secret: bytes,
    kernel_id: str,
    purpose: str,
    challenge: bytes,
    payload: dict[str, Any],
    now: float | None = None,
) -> bytes:
    """Encrypt and authenticate ``payload`` for one conversation."""
    kid = kernel_id.encode()
    if len(kid) > 255:
        raise ValueError("kernel id too long")
    body = json.dumps({**payload, "ts": time.time() if now is None else now}).encode()
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(secret).encrypt(nonce, body, _associated_data(purpose, kernel_id, challenge))
    return bytes([VERSION, len(kid)]) + kid + nonce + sealed


def sealed_kernel_id(frame: bytes) -> str:
    """The kernel id a sealed frame claims (unauthenticated until :func:`unseal`)."""
    if len(frame) < 2 or frame[0] != VERSION:
        raise ChannelError("not a raygate frame of a version this gateway speaks")
    n = frame[1]
    if len(frame) < 2 + n + NONCE_BYTES + 16:
        raise ChannelError("frame too short")
    try:
        return frame[2 : 2 + n].decode("ascii")
    except UnicodeDecodeError as exc:
        raise ChannelError("bad kernel id in frame") from exc


def unseal(
    secret: bytes,
    kernel_id: str,
    purpose: str,
    challenge: bytes,
    frame: bytes,
    max_skew: float = MAX_SKEW,
    now: float | None = None,
) -> dict[str, Any]:
    """Check and decrypt a frame made by :func:`seal`; raise :class:`ChannelError` if bad."""
    if sealed_kernel_id(frame) != kernel_id:
        raise ChannelError("frame is for another kernel")
    start = 2 + frame[1]
    nonce = frame[start : start + NONCE_BYTES]
    try:
        body = AESGCM(secret).decrypt(
            nonce, frame[start + NONCE_BYTES :], _associated_data(purpose, kernel_id, challenge)
        )
    except InvalidTag:
        raise ChannelError(
            "frame failed authentication (wrong key, tampered or replayed)"
        ) from None
    try:
        payload = json.loads(body)
        ts = float(payload["ts"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ChannelError("authenticated frame has no valid body") from exc
    if not isinstance(payload, dict):
        raise ChannelError("authenticated frame has no valid body")
    skew = abs((time.time() if now is None else now) - ts)
    if skew > max_skew:
        raise ChannelError(f"frame is {skew:.0f}s away from this clock (limit {max_skew:.0f}s)")
    return payload


# -- framing ------------------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    try:
        (size,) = struct.unpack("!I", await reader.readexactly(4))
        if size > MAX_FRAME:
            raise ChannelError(f"frame of {size} bytes is over the limit")
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise ChannelError("connection closed mid-conversation") from exc


def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(struct.pack("!I", len(data)) + data)


async def send_hello(writer: asyncio.StreamWriter) -> bytes:
    challenge = os.urandom(CHALLENGE_BYTES)
    write_frame(writer, HELLO + challenge)
    await writer.drain()
    return challenge


async def read_hello(reader: asyncio.StreamReader) -> bytes:
    frame = await read_frame(reader)
    if len(frame) != len(HELLO) + CHALLENGE_BYTES or not frame.startswith(HELLO):
        raise ChannelError("the peer did not greet with a raygate hello")
    return frame[len(HELLO) :]


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, ConnectionError):
        pass


async def converse(
    host: str,
    port: int,
    secret: bytes,
    kernel_id: str,
    purpose: str,
    reply_purpose: str,
    payload: dict[str, Any],
    timeout: float,
) -> dict[str, Any]:
    """Connect, send one sealed request, return the checked, decrypted reply.

    Raises :class:`OSError` when the peer cannot be reached, :class:`ChannelError` when it
    does not answer properly (a peer that rejects our request just closes), and
    :class:`asyncio.TimeoutError` after ``timeout`` seconds.
    """

    async def run() -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            challenge = await read_hello(reader)
            write_frame(writer, seal(secret, kernel_id, purpose, challenge, payload))
            await writer.drain()
            frame = await read_frame(reader)
            return unseal(secret, kernel_id, reply_purpose, challenge, frame)
        finally:
            await close_writer(writer)

    return await asyncio.wait_for(run(), timeout)


async def control_request(
    host: str, port: int, secret: bytes, kernel_id: str, op: str, timeout: float = 10.0, **args: Any
) -> dict[str, Any]:
    """One request to a bootstrap's control endpoint (``status``, ``signal``, ...)."""
    return await converse(
        host, port, secret, kernel_id, CONTROL, CONTROL_REPLY, {"op": op, **args}, timeout
    )
