"""Shared fixtures: real ``raygate serve`` processes on loopback ports."""

from __future__ import annotations

import asyncio
import atexit
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import httpx
import psutil
import pytest

from kgclient import TLS, Gateway, KernelWS
from logcheck import assert_clean_log
from ray_cluster import NODE_LEAVES_OUT, left_out, python_without

TOKEN = "test-token"

IN_CI = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("CI", "RAYGATE_CI"))
"""Under CI (``CI=true``, as .ci/run is run, or ``RAYGATE_CI=1``) every tool the tests need
must be there: a missing one fails its tests instead of skipping them."""


def missing(what: str, install: str) -> NoReturn:
    """Skip the test for want of ``what`` on a developer's machine; fail it under CI, where
    .ci/run must have installed it (``install`` says how)."""
    reason = f"{what} is missing ({install})"
    if IN_CI:
        pytest.fail(f"{reason}: CI must run every test", pytrace=False)
    pytest.skip(reason)


def needed_module(name: str, install: str = "pip install -e '.[test]'") -> Any:
    """``import name``, or ``missing`` it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name}", install)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WITHOUT = left_out(NODE_LEAVES_OUT)
"""What the gateways' Python lacks, as a raygate install without jupyter_server does (and a
Ray node: ``ray_cluster``): jsonschema, which ``import ray`` and, with kubernetes_validate
installed, ``import kubernetes`` import, compiles rfc3987_syntax's grammars when it is
there (1.5 s of CPU of each Ray or Kubernetes gateway's start here)."""
atexit.register(shutil.rmtree, _WITHOUT, True)

_POLL = httpx.Client(verify=TLS)
"""What asks a starting gateway whether it is up (without a token: an empty one is no
header value), one client for all: a new one per poll spent 45 ms of CPU on TLS."""

_logs_per_port: dict[int, int] = {}
"""How many gateways of this test process have listened on each port."""


class ServerProcess:
    """A ``raygate serve`` started for a test, with its output kept for failures and checked
    for tracebacks when it stops (``expect_errors``: patterns of those the test provokes)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        token: str = TOKEN,
        expect_errors: Iterable[str] = (),
        port: int = 0,
    ) -> None:
        """``port``: listen there (a gateway restarted where its clients know it), not on a
        free port."""
        self.args = args
        self.env = env
        self.token = token
        self.expect_errors = list(expect_errors)
        self.pinned_port = port
        self._spawn()

    def _spawn(self) -> None:
        self.port = self.pinned_port or free_port()
        scheme = "https" if "--certfile" in self.args else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "raygate", "serve", "--port", str(self.port), *self.args]
        if self.token:
            cmd += ["--auth-token", self.token]
        # A gateway restarted on its predecessor's port keeps that one's log: a flake seen
        # after a restart is explained by what happened before it.
        _logs_per_port[self.port] = serial = _logs_per_port.get(self.port, 0) + 1
        suffix = f".{serial}" if serial > 1 else ""
        self.log_path = f"/tmp/raygate-test-{self.port}{suffix}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **python_without(_WITHOUT), **(self.env or {})},
        )
        self.client = Gateway(self.url, self.token)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        respawns = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                # The free port found for it was taken by another process (a Ray worker,
                # another test's kernel) before raygate bound it: again, on another port.
                taken = "address already in use" in self.output()
                if taken and not self.pinned_port and respawns < 3:
                    respawns += 1
                    self.log.close()
                    self._spawn()
                    continue
                raise RuntimeError(f"raygate exited early:\n{self.output()}")
            if self.url.startswith("https:"):
                # TLS tests check certificates (and client certificates) themselves
                if "Uvicorn running on" in self.output():  # listening, not only started
                    return
            else:
                try:
                    if _POLL.get(self.url + "/api", timeout=1).status_code in (200, 401):
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        # No one stops a gateway whose fixture failed: it would run on, for other tests
        # to meet (seen: a module's Kubernetes gateway, still up 20 minutes later).
        self.stop(signal.SIGKILL, check=False)
        raise RuntimeError(f"raygate did not come up:\n{self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kernel_pids(self) -> list[int]:
        """Kernel processes started by this gateway (its descendants)."""
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(
        self, sig: int = signal.SIGTERM, timeout: float = 30, check: bool = True
    ) -> int | None:
        """Stop the gateway; then fail if its log has a traceback the test did not expect
        (``check=False``: the caller checks later, with ``check_log``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if check:
            self.check_log()
        return self.proc.returncode

    def check_log(self) -> None:
        assert_clean_log(f"the gateway on port {self.port}", self.output(), self.expect_errors)


@pytest.fixture
def refused_serve(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """``refused_serve(*args)`` runs ``raygate serve ARGS`` in this process, for arguments
    it must refuse before it serves (a gateway that would start fails the test instead), and
    returns click's result: 1.3 s less than a subprocess each."""
    import logging

    import click.testing
    import uvicorn

    from raygate.cli import main

    def no_serving(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("raygate serve accepted what it should have refused")

    monkeypatch.setattr(uvicorn, "run", no_serving)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))

    def run(*args: str) -> click.testing.Result:
        return click.testing.CliRunner().invoke(main, ["serve", *args])

    yield run
    # serve configures logging for the gateway before it gives up on some errors
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    """The pids still alive (not zombies) after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return []
        time.sleep(0.1)
    return alive


@pytest.fixture(scope="session")
def gateway_server() -> Iterator[ServerProcess]:
    """One local-launcher gateway for the tests that do not need their own."""
    server = ServerProcess(["--default-launcher", "local", "--max-kernels", "8"])
    server.wait_ready()
    yield server
    server.stop()


def cleaning_up(client: Gateway) -> Iterator[Gateway]:
    """Yield ``client``; afterwards shut down the kernels started meanwhile."""
    before = {k["id"] for k in client.get("/api/kernels").json()}
    yield client
    for k in client.get("/api/kernels").json():
        if k["id"] not in before:
            client.shutdown_kernel(k["id"])


@pytest.fixture
def gateway(gateway_server: ServerProcess) -> Iterator[Gateway]:
    """The shared gateway; kernels a test leaves behind are shut down after it."""
    yield from cleaning_up(gateway_server.client)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start a gateway with its own options; stopped after the test."""
    servers: list[ServerProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        token: str = TOKEN,
        expect_errors: Iterable[str] = (),
    ) -> ServerProcess:
        server = ServerProcess(list(args), env=env, token=token, expect_errors=expect_errors)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop(check=False)
    for server in servers:
        server.check_log()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One private OpenSSH server for the session: "hosts" 127.0.0.2 and 127.0.0.3 (in its
    known_hosts file) and 127.0.0.5 (not in it), all on one port."""
    from sshd import SSHD, SSHServer

    if not os.path.exists(SSHD):
        missing("sshd", "apt-get install openssh-server; .ci/run does")
    server = SSHServer(
        str(tmp_path_factory.mktemp("sshd")), ["127.0.0.2", "127.0.0.3"], unlisted=["127.0.0.5"]
    )
    server.start()
    yield server
    server.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "serial: sensitive to the load of other tests (many kernels, memory growth); .ci/run "
        "runs these after the others, alone",
    )
    config.addinivalue_line(
        "markers",
        "ray: starts a Ray node of its own (an embedded Ray); .ci/run runs these first, alone, "
        "as Ray gives up on a node that has not registered within 30 s, which a busy machine "
        "can exceed",
    )
    config.addinivalue_line(
        "markers",
        "ray_cluster: uses the session's Ray test cluster (set for each test that uses the "
        "ray_cluster fixture); under pytest-xdist they all run on one worker",
    )


# -- the session's Ray test cluster -------------------------------------------------------
# Under pytest-xdist the controller starts it, once all workers have collected and before
# any test runs, so that it starts on a quiet machine (Ray gives up on a node that has not
# registered within 30 s); the worker that runs the cluster's tests attaches to it.

RAY_CLUSTER_GROUP = "ray-cluster"
_RAY_CLUSTER_FILE = "raygate_ray_cluster_file"
"""The key in each xdist worker's ``workerinput`` naming the file (mode 0600: the cluster's
token is in it) where the controller describes the cluster it started."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of the session's Ray cluster runs on one xdist worker (``--dist
    loadgroup``; the groups are set before xdist reads them): the tests count the cluster's
    CPUs and GPUs, which tests running beside them would take."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(RAY_CLUSTER_GROUP))
            item.add_marker(pytest.mark.ray_cluster)


