"""raygate driven by a real jupyter_server started with ``--gateway-url``.

This is how JupyterLab users reach raygate: the browser talks to jupyter_server, whose
gateway client forwards kernels and kernelspecs to us.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import ServerProcess, free_port, interrupt_running_sleep
from kgclient import Gateway
from logcheck import assert_clean_log

JUPYTER_TOKEN = "jupyter-token"


class JupyterServer:
    """A notebook server for ``gateway``; ``app``: the module to run (``jupyterlab`` serves
    JupyterLab too), with ``args`` and ``env`` of its own added. ``expect_errors``: patterns
    of the tracebacks its log may have (checked at stop)."""

    def __init__(
        self,
        gateway: ServerProcess,
        root: str,
        app: str = "jupyter_server",
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        expect_errors: tuple[str, ...] = (),
    ) -> None:
        self.expect_errors = expect_errors
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(root, "jupyter.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                app,
                f"--port={self.port}",
                "--ip=127.0.0.1",
                "--no-browser",
                "--allow-root",
                f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token={JUPYTER_TOKEN}",
                f"--gateway-url={gateway.url}",
                f"--GatewayClient.auth_token={gateway.token}",
                "--GatewayClient.request_timeout=60",
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "JUPYTER_RUNTIME_DIR": os.path.join(root, "runtime"), **(env or {})},
        )
        self.client = Gateway(self.url, JUPYTER_TOKEN)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, open(self.log_path).read()
            try:
                if self.client.get("/api").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(open(self.log_path).read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        with open(self.log_path, errors="replace") as f:
            assert_clean_log("jupyter_server", f.read(), self.expect_errors)


@pytest.fixture(scope="module")
def jupyter(gateway_server: ServerProcess, tmp_path_factory) -> Iterator[JupyterServer]:
    server = JupyterServer(gateway_server, str(tmp_path_factory.mktemp("jupyter")))
    server.wait_ready()
    yield server
    server.stop()


def test_kernelspecs_through_jupyter_server(jupyter: JupyterServer) -> None:
    specs = jupyter.client.get("/api/kernelspecs").json()
    assert "python3" in specs["kernelspecs"]
    logo = specs["kernelspecs"]["python3"]["resources"]["logo-64x64"]
    r = jupyter.client.get(logo)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")


async def test_kernel_lifecycle_through_jupyter_server(
    jupyter: JupyterServer, gateway_server: ServerProcess
) -> None:
    js = jupyter.client
    r = js.post("/api/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    # the kernel lives in raygate
    assert gateway_server.client.get(f"/api/kernels/{kernel_id}").status_code == 200

    ws = await js.connect(kernel_id)
    out = await ws.execute("state = 'kept'\nprint('hello from raygate')")
    assert out.stdout == "hello from raygate\n"

    # through jupyter_server's gateway client: its interrupt handler calls raygate's
    await interrupt_running_sleep(js, ws, kernel_id, timeout=30)
    assert (await ws.execute("state")).result == "'kept'"

    r = js.post(f"/api/kernels/{kernel_id}/restart")
    assert r.status_code == 200, r.text
    for _ in range(50):
        if js.get(f"/api/kernels/{kernel_id}").json()["execution_state"] == "idle":
            break
        await asyncio.sleep(0.1)
    out = await ws.execute("'state' in globals()")
    assert out.result == "False"
    await ws.close()

    assert js.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert gateway_server.client.get(f"/api/kernels/{kernel_id}").status_code == 404
    assert all(k["id"] != kernel_id for k in js.get("/api/kernels").json())


async def test_session_and_env_through_jupyter_server(
    jupyter: JupyterServer, gateway_server: ServerProcess
) -> None:
    js = jupyter.client
    # jupyter_server copies its environment for a start's env before its first gateway
    # request sets KERNEL_LAUNCH_TIMEOUT: a notebook server's first start carries none.
    # JupyterLab lists kernelspecs first; so does this test, whichever test ran before it.
    assert js.get("/api/kernelspecs").status_code == 200
    r = js.post(
        "/api/sessions",
        json={"path": "nb.ipynb", "type": "notebook", "name": "nb", "kernel": {"name": "python3"}},
    )
    assert r.status_code == 201, r.text
    session = r.json()
    kernel_id = session["kernel"]["id"]
    ws = await js.connect(kernel_id)
    out = await ws.execute("import os; print(os.environ.get('KERNEL_LAUNCH_TIMEOUT'))")
    # jupyter_server sends its request timeout less 2s as KERNEL_LAUNCH_TIMEOUT
    assert out.stdout.strip() == "58"
    await ws.close()
    assert js.delete(f"/api/sessions/{session['id']}").status_code == 204
    for _ in range(50):
        if gateway_server.client.get(f"/api/kernels/{kernel_id}").status_code == 404:
            break
        await asyncio.sleep(0.1)
    assert gateway_server.client.get(f"/api/kernels/{kernel_id}").status_code == 404


async def test_large_output_through_jupyter_server(jupyter: JupyterServer) -> None:
    js = jupyter.client
    kernel_id = js.post("/api/kernels", json={"name": "python3"}).json()["id"]
    ws = await js.connect(kernel_id)
    out = await ws.execute("print('y' * (4 * 1024 * 1024))", timeout=120)
    assert len(out.stdout) == 4 * 1024 * 1024 + 1
    await ws.close()
    js.delete(f"/api/kernels/{kernel_id}")
