"""``/api/kernels/{id}/channels``: a WebSocket bridged to the kernel's ZMQ sockets."""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket

from raygate.bridge.connection import Connection
from raygate.bridge.messages import MessageError
from raygate.bridge.websocket_wire import (
    V1_SUBPROTOCOL,
    from_legacy_binary,
    from_legacy_text,
    from_v1,
)
from raygate.errors import APIError, deny_websocket

from .common import config, find_kernel

log = logging.getLogger("raygate.bridge")


async def kernel_channels(websocket: WebSocket) -> None:
    try:
        kernel = await find_kernel(websocket)
    except APIError as exc:
        await deny_websocket(websocket, exc.status, exc.message)
        return
    binary = V1_SUBPROTOCOL in websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=V1_SUBPROTOCOL if binary else None)
    client = Connection(
        websocket,
        session_id=websocket.query_params.get("session_id", ""),
        binary_protocol=binary,
        max_buffer_bytes=config(websocket).ws_buffer_bytes,
    )
    channels = kernel.channels
    channels.attach(client)
    try:
        while True:
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                break
            text, data = event.get("text"), event.get("bytes")
            try:
                if text is not None:
                    message = from_legacy_text(text)
                elif binary:
                    message = from_v1(data or b"")
                else:
                    message = from_legacy_binary(data or b"")
                await channels.send(message, client)
            except MessageError as exc:
                log.warning("kernel %s: ignored a malformed client message: %s", kernel.id, exc)
    finally:
        channels.detach(client)
        await client.stop()
