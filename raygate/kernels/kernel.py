"""One kernel the gateway serves: an entry of the registry's table (and of the warm pool's)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from raygate.bridge.channels import KernelChannels
from raygate.launchers import KernelHandle, Launcher

STABLE_START = 10.0
"""Seconds a restarted kernel must stay up before its next death starts a new series of
automatic restarts (jupyter_client's ``KernelRestarter.stable_start_time``)."""


def consecutive_restarts(restarts: int, died_at: float, now: float) -> int:
    """The automatic restarts in a row so far of a kernel that dies at ``now`` and last died
    at ``died_at`` (0: never) after ``restarts`` of them: none if it stayed up for
    :data:`STABLE_START` (``--restart-limit`` counts these, as jupyter_client does)."""
    return restarts if died_at and now - died_at < STABLE_START else 0


def iso(ts: datetime) -> str:
    """The timestamp form jupyter_server's gateway client parses."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Kernel:
    id: str
    name: str
    launcher: Launcher
    handle: KernelHandle
    channels: KernelChannels
    username: str | None = None
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    restarts: int = 0
    """Automatic restarts after the kernel died, in all (the status page shows them)."""
    restarts_in_a_row: int = 0
    """Those since the kernel last stayed up for a while (``--restart-limit`` counts these)."""
    died_at: float = 0.0
    """``time.monotonic()`` of the kernel's latest death (0: it never died)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    busy_with: str = ""
    """``restarting`` or ``shutting down`` while the registry works on the kernel."""
    warm: bool = False
    """Served from the warm pool (started before its request came)."""
    serves_gateway: bool = False
    """One of notebook-http's endpoint kernels: the gateway's own, never culled."""
    cull_warned_at: datetime | None = None
    """When clients were warned that the kernel is about to be culled (None: not warned)."""

    @property
    def interrupt_mode(self) -> str:
        return self.handle.request.spec.interrupt_mode

    def model(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "last_activity": iso(self.channels.last_activity),
            "execution_state": self.channels.execution_state,
            "connections": len(self.channels.clients),
            "launcher": self.launcher.kind,
            "placement": self.handle.placement,
            "username": self.username,
            "created": iso(self.created),
        }


class RegistryObserver:
    """Hooks for what happens once per kernel (the gateway's metrics implement them)."""

    def kernel_started(self, kernel: Kernel, seconds: float) -> None:
        """A start request's kernel answers, ``seconds`` after the launch began."""

    def start_failed(self, status: int) -> None:
        """A start request failed with this HTTP status."""

    def kernel_removed(self, kernel: Kernel) -> None:
        """The kernel left the registry (shut down, culled or dead)."""
