"""The dask launcher against a real dask-distributed cluster: one scheduler and one worker
process that declares one ``GPU`` (a logical slot; no GPU is needed)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from conftest import ServerProcess, free_port, wait_gone
from kernelspecs import ipykernel_argv, write_kernelspec


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and a worker with resources GPU=1, as separate processes."""
    root = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = {"stderr": subprocess.STDOUT, "cwd": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
            + ["--port", str(port), "--no-dashboard"],
            stdout=open(root / "scheduler.log", "wb"),
            **common,
        )
    ]
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not come up") from None
            time.sleep(0.1)
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1"]
            + ["--nthreads", "1", "--resources", "GPU=1", "--no-dashboard", "--no-nanny"],
            stdout=open(root / "worker.log", "wb"),
            **common,
        )
    )
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(1, timeout=30)
    yield address
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def dask_specs(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("dask-kernelspecs"))
    meta = {"raygate": {"launcher": "dask"}}
    write_kernelspec(root, "dask-python", ipykernel_argv(), metadata=meta)
    nobody = {
        "raygate": {"launcher": "dask", "dask": {"scheduler": f"tcp://127.0.0.1:{free_port()}"}}
    }
    write_kernelspec(root, "dask-unreachable", ipykernel_argv(), metadata=nobody)
    return root


@pytest.fixture
def dask_gateway(
    start_server: Callable[..., ServerProcess],
    dask_cluster: str,
    dask_specs: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, list[str]]]:
    state = str(tmp_path_factory.mktemp("dask-state"))
    args = [
        "--kernelspec-dirs",
        dask_specs,
        "--dask-scheduler",
        dask_cluster,
        "--state-dir",
        state,
        "--report-ip",
        "127.0.0.1",
        "--default-launcher",
        "local",
    ]
    server = start_server(*args)
    yield server, args
    for k in server.client.get("/api/kernels").json() if server.proc.poll() is None else []:
        server.client.shutdown_kernel(k["id"])


def pids(model: dict) -> list[int]:
    return [model["placement"]["pid"], model["placement"]["bootstrap_pid"]]


async def test_gpu_kernel_holds_the_slot_until_shutdown(
    dask_gateway: tuple[ServerProcess, list[str]], dask_cluster: str
) -> None:
    server, _ = dask_gateway
    gw = server.client
    first = gw.start_kernel("dask-python", env={"KERNEL_GPUS": "1"})
    placement = first["placement"]
    assert first["launcher"] == "dask"
    assert placement["resources"] == {"GPU": 1}
    assert placement["worker"].startswith("tcp://127.0.0.1:")
    assert placement["scheduler"] == dask_cluster
    out = await gw.run(first["id"], "import os; print(os.environ['KERNEL_GPUS'])")
    assert out.stdout == "1\n"

    # the one GPU slot is taken: a second GPU kernel waits, then says why it gave up
    started = time.monotonic()
    r = gw.post(
        "/api/kernels",
        json={"name": "dask-python", "env": {"KERNEL_GPUS": "1", "KERNEL_LAUNCH_TIMEOUT": "5"}},
    )
    assert r.status_code == 503, r.text
    assert time.monotonic() - started < 7
    text = r.json()["message"]
    assert "for capacity" in text and "GPU=1" in text

    # a kernel that asks for no GPU is not held up
    plain = gw.start_kernel("dask-python")
    assert plain["placement"]["resources"] == {}
    gw.shutdown_kernel(plain["id"])

    # more than any worker has: refused at once
    r = gw.post("/api/kernels", json={"name": "dask-python", "env": {"KERNEL_GPUS": "2"}})
    assert r.status_code == 400, r.text
    assert "GPU=2" in r.json()["message"]

    gw.shutdown_kernel(first["id"])
    assert wait_gone(pids(first)) == []
    second = gw.start_kernel("dask-python", env={"KERNEL_GPUS": "1", "KERNEL_LAUNCH_TIMEOUT": "20"})
    assert second["placement"]["resources"] == {"GPU": 1}
    gw.shutdown_kernel(second["id"])
    assert wait_gone(pids(second)) == []


async def test_restart_and_reattach_after_gateway_sigkill(
    dask_gateway: tuple[ServerProcess, list[str]], start_server: Callable[..., ServerProcess]
) -> None:
    first, args = dask_gateway
    model = first.client.start_kernel("dask-python", env={"KERNEL_GPUS": "1"})
    kernel_id = model["id"]
    r = first.client.post(f"/api/kernels/{kernel_id}/restart")
    assert r.status_code == 200, r.text
    assert wait_gone([model["placement"]["pid"]]) == []
    assert (await first.client.run(kernel_id, "y = 'kept'")).status == "ok"
    model = first.client.get(f"/api/kernels/{kernel_id}").json()

    first.stop(signal.SIGKILL)
    await asyncio.sleep(0.5)
    assert all(os.path.exists(f"/proc/{pid}") for pid in pids(model))

    second = start_server(*args)
    assert [k["id"] for k in second.client.get("/api/kernels").json()] == [kernel_id]
    out = await second.client.run(kernel_id, "print(y)")
    assert out.stdout == "kept\n"
    assert second.client.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert wait_gone(pids(model)) == []
    # and the GPU slot is free again
    again = second.client.start_kernel(
        "dask-python", env={"KERNEL_GPUS": "1", "KERNEL_LAUNCH_TIMEOUT": "20"}
    )
    second.client.shutdown_kernel(again["id"])


def test_unreachable_scheduler_is_a_503_that_names_it(dask_gateway) -> None:
    server, _ = dask_gateway
    started = time.monotonic()
    r = server.client.post("/api/kernels", json={"name": "dask-unreachable"})
    assert r.status_code == 503, r.text
    body = r.json()
    assert set(body) == {"reason", "message"}
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:" in body["message"]
    assert time.monotonic() - started < 30
    assert server.client.get("/api/kernels").json() == []
