"""Kernels as subprocesses of the gateway, on the gateway's own machine."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from raygate.launchers.kernelside.isolation import cluster_access, kernel_host_env

from .base import ConnectionInfo, KernelHandle, KernelStartError, Launcher, LaunchRequest
from .kernelside.account import Account, AccountError
from .kernelside.limits import KernelLimits
from .kernelside.supervisor import KernelCommand, KernelSupervisor, SpawnError


def kernel_command(request: LaunchRequest) -> KernelCommand:
    """What a launch request asks the kernel supervisor to run."""
    return KernelCommand(
        kernel_id=request.kernel_id,
        argv=list(request.spec.argv),
        spec_env=dict(request.spec.env),
        request_env=dict(request.env),
        username=request.username,
        cwd=request.cwd,
    )


def start_error(exc: SpawnError) -> KernelStartError:
    # Out of file descriptors is the gateway's state, not the kernel's: 503, retry later.
    status = 503 if exc.errno in (errno.EMFILE, errno.ENFILE) else 500
    return KernelStartError(str(exc), status)


class LocalKernel(KernelHandle):
    """A kernel its :class:`KernelSupervisor` runs in the gateway's process tree."""

    def __init__(self, request: LaunchRequest, supervisor: KernelSupervisor) -> None:
        super().__init__(request, ConnectionInfo.from_dict(supervisor.connection))
        self.supervisor = supervisor
        self.placement = {"launcher": "local", "host": "localhost", "pid": supervisor.pid}

    async def is_alive(self) -> bool:
        return self.supervisor.alive()

    async def signal(self, signum: int) -> None:
        self.supervisor.signal(signum)

    async def restart(self) -> ConnectionInfo:
        try:
            await self.supervisor.restart()
        except SpawnError as exc:
            raise start_error(exc) from None
        self.placement["pid"] = self.supervisor.pid
        return self.connection

    async def shutdown(self) -> None:
        await self.supervisor.shutdown()

    async def failure_reason(self) -> str:
        return self.supervisor.exit_reason()


class LocalLauncher(Launcher):
    """Each kernel a child process of the gateway; kernels die with the gateway."""

    kind = "local"

    def __init__(self, ip: str = "127.0.0.1") -> None:
        self.ip = ip
        self.runtime_dir = ""

    async def start(self) -> None:
        self.runtime_dir = tempfile.mkdtemp(prefix="raygate-local-")
        # Kernels run as other accounts reach their own 0700 directories in it; nobody may
        # list it.
        os.chmod(self.runtime_dir, 0o711)

    async def close(self) -> None:
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def account_for(self, request: LaunchRequest) -> Account | None:
        """The OS account the request's kernel runs as; None (the default): the gateway's
        own. With ``--kernel-isolation users``, the request's account on this host."""
        return Account.lookup(request.account) if request.account else None

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        if not self.runtime_dir:
            await self.start()
        try:
            account = self.account_for(request)
            granted = cluster_access(
                request.spec.metadata.get("raygate"), "users" if account else "none"
            )
            supervisor = KernelSupervisor(
                kernel_command(request),
                ip=self.ip,
                encryption=request.encryption,
                account=account,
                host_env=kernel_host_env(os.environ, account, granted),
                runtime_root=self.runtime_dir,
                limits=KernelLimits.from_resources(request.resources),
            )
            supervisor.start()
        except AccountError as exc:
            raise KernelStartError(str(exc), 403) from None
        except SpawnError as exc:
            raise start_error(exc) from None
        except ValueError as exc:  # an encryption this host cannot do
            raise KernelStartError(str(exc)) from None
        return LocalKernel(request, supervisor)
