"""The kernel supervisor: the one piece of code that owns a kernel process.

Wherever raygate starts a kernel (the local launcher in the gateway, the Ray kernel actor
on the node Ray chose, the remote bootstrap on an SSH host, Dask worker, pod or YARN
container), a :class:`KernelSupervisor` does it:

* makes the kernel's runtime directory (0700) and connection file (0600; with Curve, the
  kernel's secret key is made here and never leaves this host) and its log;
* composes the kernel's environment (:func:`.env.kernel_env`, one order of precedence);
* resolves its argv (``{connection_file}``; ``python`` means this process's interpreter,
  :func:`.process.format_argv`) and working directory (one that does not exist here is
  ignored, as kernels started by jupyter_client do);
* spawns it with signals unblocked, in its own session, dying with the thread that
  spawned it (:func:`.process.spawn_kernel`), optionally as another OS account
  (:class:`.account.Account`: the kernel's files become that account's own);
* signals, stops and restarts it (same ports, same key), describes its exit with the tail
  of its output, and optionally keeps its recent iopub output (:mod:`.keeper`) and tells
  a callback when it exits on its own;
* enforces its memory and CPU limits (:mod:`.limits`: a cgroup of its own, joined before
  exec and kept across restarts, else a watchdog), and says so when it stopped the kernel
  for its memory.

It is synchronous where it does not wait and asynchronous where it does (:meth:`stop`,
:meth:`restart`), so the gateway's and the bootstrap's event loops never block on a
kernel; the Ray actor, a threaded actor, runs those with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from .account import Account, AccountError, give, needs_switch
from .env import kernel_env
from .keeper import OutputKeeper
from .limits import Enforcer, KernelLimits
from .process import (
    describe_exit,
    format_argv,
    signal_group,
    spawn_kernel,
    tail,
    terminate,
    wait_exit,
    write_connection_file,
)

__all__ = ["KernelCommand", "KernelSupervisor", "SpawnError"]

SHUTDOWN_WAIT = 3.0
"""Seconds a kernel asked to shut down for a restart has to exit by itself before it is
stopped with signals (jupyter_client gives it its ``shutdown_wait_time``, 5 s)."""


class SpawnError(Exception):
    """The kernel process could not be started; ``str(exc)`` is for the user.

    ``errno`` is the OS error's number when there was one (e.g. ``EMFILE``: the host is
    out of file descriptors, a reason to retry later rather than the kernel's fault).
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass
class KernelCommand:
    """What to run for one kernel, as its kernelspec and its start request say.

    A warm kernel handed to a request (the Ray actor's ``assign``) gets a new command with
    that request's env, user and working directory, which its next restart uses.
    """

    kernel_id: str
    argv: list[str]
    """The kernelspec's argv, with ``{connection_file}`` (and ``{resource_dir}``) fields."""
    spec_env: dict[str, str] = field(default_factory=dict)
    request_env: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    cwd: str | None = None
    resource_dir: str = ""


