"""The kernel-side bootstrap: ``python -m raygate.launchers.kernelside.bootstrap``.

Remote environments (an SSH host, a Dask worker, later a pod or a YARN container) run
this program to start one kernel where they are. It

1. reads its settings, a JSON object, from ``--config-file`` (the file is removed once
   read), else from the ``RAYGATE_BOOTSTRAP_SETTINGS`` variable (pods, YARN containers:
   removed from the environment once read), else from stdin; the per-kernel secret is in
   it (``secret``, base64) or in the ``RAYGATE_KERNEL_SECRET`` variable, never on the
   command line;
2. starts the kernel through the kernel supervisor (:mod:`.supervisor`: signals
   unblocked, its own session, killed if the bootstrap dies);
3. opens a small control endpoint for interrupt, restart, shutdown, liveness and the
   kernel's kept output (:mod:`.keeper`);
4. reports the kernel's connection info and the control port to the gateway's report
   listener, sealed with the secret (:mod:`raygate.launchers.wire`), and waits for the
   gateway's sealed acknowledgement; without one it stops the kernel and fails.

It then serves control requests until told to shut down, or until the kernel has been
dead for ``linger`` seconds without a restart being asked for. It stops the kernel on
SIGTERM/SIGINT, and the kernel dies with it whatever the cause.

With ``--detach`` (used over SSH) it forks into the background once the gateway has the
report, prints ``{"pid": ..., "control_port": ...}`` and exits, so the SSH session can
end while the kernel lives on.

Settings: ``kernel_id``, ``secret``, ``argv`` (kernelspec argv with
``{connection_file}``), ``spec_env`` and ``env`` (the kernelspec's and the request's
variables), ``username``, ``cwd``, ``account`` (an :class:`.account.Account` as a dict:
run the kernel as that OS account; the bootstrap must then run as root),
``report`` (``{"host", "port"}``), ``ip`` (address the kernel and control endpoint bind;
default: the address an SSH client reached, else all interfaces), ``advertise`` (address
the gateway should use; default: the ``RAYGATE_ADVERTISE_ADDRESS`` variable, e.g. a pod's
IP from the downward API, else this host's address), ``control_port`` (default: any free port), ``linger`` (default
60 s), ``placement`` (echoed back in the report), ``encryption`` (``curve``: the kernel's
sockets are CurveZMQ servers with a keypair made here; only the public key is reported),
``keep_output_bytes`` (bound of the kernel's recent output kept here for a gateway
restarted after a crash, :mod:`.keeper`; default 32 MiB, 0: none).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any

from ..wire import (
    CONTROL,
    CONTROL_REPLY,
    REPORT,
    REPORT_ACK,
    ChannelError,
    converse,
    decode_secret,
    read_frame,
    seal,
    sealed_kernel_id,
    send_hello,
    unseal,
    write_frame,
)
from .account import Account, AccountError
from .isolation import kernel_host_env
from .keeper import KEEP_BYTES
from .limits import KernelLimits
from .process import tail
from .supervisor import KernelCommand, KernelSupervisor, SpawnError

log = logging.getLogger("raygate.bootstrap")

SECRET_ENV = "RAYGATE_KERNEL_SECRET"
SETTINGS_ENV = "RAYGATE_BOOTSTRAP_SETTINGS"
BASE64_SETTINGS = "base64:"
ADVERTISE_ENV = "RAYGATE_ADVERTISE_ADDRESS"
REPORT_TIMEOUT = 30.0
KEPT_PAGE_BYTES = 600_000
"""Bytes of kept output per control reply: base64 of it must fit the channel's 1 MiB frame."""


class BootstrapError(Exception):
    pass


