"""The baseline: a client straight on a kernel's ZMQ sockets, with jupyter_client.

A kernel of the same kernelspec started here by jupyter_client's ``AsyncKernelManager``
(no gateway involved), or any kernel whose connection file is at hand, measured with the
same cells as the gateway, so a report shows what the gateway adds to a round trip and
to output throughput.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from .client import BenchError, Outcome


async def answered(probe: Callable[[], Awaitable[Any]], where: str, timeout: float = 30) -> None:
    """Repeat ``probe`` (a kernel_info request) until the kernel answers one within 1 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(1.0):
                await probe()
            return
        except TimeoutError:
            continue
    raise BenchError(f"the kernel did not answer {where}")


class ZmqChannel:
    """Straight to the kernel's sockets with jupyter_client's ``AsyncKernelClient``."""

    label = "ZMQ (jupyter_client)"

    def __init__(self, connection_file: str) -> None:
        self.connection_file = connection_file
        self.kc: Any = None

    async def open(self) -> None:
        from jupyter_client.asynchronous import AsyncKernelClient

        kc = AsyncKernelClient()
        kc.load_connection_file(self.connection_file)
        kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        self.kc = kc
        # Ready once kernel_info is answered and its status reached the iopub subscription.
        await answered(lambda: self._until(kc.kernel_info()), "over ZMQ")

    async def close(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None

    async def execute(self, code: str) -> Outcome:
        assert self.kc is not None
        msg_id = self.kc.execute(code, silent=False, store_history=False, allow_stdin=False)
        return await self._until(msg_id)

    async def _until(self, msg_id: str) -> Outcome:
        """Read the reply to ``msg_id`` on shell and, meanwhile, its iopub until idle: as a
        client must, for iopub left unread until the reply (which comes last) overflows
        the subscription's high-water mark, and ZMQ drops what is over it (a flood of
        20,000 prints lost its idle that way)."""
        out = Outcome()

        async def reply() -> None:
            while True:
                msg = await self.kc.get_shell_msg()
                if msg["parent_header"].get("msg_id") == msg_id:
                    out.reply = msg["content"]
                    out.status = msg["content"].get("status", "")
                    return

        async def outputs() -> None:
            while True:
                msg = await self.kc.get_iopub_msg()
                if msg["parent_header"].get("msg_id") == msg_id and out.take_output(msg):
                    return

        await asyncio.gather(reply(), outputs())
        return out


@asynccontextmanager
async def local_kernel(kernelspec: str) -> AsyncIterator[str]:
    """A kernel of ``kernelspec`` started here by jupyter_client; yields its connection file."""
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import AsyncKernelManager

    manager = AsyncKernelManager(kernel_name=kernelspec)
    try:
        # The kernel's own chatter (its TCP warning) would land amid the progress bars.
        await manager.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except NoSuchKernel:
        raise BenchError(
            f"--zmq-baseline: no kernelspec {kernelspec!r} on this machine "
            "(jupyter kernelspec list)"
        ) from None
    try:
        yield manager.connection_file
    finally:
        await manager.shutdown_kernel(now=True)
