"""The kernel-side bootstrap: ``python -m raygate.launchers.bootstrap``.

Remote environments (an SSH host, a Dask worker, later a pod or a YARN container) run
this program to start one kernel where they are. It

1. reads its settings, a JSON object, from ``--config-file`` (the file is removed once
   read), else from the ``RAYGATE_BOOTSTRAP_SETTINGS`` variable (pods, YARN containers:
   removed from the environment once read), else from stdin; the per-kernel secret is in
   it (``secret``, base64) or in the ``RAYGATE_KERNEL_SECRET`` variable, never on the
   command line;
2. starts the kernel as a supervised child (signals unblocked, its own session, killed
   if the bootstrap dies: :mod:`raygate.launchers.process`);
3. opens a small control endpoint for interrupt, restart, shutdown, liveness and the
   kernel's kept output (:mod:`raygate.launchers.keeper`);
4. reports the kernel's connection info and the control port to the gateway's report
   listener, sealed with the secret (:mod:`raygate.launchers.report`), and waits for the
   gateway's sealed acknowledgement; without one it stops the kernel and fails.

It then serves control requests until told to shut down, or until the kernel has been
dead for ``linger`` seconds without a restart being asked for. It stops the kernel on
SIGTERM/SIGINT, and the kernel dies with it whatever the cause.

With ``--detach`` (used over SSH) it forks into the background once the gateway has the
report, prints ``{"pid": ..., "control_port": ...}`` and exits, so the SSH session can
end while the kernel lives on.

Settings: ``kernel_id``, ``secret``, ``argv`` (kernelspec argv with
``{connection_file}``), ``env`` (added to the inherited environment), ``cwd``,
``report`` (``{"host", "port"}``), ``ip`` (address the kernel and control endpoint bind;
default: the address an SSH client reached, else all interfaces), ``advertise`` (address
the gateway should use; default: the ``RAYGATE_ADVERTISE_ADDRESS`` variable, e.g. a pod's
IP from the downward API, else this host's address), ``control_port`` (default: any free port), ``linger`` (default
60 s), ``placement`` (echoed back in the report), ``encryption`` (``curve``: the kernel's
sockets are CurveZMQ servers with a keypair made here; only the public key is reported),
``keep_output_bytes`` (bound of the kernel's recent output kept here for a gateway
restarted after a crash, :mod:`raygate.launchers.keeper`; default 32 MiB, 0: none).
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
import subprocess
import sys
import tempfile
import time
from typing import Any

from .keeper import KEEP_BYTES, OutputKeeper
from .process import format_argv, signal_group, spawn_kernel, tail, terminate, write_connection_file
from .report import (
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

log = logging.getLogger("raygate.bootstrap")

SECRET_ENV = "RAYGATE_KERNEL_SECRET"
SETTINGS_ENV = "RAYGATE_BOOTSTRAP_SETTINGS"
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


class Bootstrap:
    def __init__(self, config: dict[str, Any], runtime_dir: str) -> None:
        self.config = config
        self.kernel_id: str = config["kernel_id"]
        self.secret: bytes = config["secret"]
        self.runtime_dir = runtime_dir
        self.bind, self.advertise = bind_and_advertise(config)
        self.linger = float(config.get("linger", 60.0))
        self.connection_file = os.path.join(runtime_dir, "kernel.json")
        self.log_path = os.path.join(runtime_dir, "kernel.log")
        self.proc: subprocess.Popen | None = None
        self.connection: dict[str, Any] = {}
        self.server: asyncio.base_events.Server | None = None
        self.done = asyncio.Event()
        self.died_at: float | None = None
        self.busy = asyncio.Lock()
        self.keeper: OutputKeeper | None = None

    @property
    def control_port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    # -- the kernel process -------------------------------------------------------

    def spawn(self) -> None:
        argv = format_argv(self.config["argv"], self.connection_file)
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (self.config.get("env") or {}).items()})
        env["KERNEL_ID"] = self.kernel_id
        cwd = self.config.get("cwd")
        cwd = cwd if cwd and os.path.isdir(cwd) else None
        try:
            self.proc = spawn_kernel(argv, env, self.log_path, cwd=cwd)
        except OSError as exc:
            raise BootstrapError(f"could not run kernel command {argv[0]!r}: {exc}") from exc
        self.died_at = None
        log.info("kernel %s: started pid %d", self.kernel_id, self.proc.pid)

    def _iopub_url(self) -> str:
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "") else self.bind
        return f"tcp://{host}:{self.connection['iopub_port']}"

    def start_keeper(self) -> None:
        """Keep the kernel's recent output here, for a gateway restarted after a crash."""
        max_bytes = int(self.config.get("keep_output_bytes", KEEP_BYTES))
        if max_bytes > 0:
            key = self.connection.get("curve_publickey")
            self.keeper = OutputKeeper(self._iopub_url(), max_bytes, key)

    def kept_output(self, request: dict[str, Any]) -> dict[str, Any]:
        """One page of kept output (the control channel's frames are bounded), base64."""
        if self.keeper is None:
            return {"ok": False, "error": "this kernel keeps no output"}
        after = request.get("after") or []
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            return {"ok": False, "error": "'after' must be a list of message ids"}
        messages, complete, skipped = self.keeper.after(after, KEPT_PAGE_BYTES)
        return {
            "ok": True,
            "messages": [[base64.b64encode(f).decode() for f in m] for m in messages],
            "complete": complete,
            "skipped": skipped,
        }

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop_kernel(self) -> None:
        if self.proc is not None:
            await terminate(self.proc)

    def status(self) -> dict[str, Any]:
        code = self.proc.poll() if self.proc is not None else None
        out: dict[str, Any] = {
            "ok": True,
            "alive": code is None and self.proc is not None,
            "pid": self.proc.pid if self.proc else None,
            "bootstrap_pid": os.getpid(),
        }
        if not out["alive"]:
            out["exit_code"] = code
            out["tail"] = tail(self.log_path)
        return out

    # -- starting -----------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Start the kernel and the control endpoint, report to the gateway."""
        self.server = await asyncio.start_server(
            self._serve_control, self.bind, int(self.config.get("control_port") or 0)
        )
        try:
            # With Curve the secret key is made here and never leaves this host.
            info = write_connection_file(
                self.connection_file, self.bind, self.config.get("encryption") or "none"
            )
        except ValueError as exc:
            raise BootstrapError(str(exc)) from None
        info["ip"] = self.advertise
        self.connection = info
        self.start_keeper()
        self.spawn()
        report = {
            "connection": self.connection,
            "control": {"host": self.advertise, "port": self.control_port},
            "pid": self.proc.pid if self.proc else None,
            "bootstrap_pid": os.getpid(),
            "hostname": socket.gethostname(),
            "placement": self.config.get("placement") or {},
        }
        try:
            await self._report(report)
        except BaseException:
            await self.stop_kernel()
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
                        "kernel %s: exited (%s); waiting %gs for a restart",
                        self.kernel_id,
                        self.proc.poll() if self.proc else None,
                        self.linger,
                    )
                elif time.monotonic() - self.died_at > self.linger:
                    log.warning("kernel %s: no restart asked for; exiting", self.kernel_id)
                    break
        finally:
            await self.stop_kernel()
            if self.server is not None:
                self.server.close()
            if self.keeper is not None:
                self.keeper.close()

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
            if self.proc is not None:
                signal_group(self.proc, signum)
            return {"ok": True}
        if op == "kept_output":
            return self.kept_output(request)
        if op == "restart":
            async with self.busy:
                await self.stop_kernel()
                try:
                    self.spawn()
                except BootstrapError as exc:
                    return {"ok": False, "error": str(exc)}
                if self.keeper is not None:  # same port; the key may be new
                    key = self.connection.get("curve_publickey")
                    self.keeper.retarget(self._iopub_url(), key)
            return {"ok": True, "connection": self.connection, "pid": self.proc.pid}
        if op == "shutdown":
            async with self.busy:
                await self.stop_kernel()
            return {"ok": True}
        return {"ok": False, "error": f"unknown operation {op!r}"}


async def serve(config: dict[str, Any], runtime_dir: str, notify: int | None = None) -> int:
    boot = Bootstrap(config, runtime_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, boot.done.set)
    try:
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
        prog="python -m raygate.launchers.bootstrap",
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
    if args.detach:
        return _detach(config, runtime_dir)
    try:
        return asyncio.run(serve(config, runtime_dir))
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