def load_config(config_file: str | None, keep: bool = False) -> dict[str, Any]:
    """The settings, from a file (removed unless ``keep``), the settings variable or stdin."""
    try:
        if not config_file and os.environ.get(SETTINGS_ENV):
            text = os.environ.pop(SETTINGS_ENV)
            # base64 where the variable travels through a shell script that does not escape
            # it (a YARN NodeManager's launch_container.sh writes export K="V" as it is)
            if text.startswith(BASE64_SETTINGS):
                text = base64.b64decode(text[len(BASE64_SETTINGS) :]).decode()
        elif config_file:
            with open(config_file) as f:
                text = f.read()
            if not keep:
                try:
                    os.unlink(config_file)
                except OSError:
                    pass
        else:
            text = sys.stdin.read()
        config = json.loads(text)
    except (OSError, ValueError) as exc:
        raise BootstrapError(f"cannot read the bootstrap settings: {exc}") from exc
    if not isinstance(config, dict):
        raise BootstrapError("the bootstrap settings must be a JSON object")
    secret_text = config.pop("secret", None) or os.environ.pop(SECRET_ENV, "")
    try:
        config["secret"] = decode_secret(secret_text)
    except ChannelError as exc:
        raise BootstrapError(str(exc)) from None
    for key in ("kernel_id", "argv", "report"):
        if not config.get(key):
            raise BootstrapError(f"the bootstrap settings lack {key!r}")
    if not isinstance(config["argv"], list) or not all(isinstance(a, str) for a in config["argv"]):
        raise BootstrapError("'argv' must be a list of strings")
    return config


def _ssh_addresses() -> tuple[str, str]:
    """(client, server) addresses of the SSH connection that started us, if any."""
    parts = os.environ.get("SSH_CONNECTION", "").split()
    return (parts[0], parts[2]) if len(parts) == 4 else ("", "")


def bind_and_advertise(config: dict[str, Any]) -> tuple[str, str]:
    bind = config.get("ip") or _ssh_addresses()[1] or "0.0.0.0"
    advertise = config.get("advertise") or os.environ.get(ADVERTISE_ENV, "")
    if not advertise:
        advertise = bind
        if bind in ("0.0.0.0", "::"):
            try:
                advertise = socket.gethostbyname(socket.gethostname())
            except OSError:
                advertise = socket.gethostname()
    return bind, advertise


def kernel_command(config: dict[str, Any]) -> KernelCommand:
    """What the bootstrap's settings ask the kernel supervisor to run."""

    def variables(key: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in (config.get(key) or {}).items()}

    return KernelCommand(
        kernel_id=config["kernel_id"],
        argv=list(config["argv"]),
        spec_env=variables("spec_env"),
        request_env=variables("env"),
        username=config.get("username") or None,
        cwd=config.get("cwd") or None,
    )


