"""Running code on one kernel and collecting what it printed, for notebook-http.

The pool (:mod:`.pool`) runs each request's code with :class:`Execution` over the kernel's
:class:`~raygate.bridge.channels.KernelChannels` (the same sockets the WebSocket bridge
uses; the execution is raygate's own request, so no client sees its reply): its iopub
messages are collected up to the kernel's ``idle`` for it, as Kernel Gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raygate.bench.client import execute_content
from raygate.bridge.channels import KernelChannels
from raygate.bridge.messages import Message, new_message

POLL = 0.25
"""Seconds between looks at whether the kernel is still the one the execution went to."""


class KernelGone(Exception):
    """The kernel died (or was restarted, or shut down) while it ran the code."""


class ExecutionTimeout(Exception):
    """The kernel did not finish the code in time."""


@dataclass
class Outcome:
    """What one execution printed, returned, or raised."""

    stdout: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    """``execute_result`` data, by MIME type."""
    error: str | None = None
    """``Error NAME: VALUE`` as Kernel Gateway words it, when the code raised."""

    @property
    def text(self) -> str:
        """What the response body is made of: stdout if anything was printed, else the
        JSON of the result's data, else nothing (Kernel Gateway's precedence)."""
        if self.stdout:
            return "".join(self.stdout)
        if self.result:
            return json.dumps(self.result)
        return ""

    def take(self, message: Message) -> bool:
        """Collect one iopub message; True once it is the kernel's ``idle``."""
        kind = message.msg_type
        if kind == "status":
            return bool(message.content().get("execution_state") == "idle")
        if kind == "stream":
            content = message.content()
            # Only stdout (or, from a kernel that does not name its streams, any stream).
            if content.get("name", "stdout") == "stdout":
                self.stdout.append(str(content.get("text", "")))
        elif kind == "execute_result":
            data = message.content().get("data")
            self.result = data if isinstance(data, dict) else None
        elif kind == "error":
            content = message.content()
            self.error = f"Error {content.get('ename', '')}: {content.get('evalue', '')} \n"
        return False


class Execution:
    """One ``execute_request`` on a kernel: :meth:`start` sends it, :meth:`wait` waits for
    the kernel's idle; after a timeout the caller may interrupt and :meth:`wait` again."""

    def __init__(self, channels: KernelChannels, code: str) -> None:
        self.channels = channels
        self.code = code
        self.outcome = Outcome()
        self.done = asyncio.Event()
        self._reply: asyncio.Task[Message] | None = None
        self._message = new_message(
            "shell", "execute_request", execute_content(code), channels.session
        )

    def _on_iopub(self, message: Message) -> None:
        if self.outcome.take(message):
            self.done.set()

    def start(self, reply_timeout: float) -> None:
        self.channels.iopub_watchers[self._message.msg_id] = self._on_iopub
        # The reply goes to raygate (not to a client); the iopub idle ends the execution.
        self._reply = asyncio.ensure_future(
            self.channels.request(
                "shell", "execute_request", {}, reply_timeout, message=self._message
            )
        )
        self._reply.add_done_callback(self._reply_done)

    @staticmethod
    def _reply_done(task: asyncio.Task[Message]) -> None:
        if not task.cancelled():
            task.exception()  # a reply that never came is not an error of its own

    async def wait(self, timeout: float, gone: Callable[[], bool]) -> Outcome:
        """The outcome, once the kernel is idle again. Raises :class:`ExecutionTimeout`
        after ``timeout`` seconds (0: none), :class:`KernelGone` once ``gone()``."""
        deadline = time.monotonic() + timeout if timeout else float("inf")
        while not self.done.is_set():
            if gone():
                raise KernelGone()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExecutionTimeout()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), min(POLL, remaining))
        return self.outcome

    def close(self) -> None:
        self.channels.iopub_watchers.pop(self._message.msg_id, None)
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
