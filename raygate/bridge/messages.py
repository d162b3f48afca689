"""The Jupyter wire protocol over ZMQ: signing, splitting and building messages.

Messages are kept as their serialized parts (header, parent_header, metadata, content)
so the bridge can forward them without re-encoding; only the small header parts are
ever parsed. Large parts received from a kernel stay in ZMQ's own buffers (memoryviews
of zero-copy frames) until they are spliced into a WebSocket frame.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"
ZERO_COPY_BYTES = 64 * 1024
"""Frames at least this large are kept as views of ZMQ's buffer instead of copied."""

Part = bytes | memoryview
"""A serialized message part: bytes, or a view of a large frame ZMQ received."""

_DIGESTS = {"hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512, "hmac-md5": hashlib.md5}


class MessageError(ValueError):
    """A message that does not follow the wire protocol."""


class Signer:
    """HMAC signatures of message parts with a kernel's key (empty key: no signing)."""

    def __init__(self, key: bytes, scheme: str = "hmac-sha256") -> None:
        digest = _DIGESTS.get(scheme)
        if digest is None:
            raise ValueError(f"unsupported signature scheme {scheme!r}")
        self._prototype = hmac.new(key, digestmod=digest) if key else None

    def sign(self, parts: Sequence[Part]) -> bytes:
        if self._prototype is None:
            return b""
        h = self._prototype.copy()
        for part in parts:
            h.update(part)
        return h.hexdigest().encode()

    def verify(self, signature: Part, parts: Sequence[Part]) -> bool:
        if self._prototype is None:
            return True
        return hmac.compare_digest(signature, self.sign(parts))


@dataclass
class Message:
    """One message as serialized parts, plus the parsed header the bridge routes by."""

    channel: str
    parts: Sequence[Part]
    """header, parent_header, metadata, content: JSON bytes exactly as received."""
    buffers: Sequence[Part] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    _parent: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def parent(self) -> dict[str, Any]:
        """The parsed parent header ({} when it is not a JSON object), parsed once."""
        if self._parent is None:
            try:
                value = json.loads(bytes(self.parts[1]))
            except ValueError:
                value = None
            self._parent = value if isinstance(value, dict) else {}
        return self._parent

    def parent_msg_id(self) -> str:
        return str(self.parent.get("msg_id", ""))

    def parent_session(self) -> str:
        return str(self.parent.get("session", ""))

    def content(self) -> dict[str, Any]:
        value = json.loads(bytes(self.parts[3]))
        return value if isinstance(value, dict) else {}


def pack(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def parse_header(raw: Part) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
    except ValueError as exc:
        raise MessageError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise MessageError("header is not a JSON object")
    return header


def zmq_parts(frames: Sequence[Any]) -> list[Part]:
    """Parts of a message received with ``copy=False``: small frames as bytes, large ones
    as views of ZMQ's buffer (no copy of a large output until it is framed for a client)."""
    return [f.buffer if len(f) >= ZERO_COPY_BYTES else f.bytes for f in frames]


def from_zmq(channel: str, frames: list[Part], signer: Signer) -> Message:
    """Split and verify a multipart message received from a kernel."""
    try:
        start = frames.index(DELIMITER) + 1
    except ValueError as exc:
        raise MessageError("no <IDS|MSG> delimiter") from exc
    if len(frames) < start + 5:
        raise MessageError("too few message parts")
    signature = frames[start]
    parts = frames[start + 1 : start + 5]
    if not signer.verify(signature, parts):
        raise MessageError("invalid HMAC signature")
    return Message(channel, parts, frames[start + 5 :], parse_header(parts[0]))


def to_zmq(message: Message, signer: Signer) -> list[Part]:
    """Frames to send a message to a kernel's shell, control or stdin socket."""
    return [DELIMITER, signer.sign(message.parts), *message.parts, *message.buffers]


def utcnow_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_message(
    channel: str,
    msg_type: str,
    content: dict[str, Any],
    session: str,
    parent: dict[str, Any] | None = None,
) -> Message:
    """A message raygate itself sends (kernel_info probes, shutdown, status notices)."""
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": "raygate",
        "session": session,
        "date": utcnow_iso(),
        "version": PROTOCOL_VERSION,
    }
    parts = [pack(header), pack(parent or {}), b"{}", pack(content)]
    return Message(channel, parts, [], header)