class Bootstrap:
    def __init__(self, config: dict[str, Any], runtime_dir: str) -> None:
        self.config = config
        self.kernel_id: str = config["kernel_id"]
        self.secret: bytes = config["secret"]
        self.bind, self.advertise = bind_and_advertise(config)
        self.linger = float(config.get("linger", 60.0))
        try:
            # An account by name (--kernel-isolation users) is looked up on this host.
            named = config.get("account")
            account = (
                (Account.lookup(named) if isinstance(named, str) else Account.from_dict(named))
                if named
                else None
            )
            self.supervisor = KernelSupervisor(
                kernel_command(config),
                ip=self.bind,
                encryption=config.get("encryption") or "none",
                keep_output_bytes=int(config.get("keep_output_bytes", KEEP_BYTES)),
                account=account,
                host_env=kernel_host_env(os.environ, account, bool(config.get("cluster_access"))),
                runtime_root=runtime_dir,
                limits=KernelLimits.from_dict(config.get("limits")),
            )
        except (AccountError, KeyError, TypeError, ValueError) as exc:
            raise BootstrapError(f"bad kernel settings: {exc}") from None
        self.connection: dict[str, Any] = {}
        """The supervisor's connection info with the address the gateway should use."""
        self.server: asyncio.base_events.Server | None = None
        self.done = asyncio.Event()
        self.died_at: float | None = None
        self.busy = asyncio.Lock()

    @property
    def control_port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    # -- the kernel process -------------------------------------------------------

    def kept_output(self, request: dict[str, Any]) -> dict[str, Any]:
        """One page of kept output (the control channel's frames are bounded), base64."""
        after = request.get("after") or []
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            return {"ok": False, "error": "'after' must be a list of message ids"}
        kept = self.supervisor.kept_output(after, KEPT_PAGE_BYTES)
        if kept is None:
            return {"ok": False, "error": "this kernel keeps no output"}
        messages, complete, skipped = kept
        return {
            "ok": True,
            "messages": [[base64.b64encode(f).decode() for f in m] for m in messages],
            "complete": complete,
            "skipped": skipped,
        }

    def alive(self) -> bool:
        return self.supervisor.alive()

    def status(self) -> dict[str, Any]:
        alive = self.supervisor.alive()
        out: dict[str, Any] = {
            "ok": True,
            "alive": alive,
            "pid": self.supervisor.pid,
            "bootstrap_pid": os.getpid(),
        }
        if not alive:
            out["exit_code"] = self.supervisor.returncode()
            out["reason"] = self.supervisor.exit_reason()
        return out

    # -- starting -----------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Start the kernel and the control endpoint, report to the gateway."""
        self.server = await asyncio.start_server(
            self._serve_control, self.bind, int(self.config.get("control_port") or 0)
        )
        try:
            # With Curve the secret key is made here and never leaves this host.
            info = self.supervisor.start()
        except (SpawnError, ValueError) as exc:
            raise BootstrapError(str(exc)) from None
        log.info("kernel %s: started pid %s", self.kernel_id, self.supervisor.pid)
        self.connection = {**info, "ip": self.advertise}
        report = {
            "connection": self.connection,
            "control": {"host": self.advertise, "port": self.control_port},
            "pid": self.supervisor.pid,
            "bootstrap_pid": os.getpid(),
            "hostname": socket.gethostname(),
            "placement": self.config.get("placement") or {},
        }
        try:
            await self._report(report)
        except BaseException:
            await self.supervisor.stop()
            raise
        return {"pid": os.getpid(), "kernel_pid": report["pid"], "control_port": self.control_port}

    async def _report(self, report: dict[str, Any]) -> None:
        target = self.config["report"]
        host = target.get("host") or _ssh_addresses()[0] or "127.0.0.1"
        port = int(target["port"])
        deadline = time.monotonic() + float(target.get("timeout", REPORT_TIMEOUT))
        delay = 0.2
        while True:
            try:
                await converse(
                    host,
                    port,
                    self.secret,
                    self.kernel_id,
                    REPORT,
                    REPORT_ACK,
                    report,
                    timeout=max(1.0, deadline - time.monotonic()),
                )
                log.info("kernel %s: reported to the gateway at %s:%d", self.kernel_id, host, port)
                return
            except ChannelError as exc:
                raise BootstrapError(
                    f"the gateway at {host}:{port} did not accept the kernel's report ({exc})"
                ) from None
            except (TimeoutError, OSError) as exc:
                if time.monotonic() + delay >= deadline:
                    raise BootstrapError(
                        f"could not reach the gateway at {host}:{port} to report: {exc}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- serving --------------------------------------------------------------------

    async def run(self) -> None:
        """Serve control requests until shut down; then stop the kernel."""
        try:
            while not self.done.is_set():
                try:
                    await asyncio.wait_for(self.done.wait(), 0.2)
                except TimeoutError:
                    pass
                if self.busy.locked() or self.alive():
                    continue
                if self.died_at is None:
                    self.died_at = time.monotonic()
                    log.warning(
                        "kernel %s: %s; waiting %gs for a restart",
                        self.kernel_id,
                        self.supervisor.exit_reason() or "no output",
                        self.linger,
                    )
                elif time.monotonic() - self.died_at > self.linger:
                    log.warning("kernel %s: no restart asked for; exiting", self.kernel_id)
                    break
        finally:
            await self.supervisor.stop()
            if self.server is not None:
                self.server.close()
            self.supervisor.close()

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        op = None
        try:
            challenge = await send_hello(writer)
            frame = await asyncio.wait_for(read_frame(reader), 30)
            if sealed_kernel_id(frame) != self.kernel_id:
                raise ChannelError("request for another kernel")
            request = unseal(self.secret, self.kernel_id, CONTROL, challenge, frame)
            op = request.get("op")
            reply = await self._handle(request)
            write_frame(writer, seal(self.secret, self.kernel_id, CONTROL_REPLY, challenge, reply))
            await writer.drain()
        except (TimeoutError, ChannelError, OSError) as exc:
            log.warning(
                "kernel %s: refused a control request from %s: %s", self.kernel_id, peer, exc
            )
        finally:
            writer.close()
        if op == "shutdown":
            self.done.set()

    async def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "signal":
            signum = request.get("signum")
            if not isinstance(signum, int) or not 0 < signum < signal.NSIG:
                return {"ok": False, "error": f"bad signal {signum!r}"}
            self.supervisor.signal(signum)
            return {"ok": True}
        if op == "kept_output":
            return self.kept_output(request)
        if op == "restart":
            async with self.busy:
                try:
                    await self.supervisor.restart()
                except SpawnError as exc:
                    return {"ok": False, "error": str(exc)}
                self.died_at = None
            return {"ok": True, "connection": self.connection, "pid": self.supervisor.pid}
        if op == "shutdown":
            async with self.busy:
                await self.supervisor.stop()
            return {"ok": True}
        return {"ok": False, "error": f"unknown operation {op!r}"}


async def serve(config: dict[str, Any], runtime_dir: str, notify: int | None = None) -> int:
    try:
        boot = Bootstrap(config, runtime_dir)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, boot.done.set)
        started = await boot.start()
    except (BootstrapError, OSError) as exc:
        _notify(notify, {"ok": False, "error": str(exc)})
        log.error("kernel %s: %s", config.get("kernel_id"), exc)
        return 1
    _notify(notify, {"ok": True, **started})
    await boot.run()
    return 0


