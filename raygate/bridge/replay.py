"""Output kept for sessions whose clients went away, replayed when they come back.

A WebSocket drops (a laptop sleeps, a proxy restarts, jupyter_server's gateway client
reconnects) while a cell is still printing. What the kernel sends for that session in the
meantime — iopub output and the replies to its requests — is kept here, bounded in bytes,
and handed to the next connection with the same ``session_id``, in order and once.
Frames still queued for the old connection when it closed are kept too, so a reconnect
neither loses nor repeats them.

A gateway that is killed loses this memory; the kernel side keeps its recent output too
(:mod:`raygate.launchers.kernelside.keeper`), and the next gateway seeds each session it finds in
the delivery watermarks (:mod:`.watermarks`) with what came after its watermark.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque

from .messages import Message, new_message

log = logging.getLogger("raygate.bridge")


def message_size(message: Message) -> int:
    return sum(len(p) for p in message.parts) + sum(len(b) for b in message.buffers)


class ReplayBuffer:
    """One parked session's messages, oldest dropped first past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.messages: deque[tuple[Message, int]] = deque()
        self.size = 0
        self.dropped_messages = 0
        self.dropped_bytes = 0
        self.parked_at = time.monotonic()

    def add(self, message: Message) -> None:
        size = message_size(message)
        self.messages.append((message, size))
        self.size += size
        while self.size > self.max_bytes and self.messages:
            _, old = self.messages.popleft()
            self.size -= old
            self.dropped_messages += 1
            self.dropped_bytes += old

    def drop_notice(self, session: str) -> Message | None:
        """A stderr stream message that says what the bound cost, shown in the cell whose
        output was cut (the parent of the first message kept)."""
        if not self.dropped_messages:
            return None
        parent = self.messages[0][0].parent if self.messages else {}
        text = (
            f"[raygate] {self.dropped_messages} message(s), {self.dropped_bytes} bytes, of "
            "output produced while this notebook was disconnected did not fit the replay "
            f"buffer ({self.max_bytes} bytes) and were dropped; what follows is the rest.\n"
        )
        return new_message("iopub", "stream", {"name": "stderr", "text": text}, session, parent)


class SessionReplay:
    """The parked sessions of one kernel."""

    def __init__(self, max_bytes: int, max_sessions: int = 16, ttl: float = 3600.0) -> None:
        self.max_bytes = max_bytes
        self.max_sessions = max_sessions
        self.ttl = ttl
        self.parked: OrderedDict[str, ReplayBuffer] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def park(self, session_id: str, unsent: list[Message]) -> None:
        """Start keeping output for ``session_id``; ``unsent`` were never written to it."""
        if not self.enabled or not session_id:
            return
        buffer = ReplayBuffer(self.max_bytes)
        for message in unsent:
            buffer.add(message)
        self.parked[session_id] = buffer
        self.parked.move_to_end(session_id)
        self._expire()

    def _expire(self) -> None:
        now = time.monotonic()
        for session_id in list(self.parked):
            if now - self.parked[session_id].parked_at > self.ttl:
                del self.parked[session_id]
        while len(self.parked) > self.max_sessions:
            self.parked.popitem(last=False)

    def keep_broadcast(self, message: Message) -> None:
        for buffer in self.parked.values():
            buffer.add(message)

    def keep_reply(self, message: Message) -> bool:
        """Keep a reply for a parked session; False when its session is not parked."""
        buffer = self.parked.get(message.parent_session())
        if buffer is None:
            return False
        buffer.add(message)
        return True

    def seed(self, session_id: str, kept: list[Message], watermark: str) -> bool:
        """Put the kernel's kept messages after ``watermark`` ahead of what is parked for
        ``session_id`` (after a gateway restart: what the session missed while no gateway
        ran), each message once. ``kept`` must reach up to what was parked (the caller
        checks); a watermark the kernel side no longer keeps takes all of ``kept``.
        Returns False when that watermark was not found (some output may be lost)."""
        buffer = self.parked.get(session_id)
        if buffer is None:
            return True
        ids = [m.msg_id for m in kept]
        found = not watermark or watermark in ids
        start = ids.index(watermark) + 1 if watermark and found else 0
        seeded = ReplayBuffer(buffer.max_bytes)
        seeded.parked_at = buffer.parked_at
        for message in kept[start:]:
            seeded.add(message)
        known = set(ids)
        for message, _ in buffer.messages:
            if message.msg_id not in known:
                seeded.add(message)
        seeded.dropped_messages += buffer.dropped_messages
        seeded.dropped_bytes += buffer.dropped_bytes
        self.parked[session_id] = seeded
        return found

    def resume(self, session_id: str, kernel_session: str) -> list[Message]:
        """The messages to send, in order, to a new connection of ``session_id``."""
        buffer = self.parked.pop(session_id, None)
        if buffer is None:
            return []
        messages = [m for m, _ in buffer.messages]
        notice = buffer.drop_notice(kernel_session)
        if notice is not None:
            log.warning(
                "session %s: %d message(s), %d bytes, past the replay bound were dropped",
                session_id,
                buffer.dropped_messages,
                buffer.dropped_bytes,
            )
            messages.insert(0, notice)
        return messages
