"""The gateway's report listener: where every remote kernel's bootstrap reports.

Gateway side of the channel whose wire format is :mod:`raygate.launchers.wire`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import ClassVar

from ..wire import (
    MAX_SKEW,
    REPORT,
    REPORT_ACK,
    ChannelError,
    close_writer,
    read_frame,
    seal,
    sealed_kernel_id,
    send_hello,
    unseal,
    write_frame,
)

log = logging.getLogger("raygate.launchers.remote.listener")


@dataclass
class _Expected:
    secret: bytes
    future: asyncio.Future


class ReportListener:
    """One TCP listener in the gateway that receives the reports of every remote kernel.

    A launcher calls :meth:`expect` with the kernel's id and secret before it starts the
    bootstrap, then awaits the returned future. A report is accepted once: the expectation
    is consumed by the first authentic report for that kernel.
    """

    _shared: ClassVar[dict[tuple[str, int], ReportListener]] = {}

    @classmethod
    def shared(cls, host: str = "0.0.0.0", port: int = 0) -> ReportListener:
        """The one listener of this process for ``host:port``, shared by its launchers."""
        key = (host, port)
        if key not in cls._shared:
            cls._shared[key] = cls(host, port)
        return cls._shared[key]

    def __init__(self, host: str = "0.0.0.0", port: int = 0, max_skew: float = MAX_SKEW) -> None:
        self.host = host
        self.port = port
        self.max_skew = max_skew
        self.rejected = 0
        """Reports dropped because they did not authenticate (for tests and metrics)."""
        self._expected: dict[str, _Expected] = {}
        self._server: asyncio.base_events.Server | None = None
        self._users = 0

    @property
    def bound_port(self) -> int:
        if self._server is None:
            raise RuntimeError("report listener is not started")
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Start listening (once; further calls only count users for :meth:`close`)."""
        self._users += 1
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
            log.info("listening for kernel reports on %s:%d", self.host, self.bound_port)

    async def close(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            for expected in self._expected.values():
                if not expected.future.done():
                    expected.future.cancel()
            self._expected.clear()

    def expect(self, kernel_id: str, secret: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._expected[kernel_id] = _Expected(secret, future)
        return future

    def forget(self, kernel_id: str) -> None:
        expected = self._expected.pop(kernel_id, None)
        if expected is not None and not expected.future.done():
            expected.future.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        kernel_id = "?"
        try:
            challenge = await send_hello(writer)
            frame = await asyncio.wait_for(read_frame(reader), 30)
            kernel_id = sealed_kernel_id(frame)
            expected = self._expected.get(kernel_id)
            if expected is None:
                raise ChannelError("no report is expected for this kernel")
            payload = unseal(
                expected.secret, kernel_id, REPORT, challenge, frame, max_skew=self.max_skew
            )
            # Consumed before the answer: a second report for the launch is refused.
            del self._expected[kernel_id]
            write_frame(
                writer, seal(expected.secret, kernel_id, REPORT_ACK, challenge, {"ok": True})
            )
            await writer.drain()
            if not expected.future.done():
                expected.future.set_result(payload)
        except (TimeoutError, ChannelError, OSError) as exc:
            self.rejected += 1
            log.warning("rejected a kernel report from %s for kernel %s: %s", peer, kernel_id, exc)
        finally:
            await close_writer(writer)
