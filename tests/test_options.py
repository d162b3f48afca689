"""Options of ``raygate serve`` that shape what a start request gets, as users see them.

One gateway, started with every option below, serves the tests that only read or start
and stop their own kernels.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import websockets

from conftest import ServerProcess, cleaning_up
from kernelspecs import make_test_kernelspecs
from kgclient import Gateway

MAX_LAUNCH_TIMEOUT = 3
COOKIE_SECRET = "cookie-secret-never-logged"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    specs = make_test_kernelspecs(str(tmp_path_factory.mktemp("specs")))
    server = ServerProcess(
        [
            "--default-launcher", "local",
            "--kernelspec-dirs", specs,
            "--default-kernel-name", "by-message",
            "--allowed-envs", "EXTRA_OK,ALSO_OK",
            "--max-kernel-launch-timeout", str(MAX_LAUNCH_TIMEOUT),
            "--max-kernel-cpus", "2",
            "--max-kernel-gpus", "1",
            "--log-level", "debug",
        ]
    )  # fmt: skip
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def gw(server: ServerProcess) -> Iterator[Gateway]:
    yield from cleaning_up(server.client)


def test_default_kernel_name_names_the_default_and_starts_it(gw: Gateway) -> None:
    assert gw.get("/api/kernelspecs").json()["default"] == "by-message"
    r = gw.post("/api/kernels", json={})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "by-message"


async def test_allowed_envs_reach_the_kernel_and_no_others(gw: Gateway) -> None:
    env = {"EXTRA_OK": "yes", "ALSO_OK": "too", "EXTRA_NO": "no", "KERNEL_MINE": "k"}
    kernel = gw.start_kernel(env=env)
    code = "import os; print([os.environ.get(n) for n in ('EXTRA_OK', 'ALSO_OK', 'EXTRA_NO', 'KERNEL_MINE')])"
    out = await gw.run(kernel["id"], code)
    assert out.stdout == "['yes', 'too', None, 'k']\n"


def test_a_longer_launch_timeout_asked_for_is_cut_to_the_maximum(gw: Gateway) -> None:
    started = time.monotonic()
    r = gw.post("/api/kernels", json={"name": "silent", "env": {"KERNEL_LAUNCH_TIMEOUT": "600"}})
    assert r.status_code == 504, r.text
    # what was left of the maximum when the kernel process had been started
    waited = float(re.search(r"did not answer within ([\d.]+)s", r.json()["message"])[1])
    assert MAX_LAUNCH_TIMEOUT - 2 < waited <= MAX_LAUNCH_TIMEOUT
    assert time.monotonic() - started < MAX_LAUNCH_TIMEOUT + 10


@pytest.mark.parametrize(
    ("env", "words"),
    [({"KERNEL_CPUS": "4"}, "cpus"), ({"KERNEL_GPUS": "2"}, "gpus")],
)
def test_requests_over_the_caps_are_a_400(gw: Gateway, env: dict, words: str) -> None:
    r = gw.post("/api/kernels", json={"name": "python3", "env": env})
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"reason", "message"}
    assert words in body["message"].lower() and "bad resource request" in body["message"]
    assert gw.get("/api/kernels").json() == []


async def test_cookies_and_tokens_are_redacted_from_debug_logs(
    server: ServerProcess, gw: Gateway
) -> None:
    kernel = gw.start_kernel("python3")
    url = server.url.replace("http", "ws", 1) + f"/api/kernels/{kernel['id']}/channels"
    headers = {"Authorization": f"token {server.token}", "Cookie": f"_xsrf={COOKIE_SECRET}"}
    async with websockets.connect(url, additional_headers=headers):
        pass
    deadline = time.monotonic() + 10
    while "[redacted]" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.output()
    assert "[redacted]" in log  # the debug log did show the handshake's headers
    assert COOKIE_SECRET not in log
    assert server.token not in log
