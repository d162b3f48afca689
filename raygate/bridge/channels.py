"""One kernel's ZMQ sockets, shared by all its WebSocket clients.

iopub goes to every client. Replies on shell, control and stdin go to the client whose
request they answer (by the parent's msg_id, else by the client's session), so several
clients can use one kernel at once without seeing each other's replies.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import zmq
import zmq.asyncio

from raygate.launchers.base import ConnectionInfo

from .connection import Connection
from .messages import Message, MessageError, Signer, from_zmq, new_message, to_zmq, zmq_parts
from .replay import SessionReplay
from .status import next_execution_state, shown_to_clients
from .watermarks import Watermarks

log = logging.getLogger("raygate.bridge")

_ROUTED_CHANNELS = ("shell", "control", "stdin")
_CHANNELS = (*_ROUTED_CHANNELS, "iopub")
_MAX_PENDING = 10_000
_READ_BATCH = 32
NUDGE_AFTER = 1.0
"""Seconds an idle kernel may show nothing for a client's shell request before it is
nudged (:meth:`KernelChannels._nudge`)."""
_RECOVERY_TRIES = 20
_RECOVERY_PAUSE = 0.25


class KernelNotReady(Exception):
    pass


class KernelChannels:
    def __init__(
        self,
        kernel_id: str,
        connection: ConnectionInfo,
        context: zmq.asyncio.Context,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        replay_bytes: int = 32 * 1024 * 1024,
        watermarks: Watermarks | None = None,
    ) -> None:
        self.kernel_id = kernel_id
        self.replay = SessionReplay(replay_bytes)
        self.watermarks = watermarks
        """Per session, the last kernel iopub message handed to its WebSocket, kept where a
        gateway started after this one is killed finds it (kernels that outlive us only)."""
        self._last_iopub = ""
        """msg_id of the kernel's latest iopub message: where a new session starts."""
        self._recovering: dict[str, str] | None = None
        """While output is being recovered: the sessions a gone gateway served, and their
        watermarks; their clients wait in ``_held``."""
        self._held: list[Connection] = []
        self._live: list[str] = []
        """msg_ids of the kernel's iopub messages received while recovering."""
        self.context = context
        self.max_buffer_bytes = max_buffer_bytes
        self.session = uuid.uuid4().hex
        self.execution_state = "starting"
        self.last_activity = datetime.now(UTC)
        self.clients: dict[str, Connection] = {}
        # Per channel, for /metrics (read when scraped; plain ints keep the hot path cheap).
        self.channel_messages_in = dict.fromkeys(_CHANNELS, 0)
        self.channel_messages_out = dict.fromkeys(_CHANNELS, 0)
        self.bytes_in = dict.fromkeys(_CHANNELS, 0)
        self.bytes_out = dict.fromkeys(_CHANNELS, 0)
        self.clients_opened = 0
        self._connection = connection
        self._signer = Signer(connection.key, connection.signature_scheme)
        self._sockets: dict[str, zmq.asyncio.Socket] = {}
        self._readers: list[asyncio.Task] = []
        self._requester: OrderedDict[str, str] = OrderedDict()
        self._internal: dict[str, asyncio.Future[Message]] = {}
        self._iopub_seen = asyncio.Event()
        self._probes: set[str] = set()
        """msg_ids of readiness probes: only iopub traffic *they* caused proves that our
        subscription reaches the kernel that answers (not output of a kernel just replaced)."""
        self._notices: set[asyncio.Future] = set()
        self._unanswered: dict[str, asyncio.TimerHandle] = {}
        """Clients' shell requests the kernel has not yet shown a sign of reading (see
        :meth:`_nudge`), each with its pending nudge."""
        self._last_execute: dict[str, Any] | None = None
        """Header of the last execute_request a client sent: raygate's notices about the
        kernel's death answer it, so they show in the cell that was running."""
        self._send_locks = {name: asyncio.Lock() for name in _ROUTED_CHANNELS}
        self._restarting = False
        """Between :meth:`expect_restart` and the new kernel's readiness: the gateway
        announces the restart's ``starting`` itself, so the kernel's own is not shown."""
        self.iopub_watchers: dict[str, Callable[[Message], None]] = {}
        """parent msg_id -> a callback given each iopub message that request caused, for
        raygate's own executions (notebook-http); set and removed by their caller."""

    # -- sockets -------------------------------------------------------------

    def open(self) -> None:
        identity = f"raygate-{uuid.uuid4().hex}".encode()
        info = self._connection
        for name, kind in (
            ("shell", zmq.DEALER),
            ("control", zmq.DEALER),
            ("stdin", zmq.DEALER),
            ("iopub", zmq.SUB),
        ):
            sock = self.context.socket(kind)
            sock.linger = 0
            info.secure(sock)  # a Curve client when the kernel's sockets are Curve servers
            if kind == zmq.DEALER:
                # The kernel sends input_request to the stdin socket with the shell's identity.
                sock.setsockopt(zmq.IDENTITY, identity)
            else:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
                sock.setsockopt(zmq.RCVHWM, 0)
            sock.connect(info.url(name))
            self._sockets[name] = sock
        for name, sock in self._sockets.items():
            self._readers.append(
                asyncio.create_task(self._read(name, sock), name=f"zmq-{name}-{self.kernel_id}")
            )

    def close_sockets(self) -> None:
        for task in self._readers:
            task.cancel()
        self._readers.clear()
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        self._iopub_seen.clear()
        for nudge in self._unanswered.values():
            nudge.cancel()
        self._unanswered.clear()
        for future in self._internal.values():
            if not future.done():
                future.cancel()
        self._internal.clear()

    def reconnect(self, connection: ConnectionInfo) -> None:
        """Point the sockets at a kernel's new address (after a restart elsewhere)."""
        self.close_sockets()
        self._connection = connection
        self._signer = Signer(connection.key, connection.signature_scheme)
        self.open()

    def expect_restart(self) -> None:
        """Forget readiness: the next :meth:`wait_for_ready` must see the new kernel (whose
        own start-up ``starting`` is not shown until then: see :mod:`.status`)."""
        self._iopub_seen.clear()
        self._probes.clear()
        self._restarting = True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        for client in list(self.clients.values()):
            await client.drain(1.0)
            await client.close(code, reason)
        self.clients.clear()
        self.close_sockets()
        if self.watermarks is not None:
            # 1001: this gateway goes away and the kernel lives on; the next gateway takes
            # the watermarks over. Anything else: the kernel is gone, and they with it.
            self.watermarks.close(remove=code != 1001)

    # -- kernel -> clients ----------------------------------------------------

    async def _read(self, channel: str, sock: zmq.asyncio.Socket) -> None:
        # Messages already queued are taken with a plain non-blocking recv: zmq.asyncio's
        # futures cost more than the recv itself, so only an empty socket is awaited. Every
        # _READ_BATCH messages the loop yields, so that a flood of output cannot starve the
        # senders and the other kernels. copy=False leaves large frames in ZMQ's buffers.
        shadow: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        batch = 0
        while True:
            try:
                if sock.closed:
                    return
                try:
                    frames = shadow.recv_multipart(zmq.NOBLOCK, copy=False)
                    batch += 1
                    if batch >= _READ_BATCH:
                        batch = 0
                        await asyncio.sleep(0)
                except zmq.Again:
                    batch = 0
                    frames = await sock.recv_multipart(copy=False)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                log.debug("kernel %s %s socket closed: %s", self.kernel_id, channel, exc)
                return
            try:
                message = from_zmq(channel, zmq_parts(frames), self._signer)
            except MessageError as exc:
                log.warning("kernel %s: dropped bad %s message: %s", self.kernel_id, channel, exc)
                continue
            self.channel_messages_out[channel] += 1
            self.bytes_out[channel] += sum(map(len, frames))
            try:
                await self._deliver(message)
            except Exception:
                log.exception("kernel %s: failed to deliver a %s message", self.kernel_id, channel)

    async def _deliver(self, message: Message) -> None:
        self.last_activity = datetime.now(UTC)
        if message.channel == "iopub":
            if self._unanswered:
                nudge = self._unanswered.pop(message.parent_msg_id(), None)
                if nudge is not None:
                    nudge.cancel()
            if self._probes and message.parent_msg_id() in self._probes:
                self._iopub_seen.set()
            if self.iopub_watchers:
                watcher = self.iopub_watchers.get(message.parent_msg_id())
                if watcher is not None:
                    watcher(message)
            msg_type = message.msg_type
            if msg_type == "status" or msg_type == "iopub_welcome":
                state = message.content().get("execution_state")
                state = state if isinstance(state, str) else ""
                parent_type = str(message.parent.get("msg_type", ""))
                if not shown_to_clients(msg_type, state, parent_type, self._restarting):
                    self._note_live(message)
                    return
                if state:
                    self.execution_state = next_execution_state(
                        self.execution_state, state, parent_type
                    )
            await self._broadcast(message)
            return
        parent_id = message.parent_msg_id()
        internal = self._internal.get(parent_id)
        if internal is not None:
            if not internal.done():
                internal.set_result(message)
            return
        target = self._route(message, parent_id)
        if target is not None:
            await target.put(target.frame(message, {}), message)
        elif not self.replay.keep_reply(message):
            log.debug(
                "kernel %s: no client for %s reply to %s",
                self.kernel_id,
                message.msg_type,
                parent_id,
            )

    def _route(self, message: Message, parent_id: str) -> Connection | None:
        # A reply on shell/control ends its request; stdin's input_request does not.
        if message.channel == "stdin":
            client_id = self._requester.get(parent_id)
        else:
            client_id = self._requester.pop(parent_id, None)
        client = self.clients.get(client_id) if client_id else None
        if client is not None and not client.closed:
            return client
        session = message.parent_session()
        for client in self.clients.values():
            if not client.closed and session in client.client_sessions:
                return client
        return None

    def _note_live(self, message: Message) -> None:
        """While recovering, count a kernel iopub message as received live, shown to clients
        or not: the kernel side kept it too, and the recovery compares the two."""
        if self._recovering is not None:
            self._live.append(message.msg_id)

    async def _broadcast(self, message: Message) -> None:
        self._last_iopub = message.msg_id
        self._note_live(message)
        cache: dict[bool, str | bytes] = {}
        for client in list(self.clients.values()):
            await client.put(client.frame(message, cache), message)
        if self.replay.parked:
            self.replay.keep_broadcast(message)

    def broadcast_status(self, state: str, reason: str = "") -> None:
        """Tell every client the kernel is ``restarting``, ``starting`` (again) or ``dead``
        (raygate's own notice: jupyter_server's for its own kernels, see the registry)."""
        self.execution_state = state
        content: dict[str, Any] = {"execution_state": state}
        if reason:
            content["reason"] = reason
        message = new_message("iopub", "status", content, self.session)
        cache: dict[bool, str | bytes] = {}
        for client in list(self.clients.values()):
            task = asyncio.ensure_future(client.put(client.frame(message, cache), message))
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)
        if self.replay.parked:
            self.replay.keep_broadcast(message)

    def notify_stderr(self, text: str) -> None:
        """Tell every client ``text`` as the kernel's stderr on iopub, in answer to the last
        execute_request (so a notebook shows it under the cell that ran). Queued without
        waiting for room: a stuck client must not hold up the caller (the monitor)."""
        content = {"name": "stderr", "text": text}
        message = new_message("iopub", "stream", content, self.session, self._last_execute)
        cache: dict[bool, str | bytes] = {}
        for client in list(self.clients.values()):
            if not client.closed:
                client.push_now(client.frame(message, cache), message)
        if self.replay.parked:
            self.replay.keep_broadcast(message)

    # -- clients -> kernel ----------------------------------------------------

    def attach(self, client: Connection) -> None:
        """Serve a new client; output kept for its session while it was away comes first."""
        if self._recovering is not None and client.session_id in self._recovering:
            self._held.append(client)  # served once what it missed is known (recover())
            return
        if client.session_id:
            for message in self.replay.resume(client.session_id, self.session):
                client.push_now(client.frame(message, {}), message)
        self.clients[client.id] = client
        self.clients_opened += 1
        client.on_closed = self.detach
        self._watch_delivery(client)
        client.start()

    def _watch_delivery(self, client: Connection) -> None:
        """Record the client's session's watermark as each kernel iopub message is sent."""
        if self.watermarks is None or not client.session_id:
            return
        slot = self.watermarks.connected(client.session_id, self._last_iopub)
        if slot is None:
            return
        mark, own = self.watermarks.mark, self.session

        def sent(message: Message) -> None:
            # raygate's own notices (our session) are unknown to the kernel's keeper
            if message.channel == "iopub" and message.header.get("session") != own:
                mark(slot, message.msg_id)

        client.on_sent = sent

    def detach(self, client: Connection) -> None:
        """Stop serving a client; if it was its session's last, keep that session's output."""
        if client in self._held:
            self._held.remove(client)  # its session stays parked
            return
        if self.clients.pop(client.id, None) is None:
            return
        unsent = client.halt()
        session = client.session_id
        if session and not any(c.session_id == session for c in self.clients.values()):
            self.replay.park(session, unsent)
            if self.watermarks is not None:
                self.watermarks.parked(session)

    # -- after a gateway restart ---------------------------------------------------

    def begin_recovery(self) -> bool:
        """Take over the sessions of a gateway that served this kernel and was killed (or
        stopped): each is parked, so live output is kept for it from now on, and its
        clients wait until :meth:`recover` has put what the kernel kept ahead of that.
        Call right after :meth:`open`, before the first message is read."""
        if self.watermarks is None or not self.replay.enabled:
            return False
        found = self.watermarks.take_orphans(self.replay.ttl)
        if not found:
            return False
        self._recovering = {r.session: r.watermark for r in found}
        for record in found:
            self.replay.park(record.session, [])
        log.info("kernel %s: recovering the output of %d session(s)", self.kernel_id, len(found))
        return True

    async def recover(
        self, fetch: Callable[[list[str]], Awaitable[list[list[bytes]] | None]]
    ) -> None:
        """Seed each session of :meth:`begin_recovery` with the kernel's kept messages
        after its watermark, then serve its waiting clients. Call once our iopub
        subscription is proven (:meth:`wait_for_ready`): from then on the live stream and
        the kept messages overlap, and each message is kept once, by msg_id."""
        recovering = self._recovering
        if recovering is None:
            return
        try:
            kept = await self._fetch_kept(fetch, sorted(set(recovering.values()) - {""}))
            if kept is not None:
                kept = [m for m in kept if shown_to_clients(m.msg_type, "", "", False)]
            for session, watermark in recovering.items():
                if kept is not None and not self.replay.seed(session, kept, watermark):
                    log.warning(
                        "kernel %s: session %s: its last message is no longer kept by the "
                        "kernel side; replaying all it keeps",
                        self.kernel_id,
                        session,
                    )
        except Exception:
            log.exception("kernel %s: could not recover the kernel's kept output", self.kernel_id)
        finally:
            self._recovering = None
            self._live = []
            held, self._held = self._held, []
            for client in held:
                if not client.closed:
                    self.attach(client)

    async def _fetch_kept(
        self, fetch: Callable[[list[str]], Awaitable[list[list[bytes]] | None]], marks: list[str]
    ) -> list[Message] | None:
        """The kept messages, once they reach the first one received live and all of them
        have also arrived live (so that none arrives after the seeding)."""
        kept: list[Message] = []
        for _ in range(_RECOVERY_TRIES):
            raw = await fetch(marks)
            if raw is None:
                return None
            kept = []
            for frames in raw:
                try:
                    kept.append(from_zmq("iopub", list(frames), self._signer))
                except MessageError as exc:
                    log.warning("kernel %s: dropped a bad kept message: %s", self.kernel_id, exc)
            ids = {m.msg_id for m in kept}
            if not self._live or not kept:
                return kept
            if self._live[0] in ids:  # they overlap; wait for the live side to catch up
                for _ in range(_RECOVERY_TRIES):
                    if kept[-1].msg_id in self._live:
                        return kept
                    await asyncio.sleep(_RECOVERY_PAUSE)
                return kept
            await asyncio.sleep(_RECOVERY_PAUSE)  # the keeper lags behind us: ask again
        log.warning("kernel %s: kept output does not reach the live output", self.kernel_id)
        return kept

    async def send(self, message: Message, client: Connection | None = None) -> None:
        """Sign and send a message to the kernel, remembering who asked."""
        sock = self._sockets.get(message.channel)
        if sock is None:
            raise MessageError(f"kernel {self.kernel_id} is not connected")
        if client is not None:
            session = message.header.get("session")
            if isinstance(session, str) and session:
                client.client_sessions.add(session)
            if message.msg_type == "execute_request":
                self._last_execute = message.header
            if message.channel != "stdin":
                self._requester[message.msg_id] = client.id
                while len(self._requester) > _MAX_PENDING:
                    self._requester.popitem(last=False)
        self.last_activity = datetime.now(UTC)
        frames = to_zmq(message, self._signer)
        self.channel_messages_in[message.channel] += 1
        self.bytes_in[message.channel] += sum(map(len, frames))
        async with self._send_locks[message.channel]:
            await sock.send_multipart(frames, copy=False)
        if client is not None and message.channel == "shell":
            self._expect_answer(message.msg_id)

    def _expect_answer(self, msg_id: str) -> None:
        while len(self._unanswered) >= _MAX_PENDING:
            self._unanswered.pop(next(iter(self._unanswered))).cancel()
        loop = asyncio.get_running_loop()
        self._unanswered[msg_id] = loop.call_later(NUDGE_AFTER, self._nudge, msg_id)

    def _nudge(self, msg_id: str) -> None:
        """ipykernel 7 can leave a shell request unread in its socket (its reply to an
        earlier request, sent from another thread, consumed the socket's wake-up:
        ipython/ipykernel#1554) until another message arrives. An idle kernel that has
        shown nothing for a client's request a second after it was sent gets raygate's
        own kernel_info_request, whose arrival wakes the socket; its answer is ours."""
        if self._unanswered.pop(msg_id, None) is None or self.execution_state != "idle":
            return  # answered meanwhile, or busy: the request waits its turn
        if "shell" not in self._sockets:
            return
        log.info("kernel %s: nudged, as it showed nothing for request %s", self.kernel_id, msg_id)
        task = asyncio.ensure_future(self._probe_quietly())
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _probe_quietly(self) -> None:
        try:
            await self.request("shell", "kernel_info_request", {}, timeout=NUDGE_AFTER * 5)
        except Exception:
            pass  # only a nudge: a kernel that does not answer is the monitor's to find

    async def request(
        self,
        channel: str,
        msg_type: str,
        content: dict[str, Any],
        timeout: float,
        message: Message | None = None,
    ) -> Message:
        """Send raygate's own request and wait for its reply (not shown to clients); the
        timeout bounds the send too, which waits while ZMQ cannot take the message."""
        message = message or new_message(channel, msg_type, content, self.session)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._internal[message.msg_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self.send(message)
                return await future
        finally:
            self._internal.pop(message.msg_id, None)

    async def wait_for_ready(
        self, timeout: float, is_alive: Callable[[], Awaitable[bool]]
    ) -> dict[str, Any]:
        """Wait until the kernel answers kernel_info and its iopub reaches us.

        Returns the kernel_info reply's content. Raises :class:`KernelNotReady` when the
        kernel dies or the timeout passes first.
        """
        try:
            return await self._wait_for_ready(timeout, is_alive)
        finally:
            self._restarting = False

    async def _wait_for_ready(
        self, timeout: float, is_alive: Callable[[], Awaitable[bool]]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        reply: Message | None = None
        while time.monotonic() < deadline:
            if not await is_alive():
                raise KernelNotReady("the kernel process exited")
            probe = new_message("shell", "kernel_info_request", {}, self.session)
            self._probes.add(probe.msg_id)
            try:
                reply = await self.request("shell", probe.msg_type, {}, 0.5, message=probe)
            except TimeoutError:
                continue
            # A reply proves the shell socket; a status on iopub proves the
            # subscription, without which the first outputs could be lost.
            try:
                await asyncio.wait_for(self._iopub_seen.wait(), 0.25)
            except TimeoutError:
                continue
            self._probes.clear()
            return reply.content()
        raise KernelNotReady(f"the kernel did not answer within {timeout:g}s")
