"""Kernels as subprocesses of the gateway, on the gateway's own machine."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import tempfile

from .base import ConnectionInfo, KernelHandle, KernelStartError, Launcher, LaunchRequest
from .process import format_argv, signal_group, spawn_kernel, tail, terminate, write_connection_file


def kernel_env(request: LaunchRequest, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a kernel starts with: base, then the kernelspec's, then the request's."""
    env = dict(os.environ if base is None else base)
    env.update(request.spec.env)
    env.update(request.env)
    env["KERNEL_ID"] = request.kernel_id
    if request.username:
        env["KERNEL_USERNAME"] = request.username
    return env


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class LocalKernel(KernelHandle):
    def __init__(
        self,
        request: LaunchRequest,
        connection: ConnectionInfo,
        connection_file: str,
        log_path: str,
    ) -> None:
        super().__init__(request, connection)
        self.connection_file = connection_file
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.placement = {"launcher": "local", "host": "localhost"}

    def _spawn(self) -> None:
        argv = format_argv(self.request.spec.argv, self.connection_file)
        cwd = self.request.cwd if self.request.cwd and os.path.isdir(self.request.cwd) else None
        try:
            self.proc = spawn_kernel(argv, kernel_env(self.request), self.log_path, cwd=cwd)
        except OSError as exc:
            # Out of file descriptors is the gateway's state, not the kernel's: 503, retry later.
            status = 503 if exc.errno in (errno.EMFILE, errno.ENFILE) else 500
            raise KernelStartError(
                f"Could not run kernel command {argv[0]!r}: {exc}", status
            ) from exc
        self.placement["pid"] = self.proc.pid

    async def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def signal(self, signum: int) -> None:
        if self.proc is not None:
            signal_group(self.proc, signum)

    async def restart(self) -> ConnectionInfo:
        if self.proc is not None:
            await terminate(self.proc)
        self._spawn()
        return self.connection

    async def shutdown(self) -> None:
        if self.proc is not None:
            await terminate(self.proc)
        # Off the event loop: on a busy disk an unlink took ~10 ms, a stall for every
        # other kernel's traffic (seen shutting down 200 kernels).
        await asyncio.to_thread(_remove, self.connection_file, self.log_path)

    async def failure_reason(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        status = ""
        if code is not None:
            status = (
                f"killed by signal {signal.Signals(-code).name}"
                if code < 0
                else f"exited with code {code}"
            )
        output = tail(self.log_path)
        return f"{status}: {output}" if status and output else status or output


class LocalLauncher(Launcher):
    """Each kernel a child process of the gateway; kernels die with the gateway."""

    kind = "local"

    def __init__(self, ip: str = "127.0.0.1") -> None:
        self.ip = ip
        self.runtime_dir = ""

    async def start(self) -> None:
        self.runtime_dir = tempfile.mkdtemp(prefix="raygate-local-")

    async def close(self) -> None:
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        if not self.runtime_dir:
            await self.start()
        path = os.path.join(self.runtime_dir, f"kernel-{request.kernel_id}.json")
        try:
            info = write_connection_file(path, self.ip, request.encryption)
        except ValueError as exc:
            raise KernelStartError(str(exc)) from None
        kernel = LocalKernel(
            request,
            ConnectionInfo.from_dict(info),
            connection_file=path,
            log_path=os.path.join(self.runtime_dir, f"kernel-{request.kernel_id}.log"),
        )
        kernel._spawn()
        return kernel
