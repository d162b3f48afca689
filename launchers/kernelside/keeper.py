"""The output keeper: the kernel's recent iopub messages, kept next to the kernel.

A gateway that is SIGKILLed loses what it held in memory: output produced while it was
down, and output buffered for disconnected sessions. The keeper runs beside the kernel
(in the Ray kernel actor and in the remote bootstrap), subscribed to the kernel's iopub
on the same host, and keeps the last ``max_bytes`` of messages as the raw frames the
kernel sent, oldest first, each known by its header's ``msg_id``. A restarted gateway
asks it for the messages after the last one each session was handed
(:meth:`OutputKeeper.after`) and replays them.

It is a thread with a SUB socket of its own, so it works the same inside a threaded Ray
actor and beside the bootstrap's event loop, and it outlives kernel restarts: the socket
reconnects by itself to a kernel restarted on the same port, and :meth:`retarget` moves
it when the port or the kernel's Curve key changes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Sequence

import zmq

log = logging.getLogger("raygate.keeper")

KEEP_BYTES = 32 * 1024 * 1024
"""Default bound of the kept output, in bytes of frames."""
DELIMITER = b"<IDS|MSG>"
_POLL_MS = 200


def message_id(frames: Sequence[bytes]) -> str:
    """The ``msg_id`` in the header of a multipart iopub message ("" if it has none)."""
    try:
        header = json.loads(frames[list(frames).index(DELIMITER) + 2])
    except (ValueError, IndexError):
        return ""
    return str(header.get("msg_id", "")) if isinstance(header, dict) else ""


class OutputKeeper:
    """Keeps a kernel's latest iopub messages; see the module docstring."""

    def __init__(
        self, url: str, max_bytes: int = KEEP_BYTES, curve_serverkey: str | bytes | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        """Messages let go to stay within ``max_bytes``."""
        self._kept: deque[tuple[str, list[bytes], int]] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._target = (url, _key(curve_serverkey))
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._thread = threading.Thread(target=self._run, name="output-keeper", daemon=True)
        self._thread.start()

    def retarget(self, url: str, curve_serverkey: str | bytes | None = None) -> None:
        """Follow the kernel to a new iopub address or key (after a restart); kept output
        stays."""
        with self._lock:
            self._target = (url, _key(curve_serverkey))

    def close(self) -> None:
        """Stop the keeper; its thread ends its ZMQ context as it exits. Destroying the
        context here, while the thread may still use its socket, could hang for good."""
        self._stop.set()
        self._thread.join(2.0)
        if self._thread.is_alive():
            log.warning("output keeper still stopping after 2 s; left to end by itself")

    # -- reading ---------------------------------------------------------------------

    def after(self, ids: Sequence[str], max_bytes: int = 0) -> tuple[list[list[bytes]], bool, int]:
        """The messages after the oldest of ``ids`` still kept, or all kept when none of
        them is (a watermark older than the bound, or none given).

        With ``max_bytes``, at most that many bytes of frames (a page; a message larger
        than a whole page is skipped and counted). Returns ``(messages, complete,
        skipped)``: ``complete`` is False when a page ended before the newest message.
        """
        wanted = set(ids)
        with self._lock:
            kept = list(self._kept)
        start = 0
        for i, (msg_id, _, _) in enumerate(kept):
            if msg_id in wanted:
                start = i + 1
                break
        out: list[list[bytes]] = []
        size = skipped = 0
        for _, frames, nbytes in kept[start:]:
            if max_bytes and nbytes > max_bytes:
                skipped += 1
                continue
            if max_bytes and size + nbytes > max_bytes:
                return out, False, skipped
            out.append(frames)
            size += nbytes
        return out, True, skipped

    # -- the thread ------------------------------------------------------------------

    def _keep(self, frames: list[bytes]) -> None:
        msg_id = message_id(frames)
        if not msg_id:
            return
        nbytes = sum(map(len, frames))
        with self._lock:
            self._kept.append((msg_id, frames, nbytes))
            self._size += nbytes
            while self._size > self.max_bytes and self._kept:
                self._size -= self._kept.popleft()[2]
                self.dropped += 1

    def _open(self, url: str, serverkey: bytes | None) -> zmq.Socket:
        sock = self._context.socket(zmq.SUB)
        sock.linger = 0
        sock.setsockopt(zmq.RCVHWM, 0)  # the kernel's PUB must never drop for us
        if serverkey:
            # The kernel is a Curve server: connect as a client with keys of our own.
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey = serverkey
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(url)
        return sock

    def _run(self) -> None:
        sock: zmq.Socket | None = None
        current = None
        try:
            while not self._stop.is_set():
                with self._lock:
                    target = self._target
                if target != current:
                    if sock is not None:
                        sock.close(linger=0)
                    sock = self._open(*target)
                    current = target
                assert sock is not None
                if not sock.poll(_POLL_MS):
                    continue
                while True:  # everything queued, then look at the stop flag again
                    try:
                        self._keep(sock.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
        except zmq.ZMQError as exc:
            if not self._stop.is_set():
                log.warning("output keeper stopped: %s", exc)
        finally:
            if sock is not None:
                sock.close(linger=0)
            self._context.term()


def _key(key: str | bytes | None) -> bytes | None:
    if not key:
        return None
    return key.encode() if isinstance(key, str) else bytes(key)
