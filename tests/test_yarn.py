"""The yarn launcher against a stand-in YARN ResourceManager (tests/standins/yarn_rm.py).

No real ResourceManager can run here, so the stand-in serves the RM REST API (new
application, submit, application report, state, kill, list by tags) over HTTP and runs
each application's AM container command as a local process: the gateway submits the
bootstrap as the AM command, the bootstrap reports, and the kernel executes code.
Queues: ``default`` and ``kernels`` run applications, ``full`` never activates them;
the largest container is 4096 MB / 4 vCores.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from accounts import TestAccounts

import standins
from conftest import (
    ServerProcess,
    assert_interrupts,
    free_port,
    remote_pids,
    stop_process,
    wait_gone,
)
from kernelspecs import ipykernel_argv, write_kernelspec
from kgclient import Gateway

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def yarn_rm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("yarn")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["--queues", "default,kernels", "--stuck-queue", "full"]
    args += ["--max-memory", "4096", "--max-vcores", "4"]
    log_path = str(root / "rm.log")
    proc = standins.start("yarn_rm", port, args, log_path, "/ws/v1/cluster/apps")
    yield url
    stop_process(proc, log_path=log_path)


@pytest.fixture(scope="module")
def yarn_args(yarn_rm: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("yarn-gateway")
    specs = str(root / "kernelspecs")
    write_kernelspec(
        specs, "yarn-python", ipykernel_argv(), metadata={"raygate": {"launcher": "yarn"}}
    )
    # placed and running, but never answers: a kernel too slow for its launch timeout
    write_kernelspec(
        specs,
        "yarn-silent",
        [sys.executable, "-c", "import time; time.sleep(600)"],
        metadata={"raygate": {"launcher": "yarn"}},
    )
    return [
        "--kernelspec-dirs",
        specs,
        "--yarn-endpoint",
        yarn_rm,
        "--state-dir",
        str(root / "state"),
        "--report-ip",
        "127.0.0.1",
        "--report-address",
        "127.0.0.1",
        "--default-launcher",
        "local",
    ]


@pytest.fixture(scope="module")
def yarn_server(yarn_args: list[str]) -> Iterator[ServerProcess]:
    """One gateway for the tests that do not stop theirs."""
    server = ServerProcess(yarn_args)
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def yarn_gateway(yarn_server: ServerProcess) -> Iterator[ServerProcess]:
    yield yarn_server
    for k in yarn_server.client.get("/api/kernels").json():
        yarn_server.client.shutdown_kernel(k["id"])


def app_report(yarn_rm: str, app_id: str) -> dict[str, Any]:
    return httpx.get(f"{yarn_rm}/ws/v1/cluster/apps/{app_id}").json()["app"]


def wait_state(yarn_rm: str, app_id: str, state: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        app = app_report(yarn_rm, app_id)
        if app["state"] == state or time.monotonic() > deadline:
            return app
        time.sleep(0.1)


def start_fails(
    gw: Gateway, env: dict[str, str], status: int, within: float, name: str = "yarn-python"
) -> str:
    started = time.monotonic()
    r = gw.post("/api/kernels", json={"name": name, "env": env})
    assert r.status_code == status, r.text
    assert time.monotonic() - started < within
    return r.json()["message"]


async def test_yarn_kernel_start_execute_shutdown(
    yarn_gateway: ServerProcess, yarn_rm: str
) -> None:
    gw = yarn_gateway.client
    env = {
        "KERNEL_QUEUE": "kernels",
        "KERNEL_MEMORY": "1536Mi",
        "KERNEL_CPUS": "2",
        "KERNEL_USERNAME": "bob",
    }
    model = gw.start_kernel("yarn-python", env=env)
    placement = model["placement"]
    assert model["launcher"] == "yarn"
    assert placement["queue"] == "kernels" and placement["host"] == "127.0.0.1"
    assert placement["container"] == {"memory_mb": 1536, "vcores": 2}
    app = app_report(yarn_rm, placement["application_id"])
    # as a real RM shows it: the bootstrap never registers as an AM, so the application
    # stays ACCEPTED while its container runs the kernel
    assert app["state"] == "ACCEPTED" and app["queue"] == "kernels"
    assert "waiting for AM container to Register with RM" in app["diagnostics"]
    assert (app["allocatedMB"], app["allocatedVCores"]) == (1536, 2)
    assert app["applicationTags"].split(",") == ["raygate", model["id"]]
    assert app["applicationType"] == "RAYGATE" and app["user"] == getpass.getuser()
    assert app["amHostHttpAddress"].startswith("127.0.0.1:")

    code = "import os; print(os.environ['KERNEL_USERNAME'], 'RAYGATE_KERNEL_SECRET' in os.environ)"
    assert (await gw.run(model["id"], code)).stdout == "bob False\n"

    # what YARN can never give fails at once
    text = start_fails(gw, {"KERNEL_MEMORY": "8Gi"}, 400, 5)
    assert "memory=8192MB" in text and "largest this YARN cluster gives is memory=4096MB" in text
    assert "GPU" in start_fails(gw, {"KERNEL_GPUS": "1"}, 400, 5)
    # an unknown queue: the RM fails the application, with its diagnostics
    assert "unknown queue: nope" in start_fails(gw, {"KERNEL_QUEUE": "nope"}, 500, 5)

    assert gw.delete(f"/api/kernels/{model['id']}").status_code == 204
    assert wait_state(yarn_rm, placement["application_id"], "KILLED")["state"] == "KILLED"
    assert wait_gone(remote_pids(model)) == []


async def test_yarn_kernel_interrupt_and_restart(yarn_gateway: ServerProcess, yarn_rm: str) -> None:
    """Both through the bootstrap in the application's container: the application stays."""
    gw = yarn_gateway.client
    model = gw.start_kernel("yarn-python")
    kernel_id, old_pid = model["id"], model["placement"]["pid"]
    await assert_interrupts(gw, kernel_id)
    assert (await gw.run(kernel_id, "x = 1")).status == "ok"
    r = gw.post(f"/api/kernels/{kernel_id}/restart")
    assert r.status_code == 200, r.text
    assert wait_gone([old_pid]) == []
    out = await gw.run(kernel_id, "x")
    assert out.error and out.error["ename"] == "NameError"  # a fresh kernel
    after = gw.get(f"/api/kernels/{kernel_id}").json()["placement"]
    assert after["pid"] != old_pid
    assert after["application_id"] == model["placement"]["application_id"]
    assert app_report(yarn_rm, after["application_id"])["state"] == "ACCEPTED"  # still live
    assert gw.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert wait_gone(remote_pids({"placement": after})) == []


