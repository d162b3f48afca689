"""Kernels on a pool of machines reached by SSH.

For each kernel the gateway opens an SSH connection (asyncssh) to one host of the pool,
runs ``python -m raygate.launchers.kernelside.bootstrap --detach`` there with the bootstrap's
settings (the per-kernel secret among them) on stdin, and closes the connection once the
bootstrap has reported to the gateway's report listener. From then on the gateway talks
to the bootstrap's control endpoint directly; SSH is needed again only to stop a kernel
whose bootstrap no longer answers.

Hosts come from ``--ssh-hosts`` or the kernelspec's ``metadata.raygate.ssh.hosts``, each
``[user@]host[:port]``. ``KERNEL_REMOTE_HOST`` pins one of them; otherwise hosts are
tried in round-robin or least-kernels order, and one that cannot be reached is skipped.
Host keys are checked against a known_hosts file; unknown hosts are accepted (and added)
only with ``--ssh-accept-new-host-keys``, and a changed key is always refused.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raygate.settings import Choice, Integer, Items, setting

from .base import KernelHandle, KernelStartError, LaunchRequest
from .remote import (
    RemoteKernel,
    RemoteLauncher,
    RemoteSettings,
    ReportListener,
    describe_resources,
    placement_constraints,
    requested_resources,
)
from .wire import new_secret

if TYPE_CHECKING:
    import asyncssh

    from raygate.config import GatewayConfig

log = logging.getLogger("raygate.launchers.ssh")

SELECTIONS = ("round-robin", "least-kernels")
_USERNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class SSHHost:
    host: str
    port: int = 22
    user: str = ""

    @classmethod
    def parse(cls, text: str, default_port: int = 22) -> SSHHost:
        text = text.strip()
        user, _, rest = text.rpartition("@")
        port = default_port
        if rest.startswith("["):  # [v6 address]:port
            addr, _, tail = rest[1:].partition("]")
            if tail.startswith(":"):
                port = int(tail[1:])
        elif rest.count(":") == 1:
            addr, _, port_text = rest.partition(":")
            port = int(port_text)
        else:
            addr = rest
        if not addr:
            raise ValueError(f"bad SSH host {text!r}")
        return cls(addr, port, user)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        out = host if self.port == 22 else f"{host}:{self.port}"
        return f"{self.user}@{out}" if self.user else out

    def matches(self, text: str) -> bool:
        text = text.strip()
        if text in (self.host, str(self)):
            return True
        try:
            other = SSHHost.parse(text, self.port)
        except ValueError:
            return False
        return (other.host, other.port) == (self.host, self.port)


def parse_hosts(hosts: Any, default_port: int = 22) -> list[SSHHost]:
    if isinstance(hosts, str):
        hosts = hosts.split(",")
    return [SSHHost.parse(h, default_port) for h in hosts or [] if str(h).strip()]


class _HostUnavailable(Exception):
    pass


@dataclass
class SSHSettings(RemoteSettings):
    ssh_hosts: list[str] = setting(
        [], "Comma-separated [user@]host[:port] list the ssh launcher places kernels on.", Items()
    )
    ssh_port: int = setting(22, "Default SSH port.", Integer(1, 65535))
    ssh_user: str = setting(
        "", "Remote account that runs kernels (default: the gateway's own user)."
    )
    ssh_user_from_request: bool = setting(
        False, "Run each kernel as the account its request names in KERNEL_USERNAME."
    )
    ssh_key_file: str = setting("", "Private key for SSH logins (default: ssh's own).")
    ssh_known_hosts: str = setting(
        "", "known_hosts file SSH host keys are checked against (default: ~/.ssh/known_hosts)."
    )
    ssh_accept_new_host_keys: bool = setting(
        False,
        "Trust and record the key of a host known_hosts has no entry for (a changed key "
        "is always refused).",
    )
    ssh_host_selection: str = setting(
        "round-robin",
        "How the ssh launcher picks a host when KERNEL_REMOTE_HOST does not pin one.",
        Choice(SELECTIONS),
    )
    ssh_python: str = setting(
        "", "Python on the SSH hosts that has raygate installed (default: the gateway's)."
    )


class SSHLauncher(RemoteLauncher):
    """Kernels on SSH hosts, each started by a detached bootstrap."""

    kind = "ssh"
    settings = SSHSettings
    requires = ("asyncssh",)  # imported on first use: a gateway without SSH hosts never does

    def __init__(
        self,
        hosts: Any = (),
        port: int = 22,
        user: str = "",
        user_from_request: bool = False,
        key_file: str = "",
        known_hosts: str = "",
        accept_new_host_keys: bool = False,
        selection: str = "round-robin",
        python: str = "",
        connect_timeout: float = 10.0,
        listener: ReportListener | None = None,
        state_dir: str = "",
        report_address: str = "",
    ) -> None:
        super().__init__(listener, state_dir, report_address)
        if selection not in SELECTIONS:
            raise ValueError(f"SSH host selection must be one of {', '.join(SELECTIONS)}")
        self.port = port
        self.hosts = parse_hosts(hosts, port)
        self.user = user
        self.user_from_request = user_from_request
        self.key_file = key_file
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        self.accept_new_host_keys = accept_new_host_keys
        self.selection = selection
        self.python = python or sys.executable
        self.connect_timeout = connect_timeout
        self._next: dict[tuple[SSHHost, ...], int] = {}

    @classmethod
    def from_settings(cls, settings: SSHSettings, gateway: GatewayConfig) -> SSHLauncher:
        return cls(
            hosts=settings.ssh_hosts,
            port=settings.ssh_port,
            user=settings.ssh_user,
            user_from_request=settings.ssh_user_from_request,
            key_file=settings.ssh_key_file,
            known_hosts=settings.ssh_known_hosts,
            accept_new_host_keys=settings.ssh_accept_new_host_keys,
            selection=settings.ssh_host_selection,
            python=settings.ssh_python,
            **cls.remote_options(settings, gateway),
        )

    # -- choosing --

    def _pool(self, request: LaunchRequest) -> list[SSHHost]:
        ssh_meta = request.spec.raygate.section("ssh")
        try:
            hosts = parse_hosts(ssh_meta["hosts"], self.port) if "hosts" in ssh_meta else self.hosts
        except ValueError as exc:
            raise KernelStartError(f"kernelspec {request.spec.name}: {exc}") from None
        if not hosts:
            raise KernelStartError(
                "no SSH hosts are configured (--ssh-hosts, or the kernelspec's "
                "metadata.raygate.ssh.hosts)"
            )
        return hosts

    def _order(self, hosts: list[SSHHost], request: LaunchRequest) -> list[SSHHost]:
        pin = request.env.get("KERNEL_REMOTE_HOST", "").strip()
        if pin:
            chosen = [h for h in hosts if h.matches(pin)]
            if not chosen:
                raise KernelStartError(
                    f"KERNEL_REMOTE_HOST={pin} is not one of this kernel's SSH hosts: "
                    + ", ".join(map(str, hosts)),
                    status=400,
                )
            return chosen
        if self.selection == "least-kernels":
            counts = {h: 0 for h in hosts}
            for kernel in self.kernels.values():
                for h in hosts:
                    if kernel.placement.get("ssh_host") == str(h):
                        counts[h] += 1
            return sorted(hosts, key=lambda h: counts[h])  # stable: ties keep list order
        start = self._next.get(tuple(hosts), 0) % len(hosts)
        return hosts[start:] + hosts[:start]

    def _user(self, host: SSHHost, request: LaunchRequest) -> str:
        if request.account:
            return request.account  # --kernel-isolation users: the user's own account
        if self.user_from_request and request.username:
            if not _USERNAME.match(request.username):
                raise KernelStartError(
                    f"KERNEL_USERNAME {request.username!r} is not a valid user name", status=400
                )
            return request.username
        return host.user or self.user or getpass.getuser()

    # -- launching --

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        await self.listen()
        deadline = time.monotonic() + request.launch_timeout
        hosts = self._pool(request)
        order = self._order(hosts, request)
        wanted = requested_resources(request)
        if wanted or placement_constraints(request):
            log.info(
                "kernel %s: SSH hosts reserve nothing; its request (%s) is not enforced",
                request.kernel_id,
                "; ".join([describe_resources(wanted), *placement_constraints(request)]),
            )
        errors = []
        for host in order:
            try:
                kernel = await self._launch_on(host, request, deadline)
            except _HostUnavailable as exc:
                log.warning("kernel %s: skipping SSH host %s: %s", request.kernel_id, host, exc)
                errors.append(f"{host}: {exc}")
                continue
            self._next[tuple(hosts)] = hosts.index(host) + 1
            return kernel
        raise KernelStartError(
            "no SSH host could be reached (" + "; ".join(errors) + ")",
            status=503,
        )

    def _connect_options(self, user: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "username": user,
            "connect_timeout": self.connect_timeout,
            "known_hosts": self.known_hosts,
        }
        if self.key_file:
            options["client_keys"] = [os.path.expanduser(self.key_file)]
        if self.accept_new_host_keys:
            if not os.path.exists(self.known_hosts):
                os.makedirs(os.path.dirname(self.known_hosts) or ".", mode=0o700, exist_ok=True)
                os.close(os.open(self.known_hosts, os.O_CREAT | os.O_WRONLY, 0o600))
            from .ssh_trust import AcceptNewHostKeys

            options["client_factory"] = lambda: AcceptNewHostKeys(self.known_hosts)
        return options

    async def _connect(self, host: SSHHost, user: str) -> asyncssh.SSHClientConnection:
        import asyncssh

        try:
            return await asyncssh.connect(host.host, host.port, **self._connect_options(user))
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise _HostUnavailable(str(exc) or type(exc).__name__) from None

    async def _launch_on(
        self, host: SSHHost, request: LaunchRequest, deadline: float
    ) -> RemoteKernel:
        user = self._user(host, request)
        conn = await self._connect(host, user)
        secret = new_secret()
        report = self.listener.expect(request.kernel_id, secret)
        try:
            report_host = self.report_address or conn.get_extra_info("sockname")[0]
            placement = {
                "launcher": self.kind,
                "host": host.host,
                "ssh_host": str(host),
                "user": user,
            }
            settings = self.bootstrap_settings(request, secret, report_host, placement)
            settings["report"]["timeout"] = max(1.0, deadline - time.monotonic())
            command = shlex.join(
                [self.python, "-m", "raygate.launchers.kernelside.bootstrap", "--detach"]
            )
            try:
                result = await asyncio.wait_for(
                    conn.run(command, input=json.dumps(settings), check=False),
                    max(1.0, deadline - time.monotonic()),
                )
            except TimeoutError:
                raise KernelStartError(
                    f"the bootstrap on {host} did not report within {request.launch_timeout:g}s",
                    status=504,
                ) from None
            if result.exit_status != 0:
                detail = str(result.stderr or "").strip() or f"exit status {result.exit_status}"
                raise KernelStartError(f"the kernel bootstrap on {host} failed: {detail}")
            try:
                payload = await asyncio.wait_for(report, 5.0)
            except TimeoutError:
                raise KernelStartError(
                    f"the bootstrap on {host} says it reported, but no report arrived"
                ) from None
        finally:
            self.listener.forget(request.kernel_id)
            conn.close()
        kernel = self.from_report(request, secret, payload, placement)
        log.info(
            "kernel %s: running on %s as %s (pid %s)",
            request.kernel_id,
            host,
            user,
            kernel.placement.get("pid"),
        )
        return kernel

    async def force_stop(self, kernel: RemoteKernel) -> None:
        """Kill the bootstrap over SSH (the kernel dies with it)."""
        pid = kernel.extra.get("bootstrap_pid")
        host_text = kernel.placement.get("ssh_host")
        if not pid or not host_text:
            return
        import asyncssh

        host = SSHHost.parse(host_text, self.port)
        try:
            conn = await self._connect(host, kernel.placement.get("user") or self.user)
        except _HostUnavailable as exc:
            log.warning("kernel %s: cannot reach %s to stop it: %s", kernel.kernel_id, host, exc)
            return
        try:
            await conn.run(f"kill -TERM {int(pid)}", check=False, timeout=10)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            log.warning("kernel %s: kill over SSH failed: %s", kernel.kernel_id, exc)
        finally:
            conn.close()
