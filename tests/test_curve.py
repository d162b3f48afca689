"""CurveZMQ encryption of kernel traffic: ``raygate serve --kernel-encryption curve``.

Real gateways and real ipykernels: local, on the session Ray cluster and over SSH (the
bootstrap). What is checked is what can be seen from outside: the kernel's own
connection file holds a keypair, a jupyter_client client without Curve gets no answer
from the kernel while one with Curve does, and a relay between a client and the kernel
sees no clear text.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import zmq
from jupyter_client.blocking.client import BlockingKernelClient

from conftest import ServerProcess, assert_interrupts, wait_gone
from kernelspecs import ipykernel_argv, make_test_kernelspecs, write_kernelspec
from kgclient import Gateway
from raygate.launchers.base import ConnectionInfo

CURVE = ("--kernel-encryption", "curve")
READ_CONNECTION_FILE = (
    "import json\n"
    "from ipykernel.connect import get_connection_file\n"
    "print(json.dumps(json.load(open(get_connection_file()))))"
)
NO_ANSWER = 3.0  # seconds a client without Curve waits in vain; a Curve client answers in ms

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="pyzmq without CurveZMQ")


async def kernel_connection_file(gateway: Gateway, kernel_id: str) -> dict[str, Any]:
    """The connection file as the kernel itself read it (secret key included)."""
    out = await gateway.run(kernel_id, READ_CONNECTION_FILE)
    assert out.status == "ok", out
    return json.loads(out.stdout)


def assert_curve_keys(info: dict[str, Any]) -> None:
    # Z85 of a 32-byte key is 40 characters
    assert len(info["curve_publickey"]) == 40 and len(info["curve_secretkey"]) == 40
    assert info["curve_publickey"] != info["curve_secretkey"]


def client(info: dict[str, Any], **changes: Any) -> BlockingKernelClient:
    """A plain jupyter_client client of the kernel described by ``info`` (with ``changes``)."""
    kc = BlockingKernelClient()
    kc.load_connection_info({**info, **changes})
    kc.start_channels(hb=False)
    return kc


def without_curve(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if not k.startswith("curve_")}


def heartbeat_echoes(info: dict[str, Any], curve: bool) -> bool:
    """Whether the kernel's heartbeat echoes a ping from a REQ socket (Curve client or not)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    if curve:
        # a Curve client needs only the kernel's public key and a keypair of its own
        ConnectionInfo.from_dict(info).secure(sock)
    try:
        sock.connect(f"tcp://{info['ip']}:{info['hb_port']}")
        sock.send(b"ping")
        return sock.poll(NO_ANSWER * 1000) != 0 and sock.recv() == b"ping"
    finally:
        sock.close()


