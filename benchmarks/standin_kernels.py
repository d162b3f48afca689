#!/usr/bin/env python
"""A stand-in kernel host: one process that serves many kernels' ZMQ endpoints.

Real ipykernels cost ~60 MiB each, so a thousand of them do not fit a small machine; what
``benchmarks/many_kernels.py --launcher standin`` measures is the *gateway's* cost of a
thousand kernels, so the kernels may be stand-ins as long as they speak the real protocol
on real sockets. Each stand-in kernel has the five sockets of a Jupyter kernel (shell,
control and stdin ROUTERs, an iopub PUB, a heartbeat REP) bound on loopback, signs every
message with its own HMAC key (jupyter_client's ``Session``) and checks the signature of
what it receives, and answers as ipykernel does where a gateway looks:

* ``kernel_info_request``: busy on iopub, the reply, idle;
* ``execute_request``: busy, ``execute_input``, a ``stream`` for each line a trivial
  ``print(...)`` cell prints, ``execute_reply`` (ok, counted), idle;
* ``shutdown_request`` (control): the reply, then its sockets close;
* ``interrupt_request``: the reply; any other request: an ok reply of its type;
* the heartbeat echoes.

It is *not* a kernel: it runs no code. It is driven over one REP socket by
:class:`StandinLauncher` (``{"op": "add", "kernel_id", "key"}`` answers the connection
info of a new stand-in kernel; ``remove``; ``ids``), which ``raygate serve`` finds through
a ``raygate.launchers`` entry point that ``many_kernels.py`` puts on its path; shipped
launchers know nothing of it.

    python benchmarks/standin_kernels.py --control tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import signal
from dataclasses import dataclass, field
from typing import Any

import zmq
from jupyter_client.session import Session

from raygate.launchers.base import (
    ConnectionInfo,
    KernelHandle,
    KernelStartError,
    Launcher,
    LaunchRequest,
)

CONTROL_ENV = "RAYGATE_STANDIN_CONTROL"
"""Where the launcher finds the stand-in host's control socket."""
PRINT = re.compile(r"^print\((.*)\)$")


# -- the host ----------------------------------------------------------------------------


@dataclass
class StandinKernel:
    kernel_id: str
    session: Session
    sockets: dict[str, zmq.Socket] = field(default_factory=dict)
    count: int = 0

    def connection(self, ip: str) -> dict[str, Any]:
        ports = {
            f"{name}_port": int(sock.last_endpoint.decode().rsplit(":", 1)[1])
            for name, sock in self.sockets.items()
        }
        return {
            **ports,
            "ip": ip,
            "key": self.session.key.decode(),
            "transport": "tcp",
            "signature_scheme": "hmac-sha256",
        }

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)


class Host:
    """The stand-in kernels of one process and the loop that answers them."""

    def __init__(self, control: str, ip: str = "127.0.0.1") -> None:
        self.ctx = zmq.Context()
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.ctx.set(zmq.MAX_SOCKETS, 65536)
        self.ip = ip
        self.control = self.ctx.socket(zmq.REP)
        self.control.bind(control)
        self.kernels: dict[str, StandinKernel] = {}
        self.owner: dict[zmq.Socket, tuple[StandinKernel, str]] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)

    def add(self, kernel_id: str, key: str) -> dict[str, Any]:
        kernel = StandinKernel(kernel_id, Session(key=key.encode(), username="kernel"))
        kinds = {
            "shell": zmq.ROUTER,
            "control": zmq.ROUTER,
            "stdin": zmq.ROUTER,
            "iopub": zmq.PUB,
            "hb": zmq.REP,
        }
        for name, kind in kinds.items():
            sock = self.ctx.socket(kind)
            sock.bind_to_random_port(f"tcp://{self.ip}")
            kernel.sockets[name] = sock
            if name != "iopub":
                self.poller.register(sock, zmq.POLLIN)
                self.owner[sock] = (kernel, name)
        self.kernels[kernel_id] = kernel
        return kernel.connection(self.ip)

    def remove(self, kernel_id: str) -> None:
        kernel = self.kernels.pop(kernel_id, None)
        if kernel is None:
            return
        for sock in kernel.sockets.values():
            if sock in self.owner:
                self.poller.unregister(sock)
                del self.owner[sock]
        kernel.close()

    def serve(self) -> None:
        while True:
            for sock, _ in self.poller.poll():
                if sock is self.control:
                    self.on_control()
                elif sock in self.owner:
                    kernel, name = self.owner[sock]
                    self.on_kernel(kernel, name, sock)

    def on_control(self) -> None:
        request = json.loads(self.control.recv())
        try:
            op = request["op"]
            if op == "add":
                answer: Any = self.add(request["kernel_id"], request["key"])
            elif op == "remove":
                answer = self.remove(request["kernel_id"])
            elif op == "ids":
                answer = sorted(self.kernels)
            else:
                raise ValueError(f"unknown op {op!r}")
            self.control.send_json({"result": answer})
        except Exception as exc:
            self.control.send_json({"error": repr(exc)})

    def on_kernel(self, kernel: StandinKernel, name: str, sock: zmq.Socket) -> None:
        if name == "hb":
            sock.send(sock.recv())
            return
        idents, frames = kernel.session.feed_identities(sock.recv_multipart(copy=True))
        try:
            message = kernel.session.deserialize(frames)  # checks the HMAC signature
        except ValueError:
            return  # unsigned or badly signed: a real kernel drops it too
        if name == "stdin":
            return
        msg_type = message["header"]["msg_type"]
        parent = message["header"]
        iopub = kernel.sockets["iopub"]
        kernel.session.send(iopub, "status", {"execution_state": "busy"}, parent=parent)
        reply_type = msg_type.replace("_request", "_reply")
        content: dict[str, Any] = {"status": "ok"}
        if msg_type == "kernel_info_request":
            content.update(
                protocol_version="5.3",
                implementation="raygate-standin",
                implementation_version="0",
                language_info={"name": "python", "version": "3", "mimetype": "text/x-python"},
                banner="stand-in kernel (benchmarks/standin_kernels.py): runs no code",
            )
        elif msg_type == "execute_request":
            code = str(message["content"].get("code", "")).strip()
            if not message["content"].get("silent"):
                kernel.count += 1
                kernel.session.send(
                    iopub,
                    "execute_input",
                    {"code": code, "execution_count": kernel.count},
                    parent=parent,
                )
            printed = PRINT.match(code)
            if printed:
                kernel.session.send(
                    iopub,
                    "stream",
                    {"name": "stdout", "text": printed.group(1).strip("'\"") + "\n"},
                    parent=parent,
                )
            content.update(execution_count=kernel.count, user_expressions={}, payload=[])
        elif msg_type == "comm_info_request":
            content["comms"] = {}
        elif msg_type == "is_complete_request":
            content["status"] = "complete"
        elif msg_type == "history_request":
            content["history"] = []
        kernel.session.send(sock, reply_type, content, parent=parent, ident=idents)
        kernel.session.send(iopub, "status", {"execution_state": "idle"}, parent=parent)
        if msg_type == "shutdown_request":
            self.remove(kernel.kernel_id)