def test_application_stuck_in_accepted_times_out_with_the_rms_diagnostics(
    yarn_gateway: ServerProcess, yarn_rm: str
) -> None:
    text = start_fails(
        yarn_gateway.client, {"KERNEL_QUEUE": "full", "KERNEL_LAUNCH_TIMEOUT": "4"}, 503, 8
    )
    assert "stayed ACCEPTED in queue full" in text
    assert "Queue's AM resource limit exceeded" in text
    apps = httpx.get(f"{yarn_rm}/ws/v1/cluster/apps", params={"queue": "full"}).json()
    assert [a["state"] for a in apps["apps"]["app"]] == ["KILLED"]  # not left queued


def test_container_whose_kernel_does_not_report_in_time_is_a_504(
    yarn_gateway: ServerProcess, yarn_rm: str
) -> None:
    """Placed (its AM container runs, the application still ACCEPTED as on a real RM) but
    too slow: a timeout of the kernel (504: its bootstrap or the kernel did not answer in
    time), not a want of capacity (503)."""
    env = {"KERNEL_QUEUE": "kernels", "KERNEL_LAUNCH_TIMEOUT": "2"}
    text = start_fails(yarn_gateway.client, env, 504, 10, name="yarn-silent")
    assert "did not" in text and "capacity" not in text and "stayed ACCEPTED" not in text


async def test_gateway_restart_finds_its_applications(
    start_server: Callable[..., ServerProcess], yarn_args: list[str], yarn_rm: str
) -> None:
    gateway = start_server(*yarn_args)
    first = gateway.client
    kept = first.start_kernel("yarn-python")
    lost = first.start_kernel("yarn-python")
    assert (await first.run(kept["id"], "z = 'kept'")).status == "ok"
    gateway.stop(signal.SIGKILL)
    # while no gateway runs, one kernel's container dies: its application ends
    os.kill(lost["placement"]["bootstrap_pid"], signal.SIGKILL)
    assert wait_state(yarn_rm, lost["placement"]["application_id"], "FAILED")["state"] == "FAILED"
    await asyncio.sleep(0.2)

    second = start_server(*yarn_args)
    assert [k["id"] for k in second.client.get("/api/kernels").json()] == [kept["id"]]
    assert (await second.client.run(kept["id"], "print(z)")).stdout == "kept\n"
    assert second.client.delete(f"/api/kernels/{kept['id']}").status_code == 204
    assert wait_state(yarn_rm, kept["placement"]["application_id"], "KILLED")["state"] == "KILLED"
    assert wait_gone(remote_pids(kept) + remote_pids(lost)) == []


def test_unreachable_resource_manager_is_a_503_that_names_it(
    start_server: Callable[..., ServerProcess], yarn_args: list[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    args = list(yarn_args)
    args[args.index("--yarn-endpoint") + 1] = nowhere
    gw = start_server(*args).client
    r = gw.post("/api/kernels", json={"name": "yarn-python"})
    assert r.status_code == 503, r.text
    assert f"cannot reach the YARN ResourceManager at {nowhere}" in r.json()["message"]
    assert gw.get("/api/kernels").json() == []


@pytest.fixture(scope="module")
def reach_python() -> Iterator[None]:
    """Let other accounts run this Python (kept under root's 0700 home here)."""
    opened = TestAccounts()
    try:
        opened.reach(sys.executable)
        yield
    finally:
        opened.remove()


@pytest.mark.skipif(os.geteuid() != 0, reason="running a kernel as another account needs root")
async def test_users_mode_applications_are_the_users_own(
    yarn_args: list[str], yarn_rm: str, tmp_path: Any, reach_python: None
) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[users.ada]\ntoken = "tok-ada"\naccount = "nobody"\n')
    server = ServerProcess([*yarn_args, "--kernel-isolation", "users", "--users-file", str(users)])
    try:
        server.wait_ready()
        gw = Gateway(server.url, "tok-ada")
        model = gw.start_kernel("yarn-python")
        app_id = model["placement"]["application_id"]
        # submitted as the user's account (simple auth's user.name): the RM shows it as
        # the owner, not the gateway's --yarn-user
        assert app_report(yarn_rm, app_id)["user"] == "nobody"
        code = "import os, pwd; print(pwd.getpwuid(os.geteuid()).pw_name)"
        assert (await gw.run(model["id"], code)).stdout == "nobody\n"
        assert gw.delete(f"/api/kernels/{model['id']}").status_code == 204
        assert wait_state(yarn_rm, app_id, "KILLED")["state"] == "KILLED"
    finally:
        server.stop()