class Relay:
    """A TCP relay to ``target`` that keeps every byte it forwards, both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
                far = socket.create_connection(self.target)
            except OSError:
                return
            with self.lock:
                self.sockets += [near, far]
                for src, dst in ((near, far), (far, near)):
                    pump = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                    self.threads.append(pump)
                    pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    return
                with self.lock:
                    self.seen += data
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        """Stop every thread of the relay: a blocked ``accept`` or ``recv`` returns only
        when its socket is shut down (closing it from another thread does not wake it)."""
        with self.lock:
            sockets, threads = list(self.sockets), list(self.threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected
        for thread in threads:
            thread.join(10)
        for sock in sockets:
            sock.close()
        assert not [t for t in threads if t.is_alive()], "the relay's threads did not stop"


def shell_bytes_of_execute(info: dict[str, Any], code: str) -> bytes:
    """Execute ``code`` through a relay on the shell channel; the bytes the relay saw."""
    relay = Relay((info["ip"], info["shell_port"]))
    kc = client(info, shell_port=relay.port)
    try:
        reply = kc.execute(code, reply=True, timeout=30)
        assert reply["content"]["status"] == "ok", reply
    finally:
        kc.stop_channels()
        relay.close()
    with relay.lock:
        return bytes(relay.seen)


# -- local launcher ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def curve_server() -> Iterator[ServerProcess]:
    server = ServerProcess(["--default-launcher", "local", "--max-kernels", "4", *CURVE])
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def curve_gateway(curve_server: ServerProcess) -> Iterator[Gateway]:
    client = curve_server.client
    yield client
    for k in client.get("/api/kernels").json():
        client.shutdown_kernel(k["id"])


async def test_curve_kernel_executes_interrupts_and_restarts(
    curve_gateway: Gateway, curve_server: ServerProcess
) -> None:
    kernel_id = curve_gateway.start_kernel()["id"]
    out = await curve_gateway.run(kernel_id, "x = 6 * 7; x")
    assert out.status == "ok" and out.result == "42"
    first = await kernel_connection_file(curve_gateway, kernel_id)
    assert_curve_keys(first)

    await assert_interrupts(curve_gateway, kernel_id)

    assert curve_gateway.post(f"/api/kernels/{kernel_id}/restart").status_code == 200
    out = await curve_gateway.run(kernel_id, "'x' in globals(), 1 + 1")
    assert out.status == "ok" and out.result == "(False, 2)"  # a fresh kernel, still reached
    after = await kernel_connection_file(curve_gateway, kernel_id)
    assert_curve_keys(after)
    # as the README says: a restart keeps the kernel's keys (clients need not learn new ones)
    assert (after["curve_publickey"], after["curve_secretkey"]) == (
        first["curve_publickey"],
        first["curve_secretkey"],
    )

    # the kernel's secret key is never shown by the API
    for path in (f"/api/kernels/{kernel_id}", "/api/kernels"):
        assert first["curve_secretkey"] not in curve_gateway.get(path).text

    pids = curve_server.kernel_pids()
    assert pids
    curve_gateway.shutdown_kernel(kernel_id)
    assert wait_gone(pids) == []


async def test_kernel_answers_only_curve_clients(curve_gateway: Gateway) -> None:
    kernel_id = curve_gateway.start_kernel()["id"]
    info = await kernel_connection_file(curve_gateway, kernel_id)

    plain = client(without_curve(info))  # the right ports and HMAC key, but no Curve
    # The kernel drops such a client; once ZMQ has, a send blocks for good (no peer left:
    # CI run 25 hung here 300 s). Bounded, a send that cannot go is the same refusal.
    plain.shell_channel.socket.setsockopt(zmq.SNDTIMEO, 2000)
    plain.shell_channel.socket.setsockopt(zmq.LINGER, 0)
    try:
        try:
            plain.kernel_info()
        except zmq.Again:
            pass  # dropped before the request could go
        else:
            with pytest.raises(queue.Empty):
                plain.get_shell_msg(timeout=NO_ANSWER)
    finally:
        plain.stop_channels()
    assert not heartbeat_echoes(info, curve=False)

    # jupyter_client's Curve client uses the kernel's keypair as its own, so it needs both
    # keys; raygate's bridge needs only the public key (see heartbeat_echoes).
    secure = client(info)
    try:
        reply = secure.kernel_info(reply=True, timeout=30)
        assert reply["content"]["status"] == "ok"
        assert reply["content"]["implementation"] == "ipython"
    finally:
        secure.stop_channels()
    assert heartbeat_echoes(info, curve=True)

    # the gateway still serves the kernel: its own sockets are Curve clients
    out = await curve_gateway.run(kernel_id, "print('still here')")
    assert out.stdout == "still here\n"


async def test_no_clear_text_on_the_wire(curve_gateway: Gateway, gateway: Gateway) -> None:
    marker = "raygate-wire-" + os.urandom(6).hex()
    code = f"seen = {marker!r}"
    # the check can see clear text: a kernel of a gateway without Curve shows the marker
    plain_id = gateway.start_kernel()["id"]
    plain_info = await kernel_connection_file(gateway, plain_id)
    assert "curve_publickey" not in plain_info
    assert marker.encode() in shell_bytes_of_execute(plain_info, code)

    kernel_id = curve_gateway.start_kernel()["id"]
    info = await kernel_connection_file(curve_gateway, kernel_id)
    seen = shell_bytes_of_execute(info, code)
    assert len(seen) > len(code)  # the request and its reply went through the relay
    assert marker.encode() not in seen
    assert b"execute_request" not in seen and b"execute_reply" not in seen
    out = await curve_gateway.run(kernel_id, "seen")
    assert out.result == repr(marker)  # it ran


# -- Ray launcher (the kernel actor writes the keys on its node) -------------------------


async def test_ray_kernel_with_curve(
    ray_cluster, start_server: Callable[..., ServerProcess], tmp_path
) -> None:
    specs = make_test_kernelspecs(str(tmp_path))
    args = ["--ray-address", ray_cluster.address, "--ray-namespace", "rg-curve"]
    server = start_server(*args, "--kernelspec-dirs", specs, *CURVE, env=ray_cluster.env())
    gw = server.client
    model = gw.start_kernel()
    kernel_id = model["id"]
    try:
        assert model["launcher"] == "ray"
        out = await gw.run(kernel_id, "6 * 7")
        assert out.status == "ok" and out.result == "42"
        assert_curve_keys(await kernel_connection_file(gw, kernel_id))
        assert gw.post(f"/api/kernels/{kernel_id}/restart").status_code == 200
        out = await gw.run(kernel_id, "1 + 1")
        assert out.status == "ok" and out.result == "2"
    finally:
        gw.shutdown_kernel(kernel_id)
    assert ray_cluster.wait_actors("rg-curve", set(), timeout=15) == {}


# -- a remote launcher (SSH: the bootstrap writes the keys on the remote host) -----------


def ssh_args(sshd, specs: str, state: str) -> list[str]:
    return [
        "--kernelspec-dirs",
        specs,
        "--ssh-hosts",
        ",".join(sshd.hosts()),
        "--ssh-key-file",
        sshd.client_key,
        "--ssh-known-hosts",
        sshd.known_hosts,
        "--state-dir",
        state,
        "--report-ip",
        "127.0.0.1",
        "--default-launcher",
        "local",
        *CURVE,
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux loopback addresses")
async def test_ssh_kernel_with_curve_survives_a_gateway_restart(
    sshd, start_server: Callable[..., ServerProcess], tmp_path
) -> None:
    specs = str(tmp_path / "specs")
    write_kernelspec(
        specs, "ssh-python", ipykernel_argv(), metadata={"raygate": {"launcher": "ssh"}}
    )
    args = ssh_args(sshd, specs, str(tmp_path / "state"))
    first = start_server(*args)
    model = first.client.start_kernel("ssh-python")
    kernel_id = model["id"]
    pids = [model["placement"]["pid"], model["placement"]["bootstrap_pid"]]
    out = await first.client.run(kernel_id, "x = 41")
    assert out.status == "ok"
    info = await kernel_connection_file(first.client, kernel_id)
    assert_curve_keys(info)
    # the reattach record keeps the public key, never the secret one
    [record] = [path.read_text() for path in (tmp_path / "state" / "kernels").iterdir()]
    assert info["curve_publickey"] in record and info["curve_secretkey"] not in record

    # a new gateway serves the same kernel from its record, over Curve
    first.stop(signal.SIGKILL)
    assert all(psutil.pid_exists(pid) for pid in pids)
    second = start_server(*args)
    out = await second.client.run(kernel_id, "x + 1")
    assert out.status == "ok" and out.result == "42"
    assert second.client.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert wait_gone(pids) == []
