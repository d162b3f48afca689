"""raygate as a service of a real JupyterHub (pip ``jupyterhub``, npm
``configurable-http-proxy``), one Hub per module on free loopback ports, with its own
sqlite database, DummyAuthenticator and SimpleLocalProcessSpawner; raygate is registered
as a service with its API token and configured as docs/jupyterhub.md says. Users, groups
and tokens are made through the Hub's REST API, as an admin service of the Hub's would."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import websockets

from conftest import ServerProcess, free_port, missing, needed_module, stop_process, wait_gone
from kernelspecs import ipykernel_argv, write_kernelspec
from kgclient import TLS, Gateway, KernelWS
from logcheck import assert_clean_log

SERVICE_TOKEN = "raygate-service-token-" + uuid.uuid4().hex
ADMIN_TOKEN = "test-admin-service-token-" + uuid.uuid4().hex
PASSWORD = "hub-test-password"
CACHE_SECONDS = 1.0


class PortTaken(RuntimeError):
    """Another process bound a port picked for the Hub or its proxy before they did."""


class Hub:
    """A running JupyterHub: its URLs, its API as the test's admin service, its process."""

    def __init__(self, root: Path, gateway_url: str, hub_port: int) -> None:
        self.root = root
        self.port = free_port()
        self.hub_port = hub_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"http://127.0.0.1:{self.hub_port}/hub/api"
        config = root / "jupyterhub_config.py"
        config.write_text(hub_config(root, self.port, self.hub_port, gateway_url))
        self.log_path = root / "hub.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.api = httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"token {ADMIN_TOKEN}"},
            timeout=30,
            verify=TLS,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for the Hub and its proxy to answer. A Hub that exits or does not come up
        takes down what it started before this raises: its proxy outlives it otherwise (CI
        run 21)."""
        deadline = time.monotonic() + timeout
        started: set[int] = set()
        while time.monotonic() < deadline:
            started.update(self.processes())
            output = self.output()
            # The proxy's (the Hub may then wait on it for good) or the Hub's own.
            if "EADDRINUSE" in output or "Address already in use" in output:
                self._give_up(started)
                raise PortTaken(self.output())
            if self.proc.poll() is not None:
                self._give_up(started)
                raise RuntimeError(f"JupyterHub exited:\n{self.output()}")
            try:
                if (
                    self.api.get("/").status_code == 200
                    and self.api.get(self.url + "/hub/health", timeout=2).is_success
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self._give_up(started)
        raise RuntimeError(f"JupyterHub did not come up:\n{self.output()}")

    def _give_up(self, started: set[int]) -> None:
        stop_process(self.proc)
        self.log.close()
        for pid in wait_gone(sorted(started - {self.proc.pid}), timeout=5):
            psutil.Process(pid).kill()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[int]:
        """The Hub, its proxy and the single-user servers it started."""
        try:
            hub = psutil.Process(self.proc.pid)
            return [hub.pid, *(p.pid for p in hub.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def user(self, name: str, groups: list[str] = ()) -> str:
        """Make Hub user ``name`` in ``groups`` (made as needed); return an API token of
        theirs, made by the admin service (its scopes: the user's own, 'inherit')."""
        r = self.api.post(f"/users/{name}")
        assert r.status_code in (201, 409), r.text
        for group in groups:
            r = self.api.post(f"/groups/{group}")
            assert r.status_code in (201, 409), r.text
            r = self.api.post(f"/groups/{group}/users", json={"users": [name]})
            assert r.status_code == 200, r.text
        return self.token(name)["token"]

    def token(self, name: str, **body: Any) -> dict[str, Any]:
        r = self.api.post(f"/users/{name}/tokens", json={"note": "raygate test", **body})
        assert r.status_code == 201, r.text
        return r.json()

    def stop(self) -> None:
        """Stop the Hub (SIGTERM: it stops its proxy and the servers it started); fail if
        any of them is left, or if the Hub logged a traceback."""
        pids = self.processes()
        stop_process(self.proc, timeout=30)
        self.log.close()
        left = wait_gone(pids)
        for pid in left:  # not to leave them to the next test; the assert below fails
            psutil.Process(pid).kill()
        assert not left, f"JupyterHub left processes behind: {left}\n{self.output()}"
        assert_clean_log("JupyterHub", self.output())


def hub_config(root: Path, port: int, hub_port: int, gateway_url: str) -> str:
    """The Hub's jupyterhub_config.py: as docs/jupyterhub.md says for raygate (the service,
    the role that lets users reach it, the spawner's environment and token scopes), plus what
    a test Hub needs (loopback ports, its own files, a dummy login, an admin service)."""
    return textwrap.dedent(
        f"""
        c = get_config()  # noqa
        c.JupyterHub.ip = "127.0.0.1"
        c.JupyterHub.port = {port}
        c.JupyterHub.hub_ip = "127.0.0.1"
        c.JupyterHub.hub_port = {hub_port}
        c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
        c.ConfigurableHTTPProxy.should_start = True
        c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
        c.JupyterHub.cookie_secret_file = "{root}/jupyterhub_cookie_secret"
        c.JupyterHub.pid_file = "{root}/jupyterhub.pid"
        c.JupyterHub.cleanup_servers = True
        c.JupyterHub.authenticator_class = "dummy"
        c.DummyAuthenticator.password = {PASSWORD!r}
        c.Authenticator.allow_all = True
        c.JupyterHub.spawner_class = "simple"
        c.SimpleLocalProcessSpawner.home_dir_template = "{root}/home/{{username}}"
        c.Spawner.cmd = [{sys.executable!r}, "-m", "jupyterhub.singleuser"]
        c.Spawner.args = ["--ServerApp.allow_root=True"]  # CI may run as root
        c.Spawner.start_timeout = 90
        c.Spawner.http_timeout = 90

        # raygate, as docs/jupyterhub.md registers it
        c.JupyterHub.services = [
            {{"name": "raygate", "api_token": {SERVICE_TOKEN!r}}},
            {{"name": "test-admin", "api_token": {ADMIN_TOKEN!r}}},
        ]
        c.JupyterHub.load_roles = [
            {{"name": "user", "scopes": ["self", "access:services!service=raygate"]}},
            {{
                "name": "test-admin",
                "scopes": ["admin:users", "admin:groups", "admin:servers", "tokens"],
                "services": ["test-admin"],
            }},
        ]
        c.Spawner.server_token_scopes = [
            "users:activity!user",
            "access:servers!server",
            "access:services!service=raygate",
        ]
        c.Spawner.environment = {{
            "JUPYTER_GATEWAY_URL": {gateway_url!r},
            "JUPYTER_GATEWAY_AUTH_TOKEN": lambda spawner: spawner.api_token,
        }}
        """
    )


@pytest.fixture(scope="module")
def hub_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, ServerProcess]]:
    """A JupyterHub and raygate as its service (local kernels; the static token kept for
    the test's own looks at every kernel)."""
    needed_module("jupyterhub", "pip install -e '.[test]'")
    if not shutil.which("configurable-http-proxy"):
        missing("configurable-http-proxy", "npm install -g configurable-http-proxy; .ci/run does")
    root = tmp_path_factory.mktemp("raygate")
    specs = root / "kernels"
    write_kernelspec(str(specs), "python3", ipykernel_argv())
    write_kernelspec(
        str(specs),
        "physics-only",
        ipykernel_argv(),
        metadata={"raygate": {"allow_users": ["group:physics"]}},
    )
    config = root / "raygate.toml"
    config.write_text("max_kernels_per_user = 3\n[group_caps.students]\nmax_kernels_per_user = 1\n")
    # The Hub's ports are picked free, and a port picked free can be bound by another
    # process (a Ray gRPC server of the session, in CI run 21) before the Hub's proxy binds
    # it. Such a start is not what the tests look at: it is made afresh, on new ports.
    for attempt in range(3):
        hub_api_port = free_port()
        gateway = hub_service(specs, config, hub_api_port)
        try:
            hub = Hub(tmp_path_factory.mktemp("hub"), gateway.url, hub_api_port)
            hub.wait_ready()
        except PortTaken:
            gateway.stop()
            if attempt == 2:
                raise
            continue
        except BaseException:
            gateway.stop()
            raise
        break
    try:
        yield hub, gateway
    finally:
        try:
            hub.stop()
        finally:
            gateway.stop()