class KernelSupervisor:
    """Owns one kernel process; see the module docstring.

    Constructed by the local launcher (``LocalLauncher.launch``), the Ray kernel actor and
    the bootstrap; :meth:`start` then makes the files and spawns the kernel.

    ``ip``: the address the kernel's sockets bind (written to its connection file).
    ``encryption``: ``"none"`` or ``"curve"``. ``defaults`` and ``assigned``: the place's
    layers of the environment, below the kernelspec and above the request respectively
    (:mod:`.env`); ``host_env``: the host layer (default ``os.environ``).
    ``keep_output_bytes``: bound of the kept iopub output (0: no keeper).
    ``account``: run the kernel as this OS account (the supervisor must then be root,
    unless it is its own). ``runtime_root``: where the kernel's directory is made (default:
    the system's temporary directory). ``spawner``: an executor whose one long-lived
    thread forks every kernel process (the death signal fires when the forking *thread*
    ends; Ray runs actor methods on threads that come and go). ``on_exit``: called with
    :meth:`exit_reason` from a watcher thread when the kernel exits without having been
    asked to. ``limits``: the kernel's memory and CPU limits (:class:`.limits.KernelLimits`),
    enforced as this host allows (``RAYGATE_KERNEL_LIMITS``).
    """

    def __init__(
        self,
        command: KernelCommand,
        *,
        ip: str,
        encryption: str = "none",
        defaults: Mapping[str, str] | None = None,
        assigned: Mapping[str, str] | None = None,
        host_env: Mapping[str, str] | None = None,
        keep_output_bytes: int = 0,
        account: Account | None = None,
        runtime_root: str | None = None,
        spawner: Executor | None = None,
        on_exit: Callable[[str], None] | None = None,
        limits: KernelLimits | None = None,
    ) -> None:
        self.command = command
        self.ip = ip
        self.encryption = encryption
        self.defaults = dict(defaults or {})
        self.assigned = dict(assigned or {})
        self.host_env = host_env
        self.keep_output_bytes = keep_output_bytes
        self.account = account
        self.runtime_root = runtime_root
        self.spawner = spawner
        self.on_exit = on_exit
        self.runtime_dir = ""
        self.connection_file = ""
        self.log_path = ""
        self.connection: dict[str, Any] = {}
        """The connection file's content as the gateway is told it: no Curve secret key,
        the HMAC key as text."""
        self.keeper: OutputKeeper | None = None
        self.proc: subprocess.Popen | None = None
        self._expected_exit = False
        self._exit_reason = ""
        self._lock = threading.RLock()
        # The mechanism is this host's choice (its environment), not the kernel's.
        self.enforcer = Enforcer(command.kernel_id, limits or KernelLimits(), os.environ)
        needs_switch(account)  # fail before anything is made when we cannot become it

    @property
    def kernel_id(self) -> str:
        return self.command.kernel_id

    # -- starting ------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Make the runtime directory and connection file, start the keeper and the
        kernel; returns :attr:`connection`. Raises :class:`SpawnError`, or ValueError for
        an encryption this host cannot do. Whatever was made is removed on failure."""
        try:
            self.runtime_dir = tempfile.mkdtemp(
                prefix=f"raygate-kernel-{self.kernel_id[:8]}-", dir=self.runtime_root
            )
            give(self.runtime_dir, self.account, 0o700)
            self.connection_file = os.path.join(self.runtime_dir, "connection.json")
            self.log_path = os.path.join(self.runtime_dir, "kernel.log")
            self.connection = write_connection_file(self.connection_file, self.ip, self.encryption)
            give(self.connection_file, self.account, 0o600)
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.close(fd)
            give(self.log_path, self.account, 0o600)
            self.keeper = self._start_keeper()
            self.spawn()
        except BaseException:
            self.close()
            raise
        return self.connection

    def _start_keeper(self) -> OutputKeeper | None:
        if self.keep_output_bytes <= 0:
            return None
        return OutputKeeper(
            self.iopub_url(), self.keep_output_bytes, self.connection.get("curve_publickey")
        )

    def iopub_url(self) -> str:
        """Where this host reaches the kernel's iopub (the keeper subscribes there)."""
        return self._url("iopub")

    def _url(self, channel: str) -> str:
        host = "127.0.0.1" if self.ip in ("", "0.0.0.0", "::") else self.ip
        return f"tcp://{host}:{self.connection[f'{channel}_port']}"

    def send_control(self, msg_type: str, content: dict[str, Any]) -> None:
        """Send the kernel a control message (``interrupt_request``, ``shutdown_request``)
        without waiting for its reply, which goes nowhere. Called by :meth:`restart` and by
        the Ray actor's message-mode interrupt."""
        import zmq
        from jupyter_client.session import Session

        from raygate.launchers.base import ConnectionInfo

        info = self.connection
        session = Session(
            key=info["key"].encode(), signature_scheme=info.get("signature_scheme", "hmac-sha256")
        )
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        # close() returns at once and the message still goes out, within the linger: 1 s
        # lost a message-mode interrupt on a loaded machine (the connect had not finished).
        sock.linger = 10_000
        ConnectionInfo.from_dict(info).secure(sock)
        try:
            sock.connect(self._url("control"))
            session.send(sock, session.msg(msg_type, content))
        finally:
            sock.close()

    def env(self) -> dict[str, str]:
        """The kernel's environment for the current :attr:`command`."""
        command = self.command
        return kernel_env(
            command.kernel_id,
            host=os.environ if self.host_env is None else self.host_env,
            defaults=self.defaults,
            spec=command.spec_env,
            request=command.request_env,
            username=command.username,
            assigned=self.assigned,
            account=self.account,
        )

    def argv(self) -> list[str]:
        """The kernel's argv, fields filled, ``python`` resolved to this interpreter."""
        return format_argv(self.command.argv, self.connection_file, self.command.resource_dir)

    def cwd(self) -> str | None:
        cwd = self.command.cwd
        return cwd if cwd and os.path.isdir(cwd) else None

    def spawn(self) -> None:
        """Start the kernel process (called by :meth:`start` and :meth:`restart`)."""
        argv = self.argv()
        if not argv:
            raise SpawnError("the kernelspec's argv is empty")
        cgroup_procs = self.enforcer.prepare()
        args = (argv, self.env(), self.log_path, self.cwd(), self.account, cgroup_procs)
        try:
            if self.spawner is not None:
                proc = self.spawner.submit(spawn_kernel, *args).result()
            else:
                proc = spawn_kernel(*args)
        except AccountError as exc:
            raise SpawnError(str(exc)) from None
        except OSError as exc:
            raise SpawnError(f"could not run kernel command {argv[0]!r}: {exc}", exc.errno) from exc
        except subprocess.SubprocessError as exc:  # the child failed to join or switch
            raise SpawnError(f"could not start kernel command {argv[0]!r}: {exc}") from None
        self.enforcer.started(proc.pid)
        with self._lock:
            self.proc = proc
            self._expected_exit = False
            self._exit_reason = ""
        if self.on_exit is not None:
            threading.Thread(
                target=self._watch, args=(proc,), name="kernel-watch", daemon=True
            ).start()

    def _watch(self, proc: subprocess.Popen) -> None:
        code = proc.wait()
        with self._lock:
            if proc is not self.proc or self._expected_exit:
                return
            self._exit_reason = self._describe(code)
            reason = self._exit_reason
        assert self.on_exit is not None
        self.on_exit(reason)

    # -- what callers ask ------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        with self._lock:
            return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal); None while it runs or
        before it was started."""
        with self._lock:
            return self.proc.poll() if self.proc is not None else None

    def signal(self, signum: int) -> None:
        """Signal the kernel's process group."""
        with self._lock:
            proc = self.proc
        if proc is not None:
            signal_group(proc, signum)

    def output_tail(self) -> str:
        """The last lines the kernel wrote to stdout and stderr."""
        return tail(self.log_path) if self.log_path else ""

    def _describe(self, code: int | None) -> str:
        output = self.output_tail()
        status = describe_exit(code) if code is not None else ""
        if code is not None:
            status = self.enforcer.over_limit() or status
        return f"{status}: {output}" if status and output else status or output

    def exit_reason(self) -> str:
        """Why the kernel is not running, in words with its output's tail ("exited with
        code 3: ...", "killed by signal SIGKILL: ..."); while it runs, its output's tail
        (empty when it wrote nothing)."""
        with self._lock:
            if self._exit_reason:
                return self._exit_reason
        return self._describe(self.returncode())

    def kept_output(
        self, after: Sequence[str], max_bytes: int = 0
    ) -> tuple[list, bool, int] | None:
        """The keeper's :meth:`~.keeper.OutputKeeper.after`; None without a keeper."""
        return None if self.keeper is None else self.keeper.after(after, max_bytes)

    # -- stopping and restarting ----------------------------------------------------

    async def stop(self, ask_first: bool = False) -> None:
        """Stop the kernel process (SIGTERM to its group, SIGKILL after a grace period);
        an exit asked for is not reported to ``on_exit``. The files stay for a restart.
        ``ask_first``: first send it a ``shutdown_request`` for a restart and give it
        :data:`SHUTDOWN_WAIT` to exit by itself, as jupyter_client does (the kernel runs its
        shutdown code, and publishes its ``shutdown_reply`` on iopub)."""
        with self._lock:
            proc = self.proc
            self._expected_exit = True  # before asking: its exit must not read as a death
        if proc is not None:
            if ask_first and proc.poll() is None:
                try:
                    self.send_control("shutdown_request", {"restart": True})
                except Exception:
                    pass  # stopped with signals below, as a kernel that does not answer
                await wait_exit(proc, SHUTDOWN_WAIT)
            await terminate(proc)
        self.enforcer.stopped()

    async def restart(self) -> dict[str, Any]:
        """A fresh kernel process on the same ports with the same key, the old one asked
        to shut down first; returns :attr:`connection`. Raises :class:`SpawnError`."""
        await self.stop(ask_first=True)
        self.spawn()
        if self.keeper is not None:  # the same port; a new key would be followed too
            self.keeper.retarget(self.iopub_url(), self.connection.get("curve_publickey"))
        return self.connection

    def close(self) -> None:
        """Release the keeper and the kernel's files; call after :meth:`stop`."""
        if self.keeper is not None:
            self.keeper.close()
            self.keeper = None
        self.enforcer.close()
        if self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    async def shutdown(self) -> None:
        """Stop the kernel for good and remove its files."""
        await self.stop()
        # Off the event loop: on a busy disk removing files took ~10 ms, a stall for every
        # other kernel's traffic (seen shutting down 200 kernels).
        await asyncio.to_thread(self.close)
