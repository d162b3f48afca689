"""SIGKILL the gateway while a cell prints, start another: the client gets every line, in
order, once (a kill in the instant between sending a line and recording it repeats that
one line: at least once, never lost).

Kernels outlive the gateway on a Ray cluster (the session's real two-node one), over SSH,
on Dask, on Kubernetes and on YARN (the stand-ins); the
kernel actor keeps the kernel's recent output (launchers/kernelside/) and the gateway keeps
per session the last message it handed over (raygate/bridge/watermarks.py, in
``--state-dir``). The gateway that starts next replays to each session what it missed.
The same with kernels started over SSH, where the bootstrap keeps the output.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator

import pytest
from test_dask import dask_cluster  # noqa: F401  (a fixture)
from test_kubernetes import gateway_args as k8s_gateway_args
from test_kubernetes import k8s_files, kube  # noqa: F401  (fixtures)
from test_nothing_lost import COUNTING, drain_closed, line_numbers, read_until_idle
from test_ray import ray_args
from test_ssh import gateway_args as ssh_gateway_args
from test_yarn import yarn_args, yarn_rm  # noqa: F401  (fixtures)

from conftest import ServerProcess, wait_gone
from kernelspecs import ipykernel_argv, make_test_kernelspecs, write_kernelspec
from kgclient import KernelWS, message

LINES = 80


class Gateways:
    """Gateways started one after another with the same settings (one state dir), so
    each finds the kernels of the one before; SIGKILL-able; cleaned up after the test."""

    def __init__(self, args: list[str], env: dict[str, str], kernelspec: str) -> None:
        self.args = args
        self.env = env
        self.kernelspec = kernelspec
        self.servers: list[ServerProcess] = []
        self.kill_after = 0.0
        """Seconds after a line arrives that the test kills the gateway."""

    def start(self) -> ServerProcess:
        server = ServerProcess(self.args, env=self.env)
        self.servers.append(server)
        server.wait_ready(120)
        return server

    def stop(self) -> None:
        last = self.servers[-1] if self.servers else None
        if last is not None and last.proc.poll() is None:
            for kernel in last.client.get("/api/kernels").json():
                last.client.shutdown_kernel(kernel["id"])
        for server in self.servers:
            server.stop(signal.SIGKILL)


@pytest.fixture
def ray_gateways(ray_cluster, tmp_path, tmp_path_factory) -> Iterator[Gateways]:
    specs = make_test_kernelspecs(str(tmp_path_factory.mktemp("crash-specs")))
    namespace = f"rg-crash-{uuid.uuid4().hex[:8]}"
    args = ray_args(ray_cluster, namespace, specs, "--state-dir", str(tmp_path / "state"))
    gateways = Gateways(args, ray_cluster.env(), "python3")
    yield gateways
    gateways.stop()
    assert ray_cluster.wait_actors(namespace, set(), timeout=15) == {}


@pytest.fixture
def ssh_gateways(sshd, tmp_path) -> Iterator[Gateways]:
    """The bootstrap's side: kernels started over SSH (tests/sshd.py) outlive the gateway."""
    specs = str(tmp_path / "specs")
    write_kernelspec(
        specs, "ssh-python", ipykernel_argv(), metadata={"raygate": {"launcher": "ssh"}}
    )
    args = ssh_gateway_args(sshd, specs, str(tmp_path / "state"))
    gateways = Gateways(args, {}, "ssh-python")
    yield gateways
    gateways.stop()


@pytest.fixture
def dask_gateways(dask_cluster: str, tmp_path) -> Iterator[Gateways]:  # noqa: F811
    """Kernels as long-running tasks on a real Dask worker; the bootstrap keeps the output."""
    specs = str(tmp_path / "specs")
    meta = {"raygate": {"launcher": "dask"}}
    write_kernelspec(specs, "dask-python", ipykernel_argv(), metadata=meta)
    args = ["--kernelspec-dirs", specs, "--dask-scheduler", dask_cluster]
    args += ["--state-dir", str(tmp_path / "state"), "--report-ip", "127.0.0.1"]
    gateways = Gateways([*args, "--default-launcher", "local"], {}, "dask-python")
    yield gateways
    gateways.stop()