def hub_service(specs: Path, config: Path, hub_api_port: int) -> ServerProcess:
    """raygate as the Hub's service (local kernels; the static token kept for the test's
    own looks at every kernel), ready."""
    hub_api = f"http://127.0.0.1:{hub_api_port}/hub/api"
    gateway = ServerProcess(
        [
            "--default-launcher",
            "local",
            "--kernelspec-dirs",
            str(specs),
            "--config",
            str(config),
            "--jupyterhub-api-url",
            hub_api,
            "--admin-users",
            "group:ops",
            "--jupyterhub-cache-seconds",
            str(CACHE_SECONDS),
        ],
        env={"JUPYTERHUB_API_TOKEN": SERVICE_TOKEN},
    )
    gateway.wait_ready()
    return gateway


pytestmark = pytest.mark.xdist_group("jupyterhub")  # one Hub for the module, on one worker


def as_user(gateway: ServerProcess, token: str) -> Gateway:
    return Gateway(gateway.url, token)


def until(check: Any, timeout: float, what: str) -> float:
    """Seconds until ``check()`` is true (fails after ``timeout``)."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - start


async def test_hub_users_start_kernels_as_themselves(hub_gateway) -> None:
    hub, gateway = hub_gateway
    ada = as_user(gateway, hub.user("ada", ["physics"]))
    bob = as_user(gateway, hub.user("bob"))
    kernel = ada.start_kernel("python3", env={"KERNEL_USERNAME": "mallory"})
    try:
        assert kernel["username"] == "ada"
        out = await ada.run(kernel["id"], "import os; print(os.environ['KERNEL_USERNAME'])")
        assert out.stdout.strip() == "ada"
        assert [k["username"] for k in ada.get("/api/kernels").json()] == ["ada"]
        assert bob.get("/api/kernels").json() == []
        assert bob.get(f"/api/kernels/{kernel['id']}").status_code == 404
        every = gateway.client.get("/api/kernels").json()  # the static token sees all
        assert {k["id"]: k["username"] for k in every}[kernel["id"]] == "ada"
        ops = as_user(gateway, hub.user("olga", ["ops"]))  # --admin-users group:ops
        assert kernel["id"] in {k["id"] for k in ops.get("/api/kernels").json()}
        assert ops.get(f"/api/kernels/{kernel['id']}").json()["username"] == "ada"
    finally:
        ada.shutdown_kernel(kernel["id"])


def test_tokens_that_are_no_users_get_401(hub_gateway) -> None:
    _, gateway = hub_gateway
    for token in (ADMIN_TOKEN, SERVICE_TOKEN, "made-up-" + uuid.uuid4().hex):
        r = as_user(gateway, token).get("/api/kernels")
        assert r.status_code == 401, (token, r.text)
        assert set(r.json()) == {"reason", "message"}
    assert httpx.get(gateway.url + "/api/health").status_code == 200


def test_a_token_without_access_to_raygate_gets_403(hub_gateway) -> None:
    hub, gateway = hub_gateway
    hub.user("cy")
    narrow = hub.token("cy", scopes=["read:users:name!user"])["token"]
    r = as_user(gateway, narrow).get("/api/kernels")
    assert r.status_code == 403
    assert "access:services!service=raygate" in r.json()["message"]


def test_revoked_tokens_and_deleted_users_stop_within_the_cache_period(hub_gateway) -> None:
    hub, gateway = hub_gateway
    hub.user("dan")
    made = hub.token("dan")
    dan = as_user(gateway, made["token"])
    assert dan.get("/api/kernels").status_code == 200
    assert hub.api.delete(f"/users/dan/tokens/{made['id']}").status_code == 204
    took = until(lambda: dan.get("/api/kernels").status_code == 401, 10, "revoked token")
    assert took < CACHE_SECONDS + 5
    eve = as_user(gateway, hub.user("eve"))
    assert eve.get("/api/kernels").status_code == 200
    assert hub.api.delete("/users/eve").status_code == 204
    until(lambda: eve.get("/api/kernels").status_code == 401, 10, "deleted user's token")


def test_group_caps_and_group_allow_lists_hold(hub_gateway) -> None:
    hub, gateway = hub_gateway
    fay = as_user(gateway, hub.user("fay", ["students", "physics"]))
    gus = as_user(gateway, hub.user("gus"))
    fay.start_kernel("physics-only")  # a member of the allow list's group
    try:
        r = fay.post("/api/kernels", json={"name": "python3"})
        assert r.status_code == 403, r.text
        assert "at most 1 per user (the cap of group 'students')" in r.json()["message"]
        r = gus.post("/api/kernels", json={"name": "physics-only"})
        assert r.status_code == 403, r.text
        assert "'gus'" in r.json()["message"] and "allow list" in r.json()["message"]
        # joining the group on the Hub admits gus, once his cached identity expires
        assert hub.api.post("/groups/physics/users", json={"users": ["gus"]}).is_success
        until(
            lambda: gus.post("/api/kernels", json={"name": "physics-only"}).status_code == 201,
            10,
            "gus admitted as a member of physics",
        )
    finally:
        for k in gateway.client.get("/api/kernels").json():
            gateway.client.shutdown_kernel(k["id"])


async def test_a_user_logs_in_and_their_notebook_server_runs_cells_on_raygate(
    hub_gateway,
) -> None:
    """The whole path: the Hub's login form, the user's single-user server spawned with the
    gateway settings of docs/jupyterhub.md, a kernel started through that server, a cell
    run over its WebSocket, and raygate knowing the kernel as that user's."""
    hub, gateway = hub_gateway
    with httpx.Client(base_url=hub.url, follow_redirects=True, timeout=120) as browser:
        form = browser.get("/hub/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
        assert xsrf, form.text
        r = browser.post(
            "/hub/login",
            data={"username": "lin", "password": PASSWORD, "_xsrf": xsrf.group(1)},
        )
        assert r.status_code == 200, r.text
        assert "lin" in browser.get("/hub/home").text

        def ready() -> bool:
            server = hub.api.get("/users/lin").json()["servers"].get("")
            if server is None:  # not spawned on login by this Hub's defaults: ask for it
                browser.get("/hub/spawn")
                return False
            return bool(server.get("ready"))

        until(ready, 120, "lin's server ready")
    token = hub.token("lin")["token"]  # 'inherit': lin's own access to their server
    server = httpx.Client(
        base_url=hub.url + "/user/lin", headers={"Authorization": f"token {token}"}, timeout=120
    )
    try:
        specs = server.get("/api/kernelspecs").json()["kernelspecs"]
        assert "physics-only" in specs  # raygate's, through the gateway client
        r = server.post("/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kernel_id = r.json()["id"]
        session = uuid.uuid4().hex
        ws_url = hub.url.replace("http", "ws", 1)
        ws = await websockets.connect(
            f"{ws_url}/user/lin/api/kernels/{kernel_id}/channels?session_id={session}",
            additional_headers={"Authorization": f"token {token}"},
            max_size=None,
        )
        kernel = KernelWS(ws, False, session)
        try:
            out = await kernel.execute(
                "import os, getpass; print(os.environ['KERNEL_USERNAME'], 6 * 7)", timeout=60
            )
        finally:
            await kernel.close()
        assert out.status == "ok", out
        assert out.stdout.strip() == "lin 42"
        models = {k["id"]: k for k in gateway.client.get("/api/kernels").json()}
        assert models[kernel_id]["username"] == "lin"
        assert server.delete(f"/api/kernels/{kernel_id}").status_code == 204
        assert kernel_id not in {k["id"] for k in gateway.client.get("/api/kernels").json()}
    finally:
        server.close()
        hub.api.delete("/users/lin/server")
