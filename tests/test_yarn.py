"""The yarn launcher against a stand-in YARN ResourceManager (tests/standins/yarn_rm.py).

No real ResourceManager can run here, so the stand-in serves the RM's YARN Services API
(``/app/v1/services``), its applications and scheduler APIs over HTTP, plays the service
AM and runs each container's launch command as a local process through a NodeManager-like
launch script: the gateway creates a service whose container runs the bootstrap, the
bootstrap reports, and the kernel executes code.

Queues: ``default`` and ``kernels`` (whose largest container is 2048 MB / 2 vCores) run
services, ``full`` never activates them; the cluster's largest container is 4096 MB /
4 vCores / 2 GPUs. An application whose AM never registers is expired after 10 s (the
RM's ``yarn.am.liveness-monitor.expiry-interval-ms``, shortened).
"""

from __future__ import annotations

import concurrent.futures
import getpass
import os
import shlex
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

LIVENESS_EXPIRY = 10.0


def start_rm(
    root: Any, *args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> tuple[str, Any, str]:
    """A stand-in RM: its URL (on ``host``), process and log."""
    port = free_port()
    log_path = str(root / f"rm-{port}.log")
    probe = "/ws/v1/cluster/scheduler"
    proc = standins.start("yarn_rm", port, list(args), log_path, probe, env=env)
    return f"http://{host}:{port}", proc, log_path


@pytest.fixture(scope="module")
def yarn_rm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = ["--queues", "default,kernels", "--stuck-queue", "full"]
    args += ["--max-memory", "4096", "--max-vcores", "4", "--max-gpus", "2", "--node-gpus", "2"]
    args += ["--queue-max", "kernels=2048,2", "--am-liveness-expiry", str(LIVENESS_EXPIRY)]
    url, proc, log_path = start_rm(tmp_path_factory.mktemp("yarn"), *args)
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


def service(yarn_rm: str, name: str, user: str | None = None) -> httpx.Response:
    params = {"user.name": user or getpass.getuser()}
    return httpx.get(f"{yarn_rm}/app/v1/services/{name}", params=params)


def app_report(yarn_rm: str, app_id: str) -> dict[str, Any]:
    return httpx.get(f"{yarn_rm}/ws/v1/cluster/apps/{app_id}").json()["app"]


def wait_state(yarn_rm: str, app_id: str, states: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        app = app_report(yarn_rm, app_id)
        if app["state"] in states.split(",") or time.monotonic() > deadline:
            return app
        time.sleep(0.1)


def live_services(yarn_rm: str) -> list[str]:
    """Names of the services whose application is live."""
    params = {"applicationTypes": "yarn-service", "states": "NEW,SUBMITTED,ACCEPTED,RUNNING"}
    apps = httpx.get(f"{yarn_rm}/ws/v1/cluster/apps", params=params).json()["apps"]
    return sorted(a["name"] for a in (apps or {}).get("app", []))


def start_fails(
    gw: Gateway, env: dict[str, str], status: int, within: float, name: str = "yarn-python"
) -> str:
    started = time.monotonic()
    r = gw.post("/api/kernels", json={"name": name, "env": env})
    assert r.status_code == status, r.text
    assert set(r.json()) >= {"reason", "message"}
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
        "KERNEL_GPUS": "1",
        "KERNEL_USERNAME": "bob",
    }
    model = gw.start_kernel("yarn-python", env=env)
    placement = model["placement"]
    name = f"raygate-{model['id']}"
    assert model["launcher"] == "yarn"
    assert placement["service"] == name and placement["queue"] == "kernels"
    assert placement["host"] == "127.0.0.1"
    container = placement["container"]
    assert container["id"].startswith("container_")
    assert {k: container[k] for k in ("memory_mb", "vcores", "gpus")} == {
        "memory_mb": 1536,
        "vcores": 2,
        "gpus": 1,
    }
    svc = service(yarn_rm, name).json()
    # kept by the service AM, which registered: STABLE, its application RUNNING
    assert svc["state"] == "STABLE" and svc["queue"] == "kernels"
    (component,) = svc["components"]
    assert component["resource"] == {
        "cpus": 2,
        "memory": "1536",
        "additional": {"yarn.io/gpu": {"value": 1, "unit": ""}},
    }
    assert component["restart_policy"] == "NEVER"
    assert [c["state"] for c in component["containers"]] == ["READY"]
    app = app_report(yarn_rm, svc["id"])
    assert app["state"] == "RUNNING" and app["applicationType"] == "yarn-service"
    assert app["user"] == getpass.getuser() and placement["application_id"] == svc["id"]

    code = "import os; print(os.environ['KERNEL_USERNAME'], 'RAYGATE_KERNEL_SECRET' in os.environ)"
    assert (await gw.run(model["id"], code)).stdout == "bob False\n"

    # what YARN can never give fails at once, and leaves nothing behind
    before = live_services(yarn_rm)
    text = start_fails(gw, {"KERNEL_MEMORY": "8Gi"}, 400, 5)
    assert "memory=8192MB over its 4096MB" in text
    text = start_fails(gw, {"KERNEL_QUEUE": "kernels", "KERNEL_MEMORY": "3Gi"}, 400, 5)
    assert "more than YARN queue kernels gives" in text and "over its 2048MB" in text
    assert "yarn.io/gpu=3 over its 2" in start_fails(gw, {"KERNEL_GPUS": "3"}, 400, 5)
    text = start_fails(gw, {"KERNEL_QUEUE": "nope"}, 400, 5)
    assert "YARN queue 'nope' does not exist" in text and "default, full, kernels" in text
    assert live_services(yarn_rm) == before == [name]
    assert [k["id"] for k in gw.get("/api/kernels").json()] == [model["id"]]

    assert gw.delete(f"/api/kernels/{model['id']}").status_code == 204
    assert service(yarn_rm, name).status_code == 404  # destroyed
    assert wait_state(yarn_rm, svc["id"], "FINISHED")["state"] == "FINISHED"
    assert wait_gone(remote_pids(model)) == []


async def test_yarn_kernel_interrupt_and_restart(yarn_gateway: ServerProcess, yarn_rm: str) -> None:
    """Both through the bootstrap in the service's container: the service stays."""
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
    assert after["container"]["id"] == model["placement"]["container"]["id"]
    assert service(yarn_rm, after["service"]).json()["state"] == "STABLE"
    assert gw.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert wait_gone(remote_pids({"placement": after})) == []


async def test_kernel_outlives_the_am_liveness_expiry(
    yarn_gateway: ServerProcess, yarn_rm: str
) -> None:
    """The RM expires an application whose AM never registers (the old launcher's
    kernels, whose AM container ran the bootstrap, died so); a kernel's service has an AM
    that registers, so the kernel lives on past the interval and still answers."""
    gw = yarn_gateway.client
    model = gw.start_kernel("yarn-python")
    assert (await gw.run(model["id"], "kept = 42")).status == "ok"
    # beside it, an application whose AM container never registers, as the old one was
    new = httpx.post(f"{yarn_rm}/ws/v1/cluster/apps/new-application").json()
    context = {
        "application-id": new["application-id"],
        "application-name": "never-registers",
        "queue": "default",
        "resource": {"memory": 256, "vCores": 1},
        "am-container-spec": {"commands": {"command": shlex.join(["sleep", "600"])}},
    }
    assert httpx.post(f"{yarn_rm}/ws/v1/cluster/apps", json=context).status_code == 202
    expired = wait_state(yarn_rm, new["application-id"], "FAILED", LIVENESS_EXPIRY + 15)
    assert expired["state"] == "FAILED" and "timed out" in expired["diagnostics"]

    svc = service(yarn_rm, model["placement"]["service"]).json()
    assert svc["state"] == "STABLE" and app_report(yarn_rm, svc["id"])["state"] == "RUNNING"
    started = app_report(yarn_rm, svc["id"])["launchTime"] / 1000
    assert time.time() - started > LIVENESS_EXPIRY
    assert (await gw.run(model["id"], "print(kept)")).stdout == "42\n"
    assert gw.delete(f"/api/kernels/{model['id']}").status_code == 204


def test_service_stuck_in_accepted_times_out_with_the_rms_diagnostics(
    yarn_gateway: ServerProcess, yarn_rm: str
) -> None:
    text = start_fails(
        yarn_gateway.client, {"KERNEL_QUEUE": "full", "KERNEL_LAUNCH_TIMEOUT": "4"}, 503, 8
    )
    assert "stayed ACCEPTED" in text and "not placed in queue full" in text
    assert "Queue's AM resource limit exceeded" in text
    apps = httpx.get(f"{yarn_rm}/ws/v1/cluster/apps", params={"queue": "full"}).json()
    assert [a["state"] for a in apps["apps"]["app"]] == ["FINISHED"]  # destroyed, not queued
    assert live_services(yarn_rm) == []


def test_container_whose_kernel_does_not_report_in_time_is_a_504(
    yarn_gateway: ServerProcess, yarn_rm: str
) -> None:
    """Placed (its container runs) but too slow: a timeout of the kernel (504: its
    bootstrap or the kernel did not answer in time), not a want of capacity (503)."""
    env = {"KERNEL_QUEUE": "kernels", "KERNEL_LAUNCH_TIMEOUT": "2"}
    text = start_fails(yarn_gateway.client, env, 504, 10, name="yarn-silent")
    assert "did not" in text and "capacity" not in text
    assert live_services(yarn_rm) == []


def test_the_rms_own_refusals_are_400s_and_leave_nothing_running(
    start_server: Callable[..., ServerProcess], yarn_args: list[str], tmp_path: Any
) -> None:
    """Where the scheduler lists no queues to check first, the Services API's own answers
    (500s with its diagnostics) are what the client sees, as 400s."""
    args = ["--scheduler-type", "fairScheduler", "--max-memory", "4096"]
    url, proc, log_path = start_rm(tmp_path, *args, "--queue-max", "default=2048,2")
    try:
        args = list(yarn_args)
        args[args.index("--yarn-endpoint") + 1] = url
        gw = start_server(*args).client
        text = start_fails(gw, {"KERNEL_MEMORY": "8Gi"}, 400, 5)
        assert "specified memory size (8192) is larger than configured max container" in text
        text = start_fails(gw, {"KERNEL_QUEUE": "nope"}, 400, 5)
        assert "Failed to submit application_" in text and "unknown queue: nope" in text
        # over the queue's maximum but within the cluster's: the scheduler refuses the
        # service AM's request for the container, and the service fails
        text = start_fails(gw, {"KERNEL_MEMORY": "3Gi"}, 400, 10)
        assert "ended FAILED" in text and "Invalid resource request!" in text
        assert "maximum allowed allocation=<memory:2048, vCores:2>" in text
        assert live_services(url) == [] and gw.get("/api/kernels").json() == []
    finally:
        stop_process(proc, log_path=log_path)


def test_services_api_validates_what_it_is_sent(yarn_rm: str) -> None:
    """The stand-in refuses a definition the real API server refuses, with its shape
    (the launcher's own pass: the tests above)."""
    base = {"name": "ok", "version": "1", "components": []}
    comp = {"name": "c", "number_of_containers": 1, "launch_command": "true"}
    cases = [
        ({**base, "name": "has_underscore"}, "can not use '_'"),
        ({**base, "version": ""}, "Version of service ok is either empty"),
        (base, "No component specified for ok"),
        ({**base, "components": [{**comp, "resource": {"cpus": 0, "memory": "1"}}]}, "cpus"),
        ({**base, "components": [{**comp, "resource": {"cpus": 1, "memory": 1}}]}, "memory"),
    ]
    for body, message in cases:
        r = httpx.post(f"{yarn_rm}/app/v1/services", json=body, params={"user.name": "t"})
        assert r.status_code == 400 and message in r.json()["diagnostics"], (body, r.text)


async def test_gateway_restart_finds_its_services(
    start_server: Callable[..., ServerProcess], yarn_args: list[str], yarn_rm: str, tmp_path: Any
) -> None:
    # a state directory of their own: the module's gateway would adopt these kernels too
    yarn_args = list(yarn_args)
    yarn_args[yarn_args.index("--state-dir") + 1] = str(tmp_path / "state")
    gateway = start_server(*yarn_args)
    first = gateway.client
    kept = first.start_kernel("yarn-python")
    lost = first.start_kernel("yarn-python")
    assert (await first.run(kept["id"], "z = 'kept'")).status == "ok"
    gateway.stop(signal.SIGKILL)
    # while no gateway runs, one kernel's container dies: its service ends
    os.kill(lost["placement"]["bootstrap_pid"], signal.SIGKILL)
    lost_app = lost["placement"]["application_id"]
    assert wait_state(yarn_rm, lost_app, "FINISHED")["finalStatus"] == "FAILED"

    second = start_server(*yarn_args)
    assert [k["id"] for k in second.client.get("/api/kernels").json()] == [kept["id"]]
    assert (await second.client.run(kept["id"], "print(z)")).stdout == "kept\n"
    assert service(yarn_rm, lost["placement"]["service"]).status_code == 404  # cleaned up
    assert second.client.delete(f"/api/kernels/{kept['id']}").status_code == 204
    assert service(yarn_rm, kept["placement"]["service"]).status_code == 404
    assert wait_gone(remote_pids(kept) + remote_pids(lost)) == []


def test_service_of_a_start_a_crashed_gateway_left_is_destroyed(
    start_server: Callable[..., ServerProcess], yarn_args: list[str], yarn_rm: str, tmp_path: Any
) -> None:
    """The gateway dies while its kernel's service waits to be placed: the next gateway
    destroys the service once that start's deadline has passed."""
    yarn_args = list(yarn_args)
    yarn_args[yarn_args.index("--state-dir") + 1] = str(tmp_path / "state")
    gateway = start_server(*yarn_args)
    body = {"name": "yarn-python", "env": {"KERNEL_QUEUE": "full", "KERNEL_LAUNCH_TIMEOUT": "3"}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(gateway.client.post, "/api/kernels", json=body)
        deadline = time.monotonic() + 10
        while not live_services(yarn_rm) and time.monotonic() < deadline:
            time.sleep(0.05)
        (name,) = live_services(yarn_rm)
        gateway.stop(signal.SIGKILL)
    start_server(*yarn_args)
    deadline = time.monotonic() + 20
    while service(yarn_rm, name).status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert service(yarn_rm, name).status_code == 404 and live_services(yarn_rm) == []


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


def test_resource_manager_without_the_services_api_names_the_setting(
    start_server: Callable[..., ServerProcess],
    yarn_args: list[str],
    tmp_path: Any,
) -> None:
    url, proc, log_path = start_rm(tmp_path, "--no-services-api")
    try:
        args = list(yarn_args)
        args[args.index("--yarn-endpoint") + 1] = url
        server = start_server(*args)
        assert "yarn.webapp.api-service.enable" in server.output()  # said at startup
        r = server.client.post("/api/kernels", json={"name": "yarn-python"})
        assert r.status_code == 500, r.text
        message = r.json()["message"]
        assert "does not serve the YARN Services API" in message
        assert "set yarn.webapp.api-service.enable=true" in message
        assert server.client.get("/api/kernels").json() == []
        apps = httpx.get(f"{url}/ws/v1/cluster/apps").json()
        assert apps["apps"] is None  # nothing submitted
    finally:
        stop_process(proc, log_path=log_path)


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
async def test_users_mode_services_are_the_users_own(
    yarn_args: list[str], yarn_rm: str, tmp_path: Any, reach_python: None
) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[users.ada]\ntoken = "tok-ada"\naccount = "nobody"\n')
    server = ServerProcess([*yarn_args, "--kernel-isolation", "users", "--users-file", str(users)])
    try:
        server.wait_ready()
        gw = Gateway(server.url, "tok-ada")
        model = gw.start_kernel("yarn-python")
        name = model["placement"]["service"]
        # created as the user's account (simple auth's user.name): the RM shows it as the
        # owner, and the service is in the user's own namespace, not the gateway's
        assert service(yarn_rm, name, "nobody").status_code == 200
        assert service(yarn_rm, name).status_code == 404
        assert app_report(yarn_rm, model["placement"]["application_id"])["user"] == "nobody"
        code = "import os, pwd; print(pwd.getpwuid(os.geteuid()).pw_name)"
        assert (await gw.run(model["id"], code)).stdout == "nobody\n"
        assert gw.delete(f"/api/kernels/{model['id']}").status_code == 204
        assert service(yarn_rm, name, "nobody").status_code == 404
    finally:
        server.stop()
