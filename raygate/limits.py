"""How many kernels one gateway process can hold: its open-files limit and ZMQ's sockets.

Each kernel costs the gateway :data:`FDS_PER_KERNEL` file descriptors (four ZMQ sockets,
each a TCP connection plus the socket's own wake-up descriptor), so the soft
``RLIMIT_NOFILE`` (often 1024) caps a gateway at about a hundred kernels, and libzmq's
default of 1023 sockets per context at 255. ``raygate serve`` raises both at startup, and
a start that would run the gateway out of descriptors is refused with a 503 instead of
leaving the gateway unable to accept connections or open a kernel's sockets.
"""

from __future__ import annotations

import errno
import logging
import os

import zmq

log = logging.getLogger("raygate")

FDS_PER_KERNEL = 8
"""File descriptors one kernel holds in the gateway (measured: 8.0 per local kernel)."""
SOCKETS_PER_KERNEL = 4
"""ZMQ sockets of one kernel's bridge: shell, control, stdin, iopub."""
MIN_RESERVE = 64
"""Descriptors always kept free for HTTP and WebSocket clients, logs and launchers."""

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE now (0 where it cannot be told)."""
    if resource is None:
        return 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 0 if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; returns (before, after)."""
    if resource is None:
        return 0, 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft, soft
    # An unlimited hard limit is not accepted as a soft one everywhere (macOS): cap it.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft, soft
    return soft, target


def log_capacity(before: int, after: int) -> None:
    """Say at startup how many kernels the open-files limit leaves room for."""
    if not after:
        return
    room = max(0, (after - reserve(after)) // FDS_PER_KERNEL)
    if after > before:
        log.info(
            "open-files limit raised from %d to %d: room for about %d kernels", before, after, room
        )
    else:
        log.info("open-files limit %d: room for about %d kernels", after, room)


def reserve(limit: int) -> int:
    """Descriptors a start may not take: a tenth of the limit, at least MIN_RESERVE."""
    return max(MIN_RESERVE, limit // 10)


def allow_sockets(context: zmq.Context) -> None:
    """Let the gateway's ZMQ context open as many sockets as its descriptors allow (libzmq's
    default, 1023, is 255 kernels). Call before its first socket is opened."""
    wanted = min(
        max(open_files_limit(), context.get(zmq.MAX_SOCKETS)), context.get(zmq.SOCKET_LIMIT)
    )
    context.set(zmq.MAX_SOCKETS, wanted)


def open_fds() -> int | None:
    """Descriptors this process has open (None where /proc does not tell)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
    except OSError:
        return None


def check_room(kernels: int, starting: int, context: zmq.Context) -> str:
    """Why one more kernel would not fit in this process ('' when it fits), with
    ``kernels`` served and ``starting`` (this one included) on their way."""
    starting = max(starting, 1)
    max_sockets = context.get(zmq.MAX_SOCKETS)
    if (kernels + starting) * SOCKETS_PER_KERNEL > max_sockets:
        return (
            f"the gateway holds {kernels} kernels, and its ZMQ context allows "
            f"{max_sockets} sockets ({SOCKETS_PER_KERNEL} per kernel)"
        )
    limit, used = open_files_limit(), open_fds()
    if not limit or used is None:
        return ""
    if used + starting * FDS_PER_KERNEL > limit - reserve(limit):
        return (
            f"the gateway is near its open-files limit ({used} of {limit} in use, "
            f"{reserve(limit)} kept for clients; each kernel takes about {FDS_PER_KERNEL}): "
            "raise `ulimit -n` (the hard limit) for raygate serve, or spread kernels over "
            "more gateways"
        )
    return ""


def out_of_files(exc: BaseException) -> bool:
    """Whether an error means the process (or system) ran out of file descriptors."""
    return isinstance(exc, OSError | zmq.ZMQError) and exc.errno in (errno.EMFILE, errno.ENFILE)
