"""The contract between the gateway and the places kernels run.

A :class:`Launcher` knows one environment (local processes, Ray, Dask, SSH hosts,
Kubernetes, YARN). It turns a :class:`LaunchRequest` into a :class:`KernelHandle`: a
running kernel the gateway can reach over ZMQ at ``handle.connection``.

The gateway core never looks past this interface; everything environment-specific
(where the process lives, how it is signalled, how it is found again after a gateway
restart) stays behind it.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import zmq

from raygate.resources import ResourceRequest

CHANNEL_NAMES = ("shell", "iopub", "stdin", "control", "hb")


@dataclass(frozen=True)
class ConnectionInfo:
    """Where a kernel's five ZMQ sockets listen and the key that signs its messages.

    ``curve_publickey`` (Z85) is set when the kernel's sockets are CurveZMQ servers: only
    clients that know it can talk to the kernel, and all traffic is encrypted. The kernel's
    secret key stays in its connection file on the kernel's host; it is never part of this.
    """

    ip: str
    shell_port: int
    iopub_port: int
    stdin_port: int
    control_port: int
    hb_port: int
    key: bytes
    transport: str = "tcp"
    signature_scheme: str = "hmac-sha256"
    curve_publickey: str | None = None

    def url(self, channel: str) -> str:
        port = getattr(self, f"{channel}_port")
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{port}"
        return f"{self.transport}://{self.ip}:{port}"

    def to_dict(self) -> dict[str, Any]:
        """The connection-file form jupyter_client and ipykernel read."""
        info = asdict(self)
        info["key"] = self.key.decode()
        if self.curve_publickey is None:
            del info["curve_publickey"]  # a plain kernel's info keeps its usual shape
        return info

    def secure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CurveZMQ client of this kernel, if the kernel requires Curve.

        Call before ``connect``. Each socket gets a fresh client keypair: the kernel only
        needs the client's public key, which the handshake carries.
        """
        if self.curve_publickey is None:
            return
        public, secret = zmq.curve_keypair()
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = self.curve_publickey.encode()

    @classmethod
    def from_dict(cls, info: dict[str, Any]) -> ConnectionInfo:
        key = info.get("key", b"")
        return cls(
            ip=info["ip"],
            shell_port=int(info["shell_port"]),
            iopub_port=int(info["iopub_port"]),
            stdin_port=int(info["stdin_port"]),
            control_port=int(info["control_port"]),
            hb_port=int(info["hb_port"]),
            key=key.encode() if isinstance(key, str) else bytes(key),
            transport=info.get("transport", "tcp"),
            signature_scheme=info.get("signature_scheme", "hmac-sha256"),
            curve_publickey=info.get("curve_publickey") or None,
        )