def start_ray_cluster() -> Any:
    """A started ``RayTestCluster``; three tries, as Ray gives up on a node that is not up
    in 30 s, as on a busy machine."""
    from ray_cluster import RayTestCluster

    for attempt in range(3):
        cluster = RayTestCluster()
        try:
            cluster.start()
            return cluster
        except Exception:
            cluster.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


_controller: dict[str, Any] = {}
"""(xdist controller) ``file``: where the cluster is described; ``cluster``: it, once started."""


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist controller) Tell each worker where the cluster will be described."""
    if "file" not in _controller:
        folder = tempfile.mkdtemp(prefix="raygate-tests-")
        _controller["file"] = os.path.join(folder, "ray-cluster.json")
    node.workerinput[_RAY_CLUSTER_FILE] = _controller["file"]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """(xdist controller) Start the cluster when the first worker has collected, if any
    selected test needs it; xdist schedules the tests only after this returns."""
    if "cluster" in _controller or not any(i.endswith("@" + RAY_CLUSTER_GROUP) for i in ids):
        return
    try:
        _controller["cluster"] = cluster = start_ray_cluster()
        described = cluster.describe()
    except Exception as exc:  # the cluster's tests fail with it; the others run
        _controller["cluster"] = None
        described = {"error": f"the Ray test cluster did not start: {exc}"}
    fd = os.open(_controller["file"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        json.dump(described, f)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _controller.get("cluster") is not None:
        _controller.pop("cluster").stop()
    if "file" in _controller:
        shutil.rmtree(os.path.dirname(_controller.pop("file")), ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[object]:
    """One real two-node Ray cluster (logical GPUs on the second node) for the session: the
    one the xdist controller started, else one of this process's own."""
    from ray_cluster import RayTestCluster

    path = getattr(request.config, "workerinput", {}).get(_RAY_CLUSTER_FILE)
    if path and os.path.exists(path):
        with open(path) as f:
            described = json.load(f)
        if "error" in described:
            raise RuntimeError(described["error"])
        yield RayTestCluster.attach(described)  # the controller stops it
        return
    cluster = start_ray_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def ray_cluster_as_it_was(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that uses the Ray cluster, kill the named actors it left (a failed
    test's kernels would hold CPUs and GPUs), so later tests see the cluster as it was."""
    if "ray_cluster" not in request.fixturenames:
        yield
        return
    cluster = request.getfixturevalue("ray_cluster")
    before = cluster.live_actors()
    yield
    left = cluster.live_actors() - before
    if left:
        cluster.kill_actors(left)


def remote_pids(model: dict) -> list[int]:
    """The kernel's and its bootstrap's pids, from a remote kernel's placement."""
    return [model["placement"]["pid"], model["placement"]["bootstrap_pid"]]


async def assert_interrupts(gateway: Gateway, kernel_id: str) -> None:
    """An interrupt stops a running ``time.sleep`` with KeyboardInterrupt, and the kernel
    keeps its state."""
    ws = await gateway.connect(kernel_id)
    try:
        await ws.execute("kept = 'yes'")
        await interrupt_running_sleep(gateway, ws, kernel_id)
        assert (await ws.execute("kept")).result == "'yes'"
    finally:
        await ws.close()


async def interrupt_running_sleep(
    gateway: Gateway, ws: KernelWS, kernel_id: str, timeout: float = 20
) -> None:
    """Interrupt (``POST .../interrupt``) a ``time.sleep`` once it surely runs (it printed),
    and check it ends in KeyboardInterrupt."""
    printed = asyncio.Event()
    code = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"
    task = asyncio.create_task(ws.execute(code, printed=printed))
    await asyncio.wait_for(printed.wait(), timeout)
    assert gateway.post(f"/api/kernels/{kernel_id}/interrupt").status_code == 204
    out = await asyncio.wait_for(task, timeout)
    assert out.status == "error" and out.ename == "KeyboardInterrupt"


def stop_process(proc: subprocess.Popen, timeout: float = 10, log_path: str = "") -> None:
    """Terminate a helper server process; kill it if it does not stop in time. With
    ``log_path`` (where its output went), fail if it logged a traceback."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if log_path:
        with open(log_path, errors="replace") as f:
            assert_clean_log(f"the server logging to {log_path}", f.read())
