"""The two WebSocket framings of Jupyter messages.

* legacy (no subprotocol): a JSON text frame per message; messages with binary buffers
  go as a binary frame of big-endian 32-bit offsets, the JSON, then the buffers.
* ``v1.kernel.websocket.jupyter.org``: a binary frame of little-endian 64-bit offsets,
  the channel name, then the serialized parts and buffers, as they came from ZMQ.

Kernel-to-client frames are spliced from the serialized parts; nothing is re-encoded.
"""

from __future__ import annotations

import json
import struct

from .messages import Message, MessageError, parse_header

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
CHANNELS = frozenset({"shell", "iopub", "stdin", "control"})


def _legacy_json(message: Message, with_buffers_key: bool) -> bytes:
    header, parent, metadata, content = message.parts
    pieces = [
        b'{"header":',
        header,
        b',"msg_id":',
        json.dumps(message.msg_id).encode(),
        b',"msg_type":',
        json.dumps(message.msg_type).encode(),
        b',"parent_header":',
        parent,
        b',"metadata":',
        metadata,
        b',"content":',
        content,
        b',"channel":"',
        message.channel.encode(),
        b'"',
    ]
    if with_buffers_key:
        pieces.append(b',"buffers":[]')
    pieces.append(b"}")
    return b"".join(pieces)


def to_legacy(message: Message) -> str | bytes:
    """A legacy frame: ``str`` for a text frame, ``bytes`` for a binary one."""
    if not message.buffers:
        data = _legacy_json(message, with_buffers_key=True)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace")
    chunks = [_legacy_json(message, with_buffers_key=False), *message.buffers]
    count = len(chunks)
    offsets = [4 * (count + 1)]
    for chunk in chunks[:-1]:
        offsets.append(offsets[-1] + len(chunk))
    return b"".join([struct.pack(f"!{count + 1}I", count, *offsets), *chunks])


def to_v1(message: Message) -> bytes:
    chunks = [message.channel.encode(), *message.parts, *message.buffers]
    offsets = [8 * (len(chunks) + 2)]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    # One join: the frame is the only copy of a large output made here.
    return b"".join([struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets), *chunks])


def _check_channel(channel: object) -> str:
    if channel not in CHANNELS or channel == "iopub":
        raise MessageError(f"cannot send to channel {channel!r}")
    return str(channel)


def _from_dict(msg: object, buffers: list[bytes]) -> Message:
    if not isinstance(msg, dict):
        raise MessageError("message is not a JSON object")
    channel = _check_channel(msg.get("channel"))
    header = msg.get("header")
    if not isinstance(header, dict) or not header.get("msg_type"):
        raise MessageError("message has no header with a msg_type")
    parts = []
    for key in ("header", "parent_header", "metadata", "content"):
        value = msg.get(key) or {}
        if not isinstance(value, dict):
            raise MessageError(f"{key} is not a JSON object")
        parts.append(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    return Message(channel, parts, buffers, header)


def from_legacy_text(text: str) -> Message:
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from exc
    return _from_dict(msg, [])


def from_legacy_binary(data: bytes) -> Message:
    try:
        (count,) = struct.unpack_from("!I", data)
        offsets = list(struct.unpack_from(f"!{count}I", data, 4))
    except struct.error as exc:
        raise MessageError("truncated binary message") from exc
    if count < 1 or offsets != sorted(offsets) or offsets[-1] > len(data):
        raise MessageError("bad offsets in binary message")
    offsets.append(len(data))
    chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count)]
    try:
        msg = json.loads(chunks[0])
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from exc
    return _from_dict(msg, chunks[1:])


def from_v1(data: bytes) -> Message:
    try:
        (count,) = struct.unpack_from("<Q", data)
        if not 6 <= count <= 10_000:
            raise MessageError("bad offset count")
        offsets = struct.unpack_from(f"<{count}Q", data, 8)
    except struct.error as exc:
        raise MessageError("truncated v1 message") from exc
    if list(offsets) != sorted(offsets) or offsets[-1] > len(data) or offsets[0] < 8 * (count + 1):
        raise MessageError("bad offsets in v1 message")
    chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count - 1)]
    try:
        channel = _check_channel(chunks[0].decode())
    except UnicodeDecodeError as exc:
        raise MessageError("channel name is not UTF-8") from exc
    parts = chunks[1:5]
    header = parse_header(parts[0])
    if not header.get("msg_type"):
        raise MessageError("header has no msg_type")
    return Message(channel, parts, chunks[5:], header)