@dataclass
class KernelSpecInfo:
    """The parts of a kernelspec a launcher needs, in a form that pickles and travels."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    display_name: str = ""
    language: str = ""
    interrupt_mode: str = "signal"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LaunchRequest:
    """Everything a launcher needs to start one kernel."""

    kernel_id: str
    spec: KernelSpecInfo
    env: dict[str, str]
    """Variables from the start request (``KERNEL_*`` and allowed extras), already validated."""
    launch_timeout: float
    username: str | None = None
    cwd: str | None = None
    resources: ResourceRequest = field(default_factory=ResourceRequest)
    """The resource request (CPUs, memory, GPUs, ...) in the launcher-neutral form."""
    encryption: str = "none"
    """``"curve"``: the kernel side makes a CurveZMQ keypair and the kernel's sockets Curve
    servers (see :func:`raygate.launchers.kernelside.process.write_connection_file`); ``"none"``: plain."""
    pooled: bool = False
    """A warm kernel waiting in a gateway's pool: no user's yet, so discovery skips it."""

    def __post_init__(self) -> None:
        if isinstance(self.resources, dict):  # e.g. read back from a record
            self.resources = ResourceRequest.from_dict(self.resources)


class KernelStartError(Exception):
    """The kernel could not be started; ``str(exc)`` is shown to the user.

    ``status`` is the HTTP status the gateway answers with: 500 when the kernel itself
    failed, 4xx when the request can never be satisfied, 503/504 when capacity was lacking.
    """

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class KernelHandle(abc.ABC):
    """One running kernel, wherever it runs.

    Implementations keep enough state to signal, restart and stop the kernel, and
    expose ``placement`` (where it runs, what it holds) for the kernel model.
    """

    def __init__(self, request: LaunchRequest, connection: ConnectionInfo) -> None:
        self.request = request
        self.connection = connection
        self.placement: dict[str, Any] = {}
        self.created: datetime | None = None
        """When the kernel started, for kernels found again after a gateway restart."""

    @property
    def kernel_id(self) -> str:
        return self.request.kernel_id

    @abc.abstractmethod
    async def is_alive(self) -> bool:
        """Whether the kernel process still runs."""

    @abc.abstractmethod
    async def signal(self, signum: int) -> None:
        """Deliver a signal to the kernel (SIGINT interrupts it)."""

    @abc.abstractmethod
    async def restart(self) -> ConnectionInfo:
        """Kill the kernel process and start a fresh one for the same kernel id.

        Resources held for the kernel are kept. Returns the (possibly new) connection info.
        """

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop the kernel for good and release what it holds. Idempotent."""

    async def failure_reason(self) -> str:
        """A short account of why the kernel died or failed to start (e.g. a stderr tail)."""
        return ""

    async def assign(self, request: LaunchRequest) -> None:
        """Hand a warm kernel to the start ``request`` it now serves (same kernel id).

        Launchers that record a kernel's request where a later gateway reads it (the Ray
        actor) record the new one, so the user and env survive a gateway restart.
        """
        self.request = request

    async def kept_output(self, after: Sequence[str]) -> list[list[bytes]] | None:
        """The kernel's iopub messages kept next to it (:mod:`.keeper`), as raw ZMQ
        frames, oldest first: those after the oldest msg_id of ``after`` still kept, or all
        kept when none of them is. A gateway restarted after a crash replays them.

        ``None`` (the default): this kernel has no keeper, e.g. local kernels, which die
        with the gateway anyway.
        """
        return None


class Launcher(abc.ABC):
    """Starts kernels in one kind of environment."""

    kind: ClassVar[str]

    kernels_outlive_gateway: bool = False
    """Whether the gateway leaves this launcher's kernels running when it stops, to be
    found again (:meth:`find_running`) by the next gateway or served by another replica."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to the environment (called once when the gateway starts)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` acquired. Kernels are left as the launcher defines."""

    @abc.abstractmethod
    async def launch(self, request: LaunchRequest) -> KernelHandle:
        """Start a kernel; return once its ZMQ sockets can be connected to.

        Raises :class:`KernelStartError` with a message for the user on failure.
        """

    async def check_alive(self, handles: list[KernelHandle]) -> dict[str, bool]:
        """Liveness of many kernels at once; launchers with a cluster API batch this."""
        return {handle.kernel_id: await handle.is_alive() for handle in handles}

    async def find_running(self) -> list[KernelHandle]:
        """Kernels of this launcher that outlived a previous gateway, to serve again."""
        return []

    async def capacity(self) -> dict[str, Any] | None:
        """What the environment holds, for the status page, or ``None`` where the launcher
        cannot tell (the default) or is not connected: ``{"nodes": [{"node_id", "host",
        "ip", "cpus": {"total", "available"}, "gpus": {...}, "memory": {...}}]}``, memory
        in bytes."""
        return None

    async def find_new(self, known: Collection[str]) -> list[KernelHandle]:
        """Kernels started since (e.g. by another gateway replica) whose ids are not in
        ``known``; the registry asks periodically. Launchers whose kernels only this
        gateway starts keep the default."""
        return []