@pytest.fixture
def yarn_gateways(yarn_args: list[str], tmp_path) -> Iterator[Gateways]:  # noqa: F811
    """Kernels as applications of the YARN stand-in; the bootstrap keeps the output."""
    args = list(yarn_args)
    args[args.index("--state-dir") + 1] = str(tmp_path / "state")
    gateways = Gateways(args, {}, "yarn-python")
    yield gateways
    gateways.stop()


@pytest.fixture
def k8s_gateways(kube, k8s_files, tmp_path) -> Iterator[Gateways]:  # noqa: F811
    """Kernels in pods of the Kubernetes stand-in; the bootstrap keeps the output."""
    args = k8s_gateway_args(kube, k8s_files, scan="3600")
    args[args.index("--state-dir") + 1] = str(tmp_path / "state")
    gateways = Gateways(args, {}, "k8s-python")
    yield gateways
    gateways.stop()


# The kill lands at varied points: the instant a line arrived (when its watermark may not be
# recorded yet) or between two lines (they come 0.1 s apart).
KILL_AFTER = {"ray": 0.0, "ssh": 0.05, "dask": 0.0, "k8s": 0.05, "yarn": 0.05}


@pytest.fixture(
    params=[
        pytest.param(
            "ray", marks=[pytest.mark.xdist_group("ray-cluster"), pytest.mark.ray_cluster]
        ),
        "ssh",
        "dask",
        "k8s",
        "yarn",
    ]
)
def gateways(request) -> Gateways:
    """The Ray param's tests need the session's Ray cluster: on its xdist worker."""
    gateways = request.getfixturevalue(f"{request.param}_gateways")
    gateways.kill_after = KILL_AFTER[request.param]
    return gateways


def every_line_once_in_order(first: KernelWS, second: KernelWS) -> None:
    """What the session got before the kill and after it: every line, in order, once; but
    for one repeat at the seam, which a kill between writing a message to the WebSocket and
    recording it can cause (the watermark errs towards repeating, never towards losing)."""
    before, after = line_numbers(first.received), line_numbers(second.received)
    report = f"before the kill {before}, after {after}"
    if before and after and after[0] == before[-1]:
        after = after[1:]
    assert before + after == list(range(LINES)), report


async def start_counting(
    server: ServerProcess, kernelspec: str, session: str
) -> tuple[dict, KernelWS, str]:
    kernel = server.client.start_kernel(kernelspec)
    ws = await server.client.connect(kernel["id"], session=session)
    request = message("execute_request", {"code": COUNTING.format(n=LINES, pause=0.1)})
    await ws.send(request)
    while len(line_numbers(ws.received)) < 20:
        await ws.recv(60)
    return kernel, ws, request["header"]["msg_id"]


async def assert_rest_arrives_once(
    gateways: Gateways, kernel: dict, ws: KernelWS, msg_id: str, session: str
) -> None:
    """A new gateway; the session reconnects and, with what ``ws`` got before, has every
    line exactly once, in order; then the kernel is shut down and gone."""
    second = gateways.start()
    back = await second.client.connect(kernel["id"], session=session)
    await read_until_idle(back, msg_id, timeout=120)
    every_line_once_in_order(ws, back)
    await back.close()
    second.client.shutdown_kernel(kernel["id"])
    assert wait_gone([kernel["placement"]["pid"]]) == []


async def test_sigkill_while_connected_loses_nothing(gateways: Gateways) -> None:
    first = gateways.start()
    kernel, ws, msg_id = await start_counting(first, gateways.kernelspec, "nb-crash")
    await asyncio.sleep(gateways.kill_after)
    first.stop(signal.SIGKILL)
    await drain_closed(ws)  # what reached the client before the gateway died
    await assert_rest_arrives_once(gateways, kernel, ws, msg_id, "nb-crash")


async def test_sigkill_while_disconnected_loses_nothing(gateways: Gateways) -> None:
    first = gateways.start()
    kernel, ws, msg_id = await start_counting(first, gateways.kernelspec, "nb-away")
    await ws.close()  # the client goes first; the gateway keeps its output in memory ...
    await drain_closed(ws)
    await asyncio.sleep(1.5)  # ... while the cell prints on ...
    first.stop(signal.SIGKILL)  # ... and that memory is gone
    await assert_rest_arrives_once(gateways, kernel, ws, msg_id, "nb-away")