def _notify(fd: int | None, message: dict[str, Any]) -> None:
    line = json.dumps(message) + "\n"
    if fd is None:
        (sys.stdout if message.get("ok") else sys.stderr).write(line)
        sys.stdout.flush()
        return
    try:
        os.write(fd, line.encode())
        os.close(fd)
    except OSError:
        pass


def _detach(config: dict[str, Any], runtime_dir: str) -> int:
    """Fork a daemon that serves the kernel; return once it has reported (or failed)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        logfd = os.open(
            os.path.join(runtime_dir, "bootstrap.log"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o600,
        )
        os.dup2(devnull, 0)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        os.close(devnull)
        os.close(logfd)
        code = 1
        try:
            code = asyncio.run(serve(config, runtime_dir, write_fd))
        finally:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    try:
        status = json.loads(data)
    except ValueError:
        detail = tail(os.path.join(runtime_dir, "bootstrap.log"))
        sys.stderr.write(f"the kernel bootstrap exited before it reported\n{detail}\n")
        return 1
    if not status.get("ok"):
        sys.stderr.write(str(status.get("error")) + "\n")
        return 1
    status.pop("ok", None)
    sys.stdout.write(json.dumps(status) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raygate.launchers.kernelside.bootstrap",
        description="Start one kernel here and report it to a raygate gateway.",
    )
    parser.add_argument(
        "--config-file", help="JSON settings file (removed once read); default: stdin"
    )
    parser.add_argument("--keep-config-file", action="store_true", help="do not remove it")
    parser.add_argument(
        "--detach", action="store_true", help="serve the kernel in the background once reported"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config_file, keep=args.keep_config_file)
    except BootstrapError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    runtime_dir = tempfile.mkdtemp(prefix=f"raygate-kernel-{config['kernel_id'][:8]}-")
    # A kernel run as another account reaches its own 0700 directory in it; nobody may list
    # it, and the bootstrap's own files in it are 0600.
    os.chmod(runtime_dir, 0o711)
    if args.detach:
        return _detach(config, runtime_dir)
    try:
        return asyncio.run(serve(config, runtime_dir))
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
