"""One WebSocket client of a kernel, with a bounded outbound buffer.

Frames for the client queue here and a sender task writes them; the WebSocket's own
flow control makes that task wait for a slow client. When the buffer is full the bridge
waits too (backpressure) instead of growing memory; a client that stays stuck past
``stall_timeout`` is disconnected so it cannot hold the kernel's other clients.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable

from starlette.websockets import WebSocket

from .messages import Message
from .websocket_wire import to_legacy, to_v1

log = logging.getLogger("raygate.bridge")


class Connection:
    def __init__(
        self,
        websocket: WebSocket,
        session_id: str,
        binary_protocol: bool,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        stall_timeout: float = 60.0,
    ) -> None:
        self.websocket = websocket
        self.id = uuid.uuid4().hex
        self.session_id = session_id
        self.binary_protocol = binary_protocol
        self.max_buffer_bytes = max_buffer_bytes
        self.stall_timeout = stall_timeout
        self.client_sessions: set[str] = {session_id} if session_id else set()
        """The ``?session_id=`` and the ``header.session`` values seen from this client:
        a reply whose requester is gone goes to a client of the same session (a reconnect)."""
        self._frames: deque[tuple[str | bytes, int, Message | None]] = deque()
        self._in_flight: Message | None = None
        self._buffered = 0
        self._has_frames = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._sender: asyncio.Task | None = None
        self.closed = False
        self.on_closed: Callable[[Connection], None] | None = None
        self.on_sent: Callable[[Message], None] | None = None
        """Called with each message once the WebSocket has taken its frame (the bridge
        records delivery watermarks with it)."""

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_loop(), name=f"ws-send-{self.id}")

    def frame(self, message: Message, cache: dict[bool, str | bytes]) -> str | bytes:
        """This client's framing of ``message``; ``cache`` shares it among clients."""
        frame = cache.get(self.binary_protocol)
        if frame is None:
            frame = to_v1(message) if self.binary_protocol else to_legacy(message)
            cache[self.binary_protocol] = frame
        return frame

    def push_now(self, frame: str | bytes, message: Message | None = None) -> None:
        """Queue a frame without waiting for room (output replayed on a reconnect)."""
        size = len(frame)
        self._frames.append((frame, size, message))
        self._buffered += size
        if self._buffered >= self.max_buffer_bytes:
            self._has_room.clear()
        self._has_frames.set()

    async def put(self, frame: str | bytes, message: Message | None = None) -> None:
        """Queue a frame; waits while the buffer is full."""
        if self.closed:
            return
        if self._buffered >= self.max_buffer_bytes:
            try:
                await asyncio.wait_for(self._has_room.wait(), self.stall_timeout)
            except TimeoutError:
                log.warning(
                    "client %s made no progress for %.0fs with %d bytes queued; disconnecting",
                    self.id,
                    self.stall_timeout,
                    self._buffered,
                )
                await self.close(1013, "client too slow")
                return
            if self.closed:
                return
        self.push_now(frame, message)

    async def _send_loop(self) -> None:
        try:
            while True:
                await self._has_frames.wait()
                while self._frames:
                    frame, size, message = self._frames.popleft()
                    self._in_flight = message
                    if isinstance(frame, str):
                        await self.websocket.send({"type": "websocket.send", "text": frame})
                    else:
                        await self.websocket.send({"type": "websocket.send", "bytes": frame})
                    self._in_flight = None
                    if message is not None and self.on_sent is not None:
                        self.on_sent(message)
                    self._buffered -= size
                    if self._buffered < self.max_buffer_bytes:
                        self._has_room.set()
                self._has_frames.clear()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away under us
            log.debug("client %s send failed: %s", self.id, exc)
            self.closed = True
            self._has_room.set()
            if self.on_closed:
                self.on_closed(self)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until queued frames are written (used before a deliberate close)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._frames and not self.closed:
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.01)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self._has_room.set()
        if self._sender is not None:
            self._sender.cancel()
        try:
            await self.websocket.close(code, reason)
        except Exception:  # already closed by the peer
            pass
        if self.on_closed:
            self.on_closed(self)

    def halt(self) -> list[Message]:
        """Stop sending at once; returns the messages never written to the socket.

        A send cancelled here was still waiting for the socket to take it, so the frame in
        flight counts as unsent too.
        """
        self.closed = True
        self._has_room.set()
        if self._sender is not None:
            self._sender.cancel()
        unsent = [self._in_flight] if self._in_flight is not None else []
        unsent += [message for _, _, message in self._frames if message is not None]
        self._in_flight = None
        self._frames.clear()
        self._buffered = 0
        return unsent

    async def stop(self) -> None:
        """Stop the sender after the client disconnected."""
        self.closed = True
        self._has_room.set()
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except (asyncio.CancelledError, Exception):
                pass
