"""The gateway side of the launchers that start kernels through the bootstrap (SSH, Dask,
Kubernetes, YARN): :class:`RemoteKernel`, a kernel driven through its bootstrap's control
endpoint, and :class:`RemoteLauncher`, their base (the report listener, the reattach
records, ``find_running``). The bootstrap itself is
:mod:`raygate.launchers.kernelside.bootstrap`; the channel's wire format is
:mod:`raygate.launchers.wire`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from raygate.settings import Integer, setting

from ..base import ConnectionInfo, KernelHandle, KernelStartError, Launcher, LaunchRequest
from ..kernelside.isolation import cluster_access
from ..kernelside.keeper import message_id
from ..kernelside.limits import KernelLimits
from ..wire import ChannelError, control_request, decode_secret, encode_secret
from .listener import ReportListener
from .state import StateStore

if TYPE_CHECKING:
    from raygate.config import GatewayConfig

log = logging.getLogger("raygate.launchers.remote")

DEAD_AFTER_FAILED_CHECKS = 3
"""Liveness checks that time out in a row before a kernel is taken for dead."""

PENDING = "pending"
"""Key of a record a launcher saves before it creates what a kernel runs in, so that what a
crashed gateway left half-made can be found and removed (the YARN launcher's services);
such a record has no connection yet and is never probed."""


# -- the handle ---------------------------------------------------------------------------


class RemoteKernel(KernelHandle):
    """A kernel whose bootstrap runs elsewhere; every action is a control request."""

    def __init__(
        self,
        launcher: RemoteLauncher,
        request: LaunchRequest,
        connection: ConnectionInfo,
        secret: bytes,
        control_host: str,
        control_port: int,
        placement: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(request, connection)
        self.launcher = launcher
        self.secret = secret
        self.control_host = control_host
        self.control_port = control_port
        self.placement = placement
        self.extra = dict(extra or {})
        """Launcher-specific reattach data (e.g. the bootstrap pid, the Dask task key)."""
        self.failed_checks = 0
        self.last_status: dict[str, Any] = {}
        self.stopped = False
        self.created: datetime | None = datetime.now(UTC)

    # -- persistence --

    def record(self) -> dict[str, Any]:
        return {
            "kernel_id": self.kernel_id,
            "secret": encode_secret(self.secret),
            "control": {"host": self.control_host, "port": self.control_port},
            "connection": self.connection.to_dict(),
            "placement": self.placement,
            "request": self.request.to_record(),
            "extra": self.extra,
            "created": self.created.isoformat() if self.created else None,
        }

    @classmethod
    def from_record(cls, launcher: RemoteLauncher, record: dict[str, Any]) -> RemoteKernel:
        kernel = cls(
            launcher,
            LaunchRequest.from_record(record["request"]),
            ConnectionInfo.from_dict(record["connection"]),
            decode_secret(record["secret"]),
            record["control"]["host"],
            int(record["control"]["port"]),
            record.get("placement") or {},
            record.get("extra") or {},
        )
        if record.get("created"):
            kernel.created = datetime.fromisoformat(record["created"])
        return kernel

    # -- control --

    async def control(self, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        reply = await control_request(
            self.control_host, self.control_port, self.secret, self.kernel_id, op, timeout, **args
        )
        if not reply.get("ok"):
            raise ChannelError(reply.get("error") or f"{op} failed")
        return reply

    async def is_alive(self) -> bool:
        if self.stopped:
            return False
        try:
            self.last_status = await self.control("status", timeout=5.0)
        except (ConnectionRefusedError, ConnectionResetError):
            self.last_status = {"alive": False, "error": "its bootstrap is gone"}
            return False
        except (TimeoutError, OSError, ChannelError) as exc:
            self.failed_checks += 1
            log.warning(
                "kernel %s: liveness check %d failed: %s", self.kernel_id, self.failed_checks, exc
            )
            if self.failed_checks >= DEAD_AFTER_FAILED_CHECKS:
                self.last_status = {"alive": False, "error": f"unreachable: {exc}"}
                return False
            return True
        self.failed_checks = 0
        return bool(self.last_status.get("alive"))

    async def signal(self, signum: int) -> None:
        try:
            await self.control("signal", signum=int(signum))
        except (TimeoutError, OSError, ChannelError) as exc:
            raise RuntimeError(f"could not signal kernel {self.kernel_id}: {exc}") from exc

    async def restart(self) -> ConnectionInfo:
        try:
            reply = await self.control("restart", timeout=max(self.request.launch_timeout, 10.0))
        except (TimeoutError, OSError, ChannelError) as exc:
            raise KernelStartError(f"its bootstrap did not restart it: {exc}") from exc
        self.connection = ConnectionInfo.from_dict(reply["connection"])
        if reply.get("pid"):
            self.placement["pid"] = reply["pid"]
        self.failed_checks = 0
        self.launcher.persist(self)
        return self.connection

    async def shutdown(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            await self.control("shutdown", timeout=15.0)
        except (ConnectionRefusedError, ConnectionResetError):
            pass  # the bootstrap has already gone
        except (TimeoutError, OSError, ChannelError) as exc:
            log.warning("kernel %s: shutdown through its bootstrap failed: %s", self.kernel_id, exc)
            await self.launcher.force_stop(self)
        self.launcher.forget(self)

    async def kept_output(self, after: Sequence[str]) -> list[list[bytes]] | None:
        """Fetched from the bootstrap page by page (its replies are bounded in size)."""
        messages: list[list[bytes]] = []
        marks = list(after)
        skipped = 0
        while True:
            try:
                reply = await self.control("kept_output", timeout=30.0, after=marks)
            except ChannelError:
                return messages or None  # no keeper (e.g. an older bootstrap)
            except (ConnectionRefusedError, ConnectionResetError):
                # What it kept went with its bootstrap (the kernel was shut down or died while
                # a restarted gateway recovered it; the monitor reports a death).
                return None
            page = [[base64.b64decode(f) for f in m] for m in reply.get("messages") or []]
            messages += page
            skipped += int(reply.get("skipped") or 0)
            if reply.get("complete") or not page:
                break
            # The next page starts after the last message of this one, which is newer than
            # any of ``after``: if it has been let go meanwhile, so has all before it.
            marks = [message_id(page[-1])]
        if skipped:
            log.warning(
                "kernel %s: %d kept message(s) too large for the control channel were not fetched",
                self.kernel_id,
                skipped,
            )
        return messages

    async def failure_reason(self) -> str:
        status = self.last_status
        if not status:
            return ""
        parts = []
        if status.get("error"):
            parts.append(str(status["error"]))
        if status.get("reason"):  # the kernel supervisor's exit description, with output
            parts.append(str(status["reason"]))
        return ": ".join(parts)


# -- the launcher -------------------------------------------------------------------------


@dataclasses.dataclass
class RemoteSettings:
    """The report listener's settings, shared by every launcher that runs the bootstrap
    (their settings dataclasses inherit these)."""

    report_ip: str = setting(
        "0.0.0.0", "Interface the listener for remote kernels' connection reports binds."
    )
    report_port: int = setting(
        0, "Port of the report listener (0: any free port).", Integer(0, 65535)
    )
    report_address: str = setting(
        "",
        "Address remote bootstraps reach the report listener at (default: the "
        "gateway's address as seen from each SSH host or the Dask scheduler).",
    )


class RemoteLauncher(Launcher):
    """Base of launchers whose kernels are started by the bootstrap somewhere else."""

    kind = "remote"
    kernel_class: type[RemoteKernel] = RemoteKernel
    """The handle class of this launcher's kernels (a subclass may add how to release what
    the environment holds for a kernel, e.g. its pod)."""
    kernels_outlive_gateway = True
    """A stopping gateway leaves these kernels to their bootstraps; the next one finds
    them from the state directory."""

    def __init__(
        self,
        listener: ReportListener | None = None,
        state_dir: str = "",
        report_address: str = "",
    ) -> None:
        self.listener = listener or ReportListener.shared()
        self.state = StateStore(state_dir)
        self.report_address = report_address
        self.kernels: dict[str, RemoteKernel] = {}
        self._unreachable: dict[str, float] = {}
        """Kernel ids whose bootstrap did not answer, and when to try them again."""
        self._started = False

    @staticmethod
    def remote_options(settings: RemoteSettings, gateway: GatewayConfig) -> dict[str, Any]:
        """The constructor arguments every remote launcher takes from its settings and the
        gateway's (its subclasses' ``from_settings`` call this)."""
        return {
            "listener": ReportListener.shared(settings.report_ip, settings.report_port),
            "state_dir": gateway.state_dir,
            "report_address": settings.report_address,
        }

    async def listen(self) -> None:
        """Start the report listener; done on first need, so idle launchers bind nothing."""
        if not self._started:
            await self.listener.start()
            self._started = True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self.listener.close()

    # -- bookkeeping --

    def persist(self, kernel: RemoteKernel) -> None:
        self.state.save(self.kind, kernel.kernel_id, kernel.record())

    def forget(self, kernel: RemoteKernel) -> None:
        self.kernels.pop(kernel.kernel_id, None)
        self.state.remove(self.kind, kernel.kernel_id)

    async def force_stop(self, kernel: RemoteKernel) -> None:
        """Stop a kernel whose bootstrap does not answer (launcher-specific)."""

    # -- launching --

    def bootstrap_settings(
        self,
        request: LaunchRequest,
        secret: bytes,
        report_host: str,
        placement: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The bootstrap's settings for a request (see :mod:`raygate.launchers.kernelside.bootstrap`)."""
        # The kernel's environment is composed on the kernel's side (kernelside.env), from
        # the layers sent here.
        return {
            "kernel_id": request.kernel_id,
            "secret": encode_secret(secret),
            "argv": list(request.spec.argv),
            "spec_env": dict(request.spec.env),
            "env": dict(request.env),
            "username": request.username or "",
            "cwd": request.cwd or "",
            "report": {"host": report_host, "port": self.listener.bound_port},
            "placement": placement or {},
            "encryption": request.encryption,
            # Enforced by the kernel's supervisor there (kernelside.limits).
            "limits": KernelLimits.from_resources(request.resources).to_dict(),
            "account": request.account,
            "cluster_access": cluster_access(
                request.spec.metadata.get("raygate"), "users" if request.account else "none"
            ),
            **extra,
        }

    def from_report(
        self,
        request: LaunchRequest,
        secret: bytes,
        report: dict[str, Any],
        placement: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> RemoteKernel:
        """Make, persist and track the handle of a kernel whose bootstrap reported."""
        try:
            connection = ConnectionInfo.from_dict(report["connection"])
            control = report["control"]
            placement = {
                **placement,
                **(report.get("placement") or {}),
                "pid": report.get("pid"),
                "bootstrap_pid": report.get("bootstrap_pid"),
                "hostname": report.get("hostname"),
            }
            kernel = self.kernel_class(
                self,
                request,
                connection,
                secret,
                str(control["host"]),
                int(control["port"]),
                placement,
                {**(extra or {}), "bootstrap_pid": report.get("bootstrap_pid")},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KernelStartError(f"the kernel's report was incomplete: {exc}") from exc
        self.persist(kernel)
        self.kernels[kernel.kernel_id] = kernel
        return kernel

    # -- after a gateway restart --

    async def check_alive(self, handles: list[KernelHandle]) -> dict[str, bool]:
        alive = await asyncio.gather(*(h.is_alive() for h in handles))
        return {h.kernel_id: ok for h, ok in zip(handles, alive)}

    async def find_running(self) -> list[KernelHandle]:
        return await self._probe_records(self.state.load(self.kind), timeout=10.0)

    async def find_new(self, known: Collection[str]) -> list[KernelHandle]:
        """Kernels another gateway sharing the state directory started since."""
        now = time.monotonic()
        records = [
            r
            for r in self.state.load(self.kind)
            if r.get("kernel_id") not in known
            and r.get("kernel_id") not in self.kernels
            and self._unreachable.get(r.get("kernel_id", ""), 0) < now
            and PENDING not in r  # still being started (a launcher that records that)
        ]
        return await self._probe_records(records, timeout=2.0)

    async def _probe_records(
        self, records: list[dict[str, Any]], timeout: float
    ) -> list[KernelHandle]:
        if not records:
            return []
        found: list[KernelHandle] = []

        async def probe(record: dict[str, Any]) -> None:
            try:
                kernel = self.kernel_class.from_record(self, record)
            except (KeyError, TypeError, ValueError, ChannelError) as exc:
                log.warning("dropping a bad %s kernel record: %s", self.kind, exc)
                self.state.remove(self.kind, str(record.get("kernel_id")))
                return
            started = time.monotonic()
            try:
                await kernel.control("status", timeout=timeout)
            except (ConnectionRefusedError, ConnectionResetError, ChannelError) as exc:
                log.info(
                    "kernel %s: its bootstrap is gone (%s); forgetting it", kernel.kernel_id, exc
                )
                self.state.remove(self.kind, kernel.kernel_id)
                return
            except (TimeoutError, OSError) as exc:
                log.warning(
                    "kernel %s: bootstrap at %s:%d unreachable after %.1fs (%s); kept for later",
                    kernel.kernel_id,
                    kernel.control_host,
                    kernel.control_port,
                    time.monotonic() - started,
                    exc,
                )
                self._unreachable[kernel.kernel_id] = time.monotonic() + 60.0
                return
            self.kernels[kernel.kernel_id] = kernel
            found.append(kernel)

        await asyncio.gather(*(probe(r) for r in records))
        return found
