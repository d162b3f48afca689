"""Delivery watermarks: per kernel and session, the last iopub message a client was handed.

A gateway that is SIGKILLed cannot say what its clients missed; the next one reads it
here. Each gateway process keeps, per kernel, one small file under
``<state dir>/watermarks/<kernel id>/`` that it maps into memory and holds an exclusive
``flock`` on for as long as it serves the kernel. Writes to a shared mapping land in the
page cache at once and survive the death of the process without an ``fsync`` (not a
crash of the machine, which the kernels would not survive either), so updating a
watermark costs a few microseconds per message: cheap enough for every message.

A file whose lock can be taken belongs to a gateway that is gone: the gateway that next
serves the kernel takes its sessions over (:meth:`Watermarks.take_orphans`). Replicas
that serve the same kernel at once each write their own file.

Layout: a 16-byte header (magic, slot count), then fixed slots of :data:`SLOT_BYTES`:
state (free, connected, parked), the session id, when it was parked, and two copies of
the watermark, each with a sequence number and a CRC, written alternately: a write cut
short by the kill leaves the other, one message older (at worst one message repeated,
none lost).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import time
import uuid
import zlib
from dataclasses import dataclass

log = logging.getLogger("raygate.bridge")

MAGIC = b"RGWM0001"
SLOTS = 64
HEADER_BYTES = 16
SLOT_BYTES = 512
FILE_BYTES = HEADER_BYTES + SLOTS * SLOT_BYTES

FREE, CONNECTED, PARKED = 0, 1, 2
SESSION_BYTES = 128
ID_BYTES = 160
# slot: state u8 | session length u8 | pad u16 | parked_at f64 | pad u32 | session | 2 marks
_SLOT_HEAD = struct.Struct("<BBHdI")
_SESSION_AT = _SLOT_HEAD.size  # 16
# mark: crc u32 | sequence u64 | id length u16 | id
_MARK_HEAD = struct.Struct("<IQH")
_MARK_BYTES = _MARK_HEAD.size + ID_BYTES
_MARKS_AT = (_SESSION_AT + SESSION_BYTES, _SESSION_AT + SESSION_BYTES + _MARK_BYTES)
assert _MARKS_AT[1] + _MARK_BYTES <= SLOT_BYTES


@dataclass
class Recorded:
    """A session found in the file of a gateway that is gone."""

    session: str
    watermark: str
    """The msg_id of the last iopub message handed to it ("" if none was)."""
    parked_at: float
    """When its last client left (wall clock), or when it was found, if it was connected."""


def _read_mark(buf: bytes | mmap.mmap, at: int) -> tuple[int, str] | None:
    crc, seq, size = _MARK_HEAD.unpack_from(buf, at)
    if size > ID_BYTES:
        return None
    body = bytes(buf[at + 4 : at + _MARK_HEAD.size + size])
    if zlib.crc32(body) != crc or seq == 0:
        return None
    return seq, body[_MARK_HEAD.size - 4 :].decode(errors="replace")


def _read_slots(buf: bytes | mmap.mmap) -> list[tuple[int, int, str, float, str]]:
    """(slot, state, session, parked_at, watermark) of each used slot."""
    out = []
    for slot in range(SLOTS):
        at = HEADER_BYTES + slot * SLOT_BYTES
        state, length, _, parked_at, _ = _SLOT_HEAD.unpack_from(buf, at)
        if state not in (CONNECTED, PARKED) or not 0 < length <= SESSION_BYTES:
            continue
        session = bytes(buf[at + _SESSION_AT : at + _SESSION_AT + length]).decode(errors="replace")
        marks = [m for m in (_read_mark(buf, at + off) for off in _MARKS_AT) if m is not None]
        watermark = max(marks)[1] if marks else ""
        out.append((slot, state, session, parked_at, watermark))
    return out


class Watermarks:
    """This gateway's watermarks for one kernel; see the module docstring."""

    def __init__(self, root: str, kernel_id: str) -> None:
        self.directory = os.path.join(root, "watermarks", kernel_id)
        self.path = os.path.join(self.directory, f"{uuid.uuid4().hex}.wm")
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._slots: dict[str, int] = {}
        self._seq = [0] * SLOTS
        self._touched = [0.0] * SLOTS
        self._failed = False

    def open(self) -> bool:
        """Create and lock this gateway's file (done on first need, so kernels no client
        uses have none); False, and no watermarks, if that fails."""
        if self._map is not None or self._failed:
            return self._map is not None
        fd = -1
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, FILE_BYTES)
            self._map = mmap.mmap(fd, FILE_BYTES)
        except OSError as exc:
            log.warning("no delivery watermarks in %s: %s", self.directory, exc)
            if fd >= 0:
                os.close(fd)
            self._failed = True
            return False
        self._fd = fd
        self._map[0:HEADER_BYTES] = MAGIC + struct.pack("<Q", SLOTS)
        return True

    @property
    def active(self) -> bool:
        return self._map is not None

    # -- the sessions this gateway serves ---------------------------------------------

    def _slot(self, session: str) -> int | None:
        slot = self._slots.get(session)
        if slot is not None or not self.open():
            return slot
        name = session.encode()
        if not 0 < len(name) <= SESSION_BYTES:
            return None
        used = set(self._slots.values())
        free = [s for s in range(SLOTS) if s not in used]
        if free:
            slot = free[0]
        else:  # full: the session that has been parked longest gives way
            parked = [s for n, s in self._slots.items() if self._state(s) == PARKED]
            if not parked:
                return None
            slot = min(parked, key=lambda s: self._touched[s])
            del self._slots[next(n for n, s in self._slots.items() if s == slot)]
        at = HEADER_BYTES + slot * SLOT_BYTES
        assert self._map is not None  # open() answered True above
        self._map[at : at + SLOT_BYTES] = bytes(SLOT_BYTES)
        self._map[at + _SESSION_AT : at + _SESSION_AT + len(name)] = name
        _SLOT_HEAD.pack_into(self._map, at, FREE, len(name), 0, 0.0, 0)
        self._seq[slot] = 0
        self._slots[session] = slot
        return slot

    def _state(self, slot: int) -> int:
        assert self._map is not None
        return self._map[HEADER_BYTES + slot * SLOT_BYTES]

    def _set_state(self, slot: int, state: int, parked_at: float = 0.0) -> None:
        assert self._map is not None
        at = HEADER_BYTES + slot * SLOT_BYTES
        length = self._map[at + 1]
        _SLOT_HEAD.pack_into(self._map, at, state, length, 0, parked_at, 0)
        self._touched[slot] = time.monotonic()

    def connected(self, session: str, watermark: str | None) -> int | None:
        """A client of ``session`` is served; a new session starts at ``watermark`` (the
        last message the kernel sent before it came). Returns its slot for :meth:`mark`."""
        known = session in self._slots
        slot = self._slot(session)
        if slot is None:
            return None
        if not known and watermark:
            self.mark(slot, watermark)
        self._set_state(slot, CONNECTED)
        return slot

    def parked(self, session: str, watermark: str | None = None) -> None:
        """The last client of ``session`` left (its watermark stops here), or a session of
        a gateway that is gone was taken over at ``watermark``."""
        known = session in self._slots
        slot = self._slot(session)
        if slot is None:
            return
        if not known and watermark:
            self.mark(slot, watermark)
        self._set_state(slot, PARKED, time.time())

    def mark(self, slot: int, msg_id: str) -> None:
        """``msg_id`` was handed to a client of the session in ``slot`` (hot path)."""
        if self._map is None:
            return
        data = msg_id.encode()
        if len(data) > ID_BYTES:
            return
        seq = self._seq[slot] = self._seq[slot] + 1
        at = HEADER_BYTES + slot * SLOT_BYTES + _MARKS_AT[seq & 1]
        body = struct.pack("<QH", seq, len(data)) + data
        # Body first, CRC last: a write cut short leaves a copy that fails its check.
        self._map[at + 4 : at + 4 + len(body)] = body
        struct.pack_into("<I", self._map, at, zlib.crc32(body))

    # -- other gateways' files ------------------------------------------------------------

    def take_orphans(self, ttl: float) -> list[Recorded]:
        """Sessions recorded by gateways that are gone (their files are unlocked), parked
        within ``ttl`` seconds; they are copied into this gateway's file, theirs removed."""
        found: dict[str, Recorded] = {}
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return []
        now = time.time()
        for name in names:
            path = os.path.join(self.directory, name)
            if path == self.path or not name.endswith(".wm"):
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # a live gateway's
            try:
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
                if len(data) == FILE_BYTES and data.startswith(MAGIC):
                    for _, state, session, parked_at, watermark in _read_slots(data):
                        when = parked_at if state == PARKED else now
                        if now - when > ttl:
                            continue
                        old = found.get(session)
                        if old is None or when > old.parked_at:
                            found[session] = Recorded(session, watermark, when)
                os.unlink(path)
            finally:
                os.close(fd)  # releases the lock
        for record in found.values():
            self.parked(record.session, record.watermark)
        return list(found.values())

    # -- the end ------------------------------------------------------------------------------

    def close(self, remove: bool) -> None:
        """Let go of the file: kept for the next gateway, or removed with the kernel."""
        if self._map is None:
            return
        self._map.close()
        self._map = None
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            try:
                os.rmdir(self.directory)  # only once no other gateway has a file there
            except OSError:
                pass
        os.close(self._fd)  # releases the lock
        self._fd = -1
