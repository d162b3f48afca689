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
import copy
import functools
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import zmq

from raygate.resources import ResourceRequest

if TYPE_CHECKING:
    from raygate.config import GatewayConfig

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


RECORD_VERSION = 1
"""Version of :meth:`LaunchRequest.to_record`'s form; a record of a newer version is refused
(a newer gateway wrote it) rather than half read."""


class InvalidKernelSpecMetadata(ValueError):
    """A kernelspec's ``metadata.raygate`` that is malformed; ``str(exc)`` says what."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key
        """The top-level key that is wrong (``resources``, ``launcher``, ...), or ""."""


def _object(value: Any, what: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidKernelSpecMetadata(f"kernelspec {what} must be an object", key)
    return dict(value)


@dataclass(frozen=True)
class KernelSpecMetadata:
    """A kernelspec's ``metadata.raygate``, read once (:meth:`parse`).

    The gateway's keys are typed fields; each launcher's own block (``ssh``, ``dask``,
    ``yarn``, ``kubernetes``, or a third-party launcher's kind) is kept as an object for
    that launcher to read with :meth:`section`.
    """

    launcher: str | None = None
    """The launcher kind that starts the kernels (None: the gateway's default)."""
    resources: dict[str, Any] = field(default_factory=dict)
    """The resource request as written (``cpus``, ``memory``, ...); the start request's
    ``KERNEL_*`` variables adjust it (:func:`raygate.resources.request_for`)."""
    allow_users: tuple[str, ...] = ()
    """Users who may start it (empty: anyone the gateway's own lists let through)."""
    deny_users: tuple[str, ...] = ()
    runtime_env: dict[str, Any] | None = None
    cluster_access: bool = False
    """``cluster_access`` (or ``ray_access``): under ``--kernel-isolation users`` its kernels
    get their cluster's credentials (:mod:`raygate.launchers.kernelside.isolation`)."""
    """Ray's ``runtime_env`` for the kernel's actor (Ray launcher)."""
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Every other key whose value is an object: launchers' own blocks, by name."""

    @classmethod
    def parse(cls, raw: Any) -> KernelSpecMetadata:
        """The typed form of ``metadata.raygate``; raises :class:`InvalidKernelSpecMetadata`.
        Called by :attr:`KernelSpecInfo.raygate`, once per spec."""
        data = _object(raw, "metadata.raygate", "")
        launcher = data.get("launcher") or None
        if launcher is not None and not isinstance(launcher, str):
            raise InvalidKernelSpecMetadata(
                f"kernelspec metadata.raygate.launcher must be a launcher kind, not {launcher!r}",
                "launcher",
            )
        resources = _object(data.get("resources"), "metadata.raygate.resources", "resources")
        runtime_env = data.get("runtime_env") or None
        if runtime_env is not None:
            runtime_env = _object(runtime_env, "metadata.raygate.runtime_env", "runtime_env")
        access: dict[str, Any] = {
            k: data.get(k) for k in ("cluster_access", "ray_access") if k in data
        }
        for key, value in access.items():
            if not isinstance(value, bool):
                raise InvalidKernelSpecMetadata(
                    f"metadata.raygate.{key} must be true or false, not {value!r}"
                )
        typed = {"launcher", "resources", "allow_users", "deny_users", "runtime_env", *access}
        sections = {}
        for key, value in data.items():
            if key not in typed and value is not None:
                sections[key] = _object(value, f"metadata.raygate.{key}", key)
        return cls(
            launcher=launcher,
            resources=resources,
            allow_users=tuple(name_list(data.get("allow_users"))),
            deny_users=tuple(name_list(data.get("deny_users"))),
            runtime_env=runtime_env,
            cluster_access=any(access.values()),
            sections=sections,
        )

    def section(self, name: str) -> dict[str, Any]:
        """A launcher's own block (``metadata.raygate.<name>``), ``{}`` when absent;
        called by that launcher."""
        return self.sections.get(name, {})


def name_list(value: Any) -> list[str]:
    """Usernames from a list or a comma-separated string (kernelspec lists, settings)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return [str(items).strip()]
    return [str(item).strip() for item in items if str(item).strip()]


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

    @functools.cached_property
    def raygate(self) -> KernelSpecMetadata:
        """``metadata.raygate``, typed; parsed on first use (admission's, for a start
        request), raising :class:`InvalidKernelSpecMetadata` there."""
        return KernelSpecMetadata.parse(self.metadata.get("raygate"))

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form, part of :meth:`LaunchRequest.to_record`."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> KernelSpecInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: copy.deepcopy(v) for k, v in data.items() if k in known})


@dataclass
class LaunchRequest:
    """Everything a launcher needs to start one kernel.

    Launchers that persist a request to find its kernel again (the Ray actor's metadata,
    the reattach records of remote launchers, the Kubernetes Secret) and the warm pool use
    :meth:`to_record` and :meth:`from_record`, the one serializer.
    """

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
    account: str | None = None
    """``--kernel-isolation users``: the OS account the kernel runs as (resolved again on the
    host where it runs); None: as the launcher's own account."""
    account_ids: tuple[int, int] | None = None
    """The account's ``(uid, gid)`` as the gateway maps it (the users file's, else the
    gateway host's account): what a Kubernetes pod runs as. None with ``account`` None."""

    def __post_init__(self) -> None:
        if isinstance(self.resources, dict):  # e.g. read back from an old record
            self.resources = ResourceRequest.from_dict(self.resources)
        if self.account_ids is not None:  # a record holds a JSON list
            self.account_ids = (int(self.account_ids[0]), int(self.account_ids[1]))

    def to_record(self) -> dict[str, Any]:
        """Every field, JSON-ready, with ``version``: what a launcher stores to serve the
        kernel again after a gateway restart. Read back with :meth:`from_record`."""
        record: dict[str, Any] = {"version": RECORD_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "spec":
                value = self.spec.to_record()
            elif f.name == "resources":
                value = self.resources.to_dict()
            else:
                value = copy.deepcopy(value)
            record[f.name] = value
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LaunchRequest:
        """The request :meth:`to_record` wrote (records without ``version``, written before
        it existed, have the same keys). Keys it does not know (a launcher's own, such as
        ``created``) are ignored. Raises ValueError for a newer version or a malformed one."""
        version = record.get("version", RECORD_VERSION)
        if not isinstance(version, int) or version > RECORD_VERSION:
            raise ValueError(f"launch record version {version!r} is newer than this gateway's")
        known = {f.name for f in fields(cls)}
        values = {k: copy.deepcopy(v) for k, v in record.items() if k in known}
        try:
            values["spec"] = KernelSpecInfo.from_record(record["spec"])
            values["resources"] = ResourceRequest.from_dict(record.get("resources"))
            values["launch_timeout"] = float(values["launch_timeout"])
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed launch record: {exc!r}") from None


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
    """The name kernelspecs give in ``metadata.raygate.launcher`` (and ``--default-launcher``);
    the launcher's entry point in the ``raygate.launchers`` group has the same name."""

    settings: ClassVar[type | None] = None
    """This launcher's settings: a dataclass whose fields are declared with
    :func:`raygate.settings.setting`, or ``None``. ``raygate serve`` offers each as an option,
    a ``RAYGATE_*`` variable and a config file key, and hands the values to
    :meth:`from_settings`."""

    requires: ClassVar[tuple[str, ...]] = ()
    """Modules the launcher imports only when used; where one is missing the gateway does not
    offer the launcher (an optional dependency not installed)."""

    kernels_outlive_gateway: bool = False
    """Whether the gateway leaves this launcher's kernels running when it stops, to be
    found again (:meth:`find_running`) by the next gateway or served by another replica."""

    @classmethod
    def from_settings(cls, settings: Any, gateway: GatewayConfig) -> Launcher:
        """The launcher for one gateway: called once per gateway by ``create_app``, before
        :meth:`start`, with an instance of :attr:`settings` (``None`` where it declares none)
        and the gateway's own settings (read-only)."""
        return cls()

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

    def ledger_store(self) -> Any:
        """Where the replicas of this deployment share per-user caps: a
        :class:`raygate.kernels.caps.LedgerStore`, or None (the default: each gateway
        counts its own kernels). Called once, by the registry, before :meth:`start`; the
        store is used only after it."""
        return None
