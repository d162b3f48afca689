"""Logging: the kernel id on every record about a kernel, as text or JSON lines.

The registry and the handlers put the kernel they work on into :data:`kernel_id_var`
(a context variable, so it follows the request's task and the tasks it creates, such as
a kernel's socket readers). :class:`KernelContextFilter`, installed on the root handler,
copies it onto every record as ``record.kernel_id``; a record that names its kernel as
``"kernel %s: ..."`` gets it from there when no context is set (the monitor loop). Log
calls themselves stay as they are.

Tokens never reach the log: ``token=`` query values in URLs (uvicorn's access lines,
WebSocket URLs) are replaced by ``[redacted]``, and so are the values of credential headers
(``Authorization``, ``Cookie``) that the WebSocket library logs at debug level.

A WebSocket raygate refused with an HTTP response (a bad token, an unknown kernel) is not
followed by uvicorn's spurious ERROR that its handshake was left unfinished.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

kernel_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "raygate_kernel_id", default=None
)
"""The kernel the current task works on, if any."""

websocket_denied_var: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "raygate_websocket_denied", default=False
)
"""Set when raygate refused the current WebSocket with an HTTP response (see
``errors.deny_websocket``): uvicorn's ERROR that the handshake was not completed is then
about a refusal, and dropped."""
_UNFINISHED_HANDSHAKE = "ASGI callable returned without completing handshake."

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TOKEN_IN_URL = re.compile(r"((?:^|[?&])token=)[^&\s\"']*")
_HEADER_LINES = frozenset({"< %s: %s", "> %s: %s"})
"""How the ``websockets`` library (under uvicorn) logs each handshake header at debug level."""
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _kernel_id_of(args: tuple[Any, ...]) -> str | None:
    """The kernel id among a registry method's arguments: an id string, or an object with
    ``kernel_id`` (handles, requests) or ``id`` (a registry ``Kernel``)."""
    for arg in args:
        if isinstance(arg, str):
            return arg
        for attr in ("kernel_id", "id"):
            value = getattr(arg, attr, None)
            if isinstance(value, str):
                return value
    return None


def kernel_scoped(method: F) -> F:
    """Decorate an async method whose arguments name a kernel: records logged while it runs
    (and by tasks it starts) carry that kernel's id; the caller's context is restored after."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        kernel_id = _kernel_id_of(args)
        if kernel_id is None:
            return await method(self, *args, **kwargs)
        token = kernel_id_var.set(kernel_id)
        try:
            return await method(self, *args, **kwargs)
        finally:
            kernel_id_var.reset(token)

    return wrapper  # type: ignore[return-value]


def redact(text: str) -> str:
    return _TOKEN_IN_URL.sub(r"\1[redacted]", text) if "token=" in text else text


class KernelContextFilter(logging.Filter):
    """Adds ``kernel_id`` to every record (``None`` when it concerns no kernel) and
    redacts tokens from URLs and credential headers in the record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _UNFINISHED_HANDSHAKE and websocket_denied_var.get():
            return False  # raygate's own refusal (errors.deny_websocket), finished as such
        if getattr(record, "kernel_id", None) is None:
            kernel_id = kernel_id_var.get()
            if kernel_id is None:
                kernel_id = self._named(record)
            record.kernel_id = kernel_id
        if self._secret_header(record):
            record.args = (record.args[0], "[redacted]")  # type: ignore[index]
        elif isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                redact(a) if isinstance(a, str) and "token=" in a else a for a in record.args
            )
        elif isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = redact(record.msg)
        return True

    @staticmethod
    def _secret_header(record: logging.LogRecord) -> bool:
        args = record.args
        return (
            isinstance(record.msg, str)
            and record.msg in _HEADER_LINES
            and isinstance(args, tuple)
            and len(args) == 2
            and str(args[0]).lower() in _SECRET_HEADERS
        )

    @staticmethod
    def _named(record: logging.LogRecord) -> str | None:
        msg = record.msg
        if (
            isinstance(msg, str)
            and msg.startswith("kernel %s")
            and isinstance(record.args, tuple)
            and record.args
            and isinstance(record.args[0], str)
        ):
            return record.args[0]
        return None


class TextFormatter(logging.Formatter):
    """``time level logger: message``, with ``[kernel <id>]`` when the message itself does
    not already name the kernel."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        kernel_id = getattr(record, "kernel_id", None)
        if kernel_id and kernel_id not in record.getMessage():
            first, nl, rest = line.partition("\n")
            line = f"{first} [kernel {kernel_id}]{nl}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, kernel_id,
    and the traceback as ``exc_info`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "kernel_id": getattr(record, "kernel_id", None),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> logging.Handler:
    """Send every logger's records (raygate's, uvicorn's, Ray's) to stderr through one
    handler with the kernel filter and the chosen format."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(KernelContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers keep no handlers of their own (uvicorn runs with log_config=None),
    # so their records come here too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