# -- the launcher (gateway side) -----------------------------------------------------------


class StandinKernelHandle(KernelHandle):
    """One stand-in kernel of the host; alive while the host lists it."""

    def __init__(self, launcher: StandinLauncher, request: LaunchRequest, info: dict) -> None:
        super().__init__(request, ConnectionInfo.from_dict(info))
        self.launcher = launcher

    async def is_alive(self) -> bool:
        return self.kernel_id in await self.launcher.ids()

    async def signal(self, signum: int) -> None:
        pass  # no process of its own to signal

    async def restart(self) -> ConnectionInfo:
        raise KernelStartError("stand-in kernels do not restart", 400)

    async def shutdown(self) -> None:
        await self.launcher.ask({"op": "remove", "kernel_id": self.kernel_id})


class StandinLauncher(Launcher):
    """Kernels that are stand-ins in one host process (benchmarks only, see above)."""

    kind = "standin"

    def __init__(self) -> None:
        self.address = os.environ[CONTROL_ENV]
        self._lock = asyncio.Lock()
        self._sock: Any = None

    async def ask(self, request: dict[str, Any]) -> Any:
        import zmq.asyncio

        async with self._lock:  # one REQ socket: one request at a time
            if self._sock is None:
                self._sock = zmq.asyncio.Context.instance().socket(zmq.REQ)
                self._sock.connect(self.address)
            await self._sock.send_json(request)
            answer = await self._sock.recv_json()
        if "error" in answer:
            raise KernelStartError(f"stand-in host: {answer['error']}")
        return answer["result"]

    async def ids(self) -> set[str]:
        return set(await self.ask({"op": "ids"}))

    async def launch(self, request: LaunchRequest) -> KernelHandle:
        key = secrets.token_hex(32)
        info = await self.ask({"op": "add", "kernel_id": request.kernel_id, "key": key})
        return StandinKernelHandle(self, request, info)

    async def check_alive(self, handles: list[KernelHandle]) -> dict[str, bool]:
        ids = await self.ids()  # one question for all of them
        return {h.kernel_id: h.kernel_id in ids for h in handles}

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)


def install_entry_point(root: str) -> str:
    """A directory that, on a gateway's PYTHONPATH (with benchmarks/), registers
    :class:`StandinLauncher` as launcher kind ``standin``; returns it."""
    dist = os.path.join(root, "raygate_standin-0.dist-info")
    os.makedirs(dist, exist_ok=True)
    with open(os.path.join(dist, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: raygate-standin\nVersion: 0\n")
    with open(os.path.join(dist, "entry_points.txt"), "w") as f:
        f.write("[raygate.launchers]\nstandin = standin_kernels:StandinLauncher\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--control", required=True, help="ZMQ address of the control socket")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # Five listening sockets per kernel, and the gateway's five connections to them.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Host(args.control).serve()


if __name__ == "__main__":
    main()
