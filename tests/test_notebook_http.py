"""``raygate serve --api notebook-http``: a notebook's cells as an HTTP API, served by real
local kernels, as users see it (statuses, bodies, headers, kernels replaced)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest

from conftest import TOKEN, ServerProcess, wait_gone
from nbhttp import write_notebook

pytestmark = pytest.mark.xdist_group("notebook-http")
AUTH = {"Authorization": f"token {TOKEN}"}
TIMEOUT = 4

CELLS = [
    ("markdown", "# A test API\nIts cells are endpoints."),
    "import json, os, time\nseeded = 'yes'",
    "# GET /hello\nprint('hello world')",
    "# GET /hello/:name\nreq = json.loads(REQUEST)\nprint('hello', req['path']['name'])",
    "# POST /echo\nprint(REQUEST)",
    "# ResponseInfo POST /echo\n"
    "print(json.dumps({'status': 201, 'headers': {'Content-Type': 'application/json', 'X-Served': 'yes'}}))",
    "# GET /fail\nraise ValueError('nope')",
    "# GET /pid\ntime.sleep(float(json.loads(REQUEST)['args'].get('s', ['0'])[0]))\nprint(os.getpid())",
    "# GET /forever\nwhile True:\n    time.sleep(0.05)",
    "# GET /die\nos._exit(1)",
    "# GET /env\nprint(os.environ.get('KERNEL_GATEWAY'), seeded, later)",
    "later = 'also seeded'",  # seed cells after the first endpoint run at start too
    "# GET /value\n41 + 1",
]


def nb_server(tmp: Path, *extra: str, expect_errors: tuple[str, ...] = ()) -> ServerProcess:
    seed = write_notebook(tmp / "api.ipynb", CELLS)
    args = ["--api", "notebook-http", "--seed-uri", seed, "--default-launcher", "local"]
    server = ServerProcess([*args, *extra], expect_errors=expect_errors)
    server.wait_ready(120)
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    server = nb_server(
        tmp_path_factory.mktemp("nb"),
        "--prespawn-count",
        "2",
        "--notebook-http-timeout",
        str(TIMEOUT),
        "--notebook-http-queue",
        "2",
        "--notebook-http-max-body",
        "1Ki",
        "--notebook-http-body-timeout",
        "2",
        "--allow-notebook-download",
    )
    yield server
    server.stop()


@pytest.fixture
def http(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


def pids(http: httpx.Client, n: int = 2) -> set[str]:
    """The pids of the kernels that answer ``n`` requests at once (each holds its kernel)."""

    async def many() -> set[str]:
        async with httpx.AsyncClient(base_url=str(http.base_url), headers=AUTH, timeout=30) as c:
            answers = await asyncio.gather(*(c.get("/pid", params={"s": "0.5"}) for _ in range(n)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return {a.text.strip() for a in answers}

    return asyncio.run(many())


def test_cells_answer_requests(http: httpx.Client) -> None:
    r = http.get("/hello")
    assert (r.status_code, r.text, r.headers["content-type"]) == (
        200,
        "hello world\n",
        "text/plain",
    )
    assert http.get("/hello/ada%20l").text == "hello ada l\n"
    r = http.post("/echo?q=1&q=2", json={"a": [1, 2]}, headers={"X-Twice": "1"})
    assert r.status_code == 201 and r.headers["content-type"] == "application/json"
    assert r.headers["x-served"] == "yes"
    sent = r.json()
    assert (
        sent["body"] == {"a": [1, 2]} and sent["args"] == {"q": ["1", "2"]} and sent["path"] == {}
    )
    assert (
        sent["headers"]["Content-Type"] == "application/json" and sent["headers"]["X-Twice"] == "1"
    )
    # A body that is not JSON reaches the cell as text, as Kernel Gateway gives it.
    bad = http.post("/echo", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 201 and bad.json()["body"] == "{not json"
    form = http.post("/echo", data={"k": "v"})
    assert form.json()["body"] == {"k": ["v"]}
    # Seed cells ran (also those after the first endpoint); kernels know they serve HTTP.
    assert http.get("/env").text == "1 yes also seeded\n"
    assert http.get("/value").text == '{"text/plain": "42"}'  # no stdout: the result


def test_errors_as_kernel_gateway_answers_them(http: httpx.Client) -> None:
    r = http.get("/fail")
    assert (r.status_code, r.text) == (500, "Error ValueError: nope \n")
    r = http.get("/nowhere")
    assert r.status_code == 404 and r.json()["reason"] == "Not Found"
    r = http.put("/hello")
    assert (r.status_code, r.text) == (405, "")
    r = http.patch("/hello")
    assert r.status_code == 405 and r.json()["reason"] == "Method Not Allowed"
    assert http.options("/hello").status_code == 200
    assert httpx.get(str(http.base_url) + "/hello").status_code == 401  # no token
    r = http.post("/echo", content=b"x" * 2048)
    assert r.status_code == 413 and "1024" in r.json()["message"]
    r = http.post("/echo", content=b"\xff\xfe", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "UTF-8" in r.json()["message"]
    assert http.get("/hello").status_code == 200


def test_notebook_download(http: httpx.Client) -> None:
    r = http.get("/_api/source")
    assert r.status_code == 200 and r.json()["cells"][2]["source"][0] == "# GET /hello\n"
    assert httpx.get(str(http.base_url) + "/_api/source").status_code == 401  # token


def test_swagger_spec(http: httpx.Client) -> None:
    spec = http.get("/_api/spec/swagger.json").json()
    assert spec["swagger"] == "2.0" and spec["info"] == {"version": "0.0.0", "title": "api"}
    assert spec["paths"]["/hello/:name"] == {
        "get": {"responses": {"200": {"description": "Success"}}}
    }
    assert set(spec["paths"]["/echo"]) == {"post"}


def test_kernels_serve_one_request_each_and_queue_is_bounded(http: httpx.Client) -> None:
    assert len(pids(http)) == 2  # two at once: one on each kernel

    async def flood() -> list[int]:
        async with httpx.AsyncClient(base_url=str(http.base_url), headers=AUTH, timeout=30) as c:

            async def until(what: str, n: int) -> None:
                while True:
                    status = (await c.get("/api/status")).json()["notebook_http"]
                    busy = sum(k["state"] == "busy" for k in status["kernels"])
                    if (busy if what == "busy" else status["queue_length"]) >= n:
                        return
                    await asyncio.sleep(0.05)

            slow = [asyncio.ensure_future(c.get("/pid", params={"s": "1"})) for _ in range(2)]
            await until("busy", 2)
            slow += [asyncio.ensure_future(c.get("/pid", params={"s": "1"})) for _ in range(2)]
            await until("queued", 2)
            refused = await c.get("/hello")  # 2 kernels busy, 2 waiting: the queue is full
            assert "busy" in refused.json()["message"]
            return sorted([refused.status_code] + [(await r).status_code for r in slow])

    assert asyncio.run(flood()) == [200, 200, 200, 200, 503]


def test_timeout_interrupts_the_kernel(http: httpx.Client) -> None:
    before = pids(http)
    started = time.monotonic()
    r = http.get("/forever")
    assert r.status_code == 504 and "interrupted" in r.json()["message"]
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 5
    assert pids(http) == before  # interrupted, not restarted: both kernels serve again
    assert http.get("/env").text == "1 yes also seeded\n"


def test_slow_client_holds_no_kernel(server: ServerProcess, http: httpx.Client) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: token "
            + TOKEN.encode()
            + b"\r\nContent-Length: 10\r\n\r\nab"
        )
        # Meanwhile both kernels serve others (the slow body is read before a kernel is taken).
        assert len(pids(http)) == 2
        slow.settimeout(10)
        answer = slow.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_dead_kernel_answers_500_and_is_replaced(server: ServerProcess, http: httpx.Client) -> None:
    before = pids(http)
    r = http.get("/die")
    assert r.status_code == 500 and "died" in r.json()["message"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kernels = http.get("/api/status").json()["notebook_http"]["kernels"]
        if [k["state"] for k in kernels] == ["idle", "idle"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the dead kernel was not replaced: {kernels}")
    after = pids(http)
    assert len(after) == 2 and len(after & before) == 1  # one new kernel process
    assert http.get("/env").text == "1 yes also seeded\n"  # seeded again


def test_metrics_and_status(http: httpx.Client) -> None:
    http.get("/hello")
    text = http.get("/metrics").text
    assert 'raygate_notebook_http_requests_total{code="200",endpoint="/hello",method="GET"}' in text
    assert "raygate_notebook_http_queue_length 0.0" in text
    assert 'raygate_notebook_http_kernels{state="idle"} 2.0' in text
    status = http.get("/api/status").json()["notebook_http"]
    assert status["queue_length"] == 0 and status["requests"] > 0
    assert len(status["kernels"]) == 2 and status["requests_per_second"] > 0
    assert {k["id"] for k in status["kernels"]} <= {
        k["id"] for k in http.get("/api/status").json()["kernels"]
    }
    # The kernel API is not served in this mode.
    assert http.get("/api/kernels").status_code == 404


def test_bad_seed_notebooks_stop_serve(tmp_path: Path, refused_serve) -> None:
    base = ["--api", "notebook-http", "--default-launcher", "local"]
    result = refused_serve(*base, "--seed-uri", str(tmp_path / "missing.ipynb"))
    assert result.exit_code != 0 and "missing.ipynb" in result.output
    (tmp_path / "bad.ipynb").write_text("{")
    result = refused_serve(*base, "--seed-uri", str(tmp_path / "bad.ipynb"))
    assert result.exit_code != 0 and "bad.ipynb is not JSON" in result.output
    none = write_notebook(tmp_path / "none.ipynb", ["print(1)"])
    result = refused_serve(*base, "--seed-uri", none)
    assert result.exit_code != 0 and "none.ipynb has no endpoints" in result.output
    result = refused_serve(*base)
    assert result.exit_code != 0 and "--seed-uri" in result.output
    good = write_notebook(tmp_path / "good.ipynb", ["# GET /a\nprint(1)"])
    result = refused_serve(*base, "--seed-uri", good, "--prespawn-count", "3", "--max-kernels", "2")
    assert result.exit_code != 0 and "more than --max-kernels 2" in result.output
    result = refused_serve(*base, "--seed-uri", good, "--force-kernel-name", "nope")
    assert result.exit_code != 0 and "'nope', which is not installed" in result.output
    result = refused_serve("--seed-uri", good, "--default-launcher", "local")  # kernel API only
    assert result.exit_code != 0 and "--seed-uri is for --api notebook-http" in result.output
    isolated = ("--kernel-isolation", "users", "--user-header", "X-User")
    result = refused_serve(*base, "--seed-uri", good, *isolated)
    assert result.exit_code != 0 and "--kernel-isolation users" in result.output


def test_seed_cell_that_raises_stops_serve(tmp_path: Path) -> None:
    seed = write_notebook(
        tmp_path / "raises.ipynb", ["import nosuchmodule_here", "# GET /a\nprint(1)"]
    )
    server = ServerProcess(
        ["--api", "notebook-http", "--seed-uri", seed, "--default-launcher", "local"],
        expect_errors=["ModuleNotFoundError", "PoolError", "Traceback"],
    )
    assert server.proc.wait(120) != 0
    out = server.output()
    assert "seed cell 1" in out and "nosuchmodule_here" in out and "raises.ipynb" in out
    assert wait_gone(server.kernel_pids()) == []
    server.stop()


def test_both_apis_culling_and_growing(tmp_path: Path) -> None:
    culling = ("--cull-idle-timeout", "1", "--cull-interval", "0.2", "--cull-warning", "0")
    growing = ("--notebook-http-max-kernels", "2", "--notebook-http-idle-stop", "1")
    server = nb_server(tmp_path, "--api", "kernel,notebook-http", *culling, *growing)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
            assert http.get("/notebook/hello").text == "hello world\n"
            assert http.get("/notebook/_api/spec/swagger.json").status_code == 200
            assert http.get("/notebook/_api/source").status_code == 404  # not allowed here
            assert http.get("/hello").status_code == 404
            (endpoint,) = http.get("/api/kernels").json()  # in the kernel table too
            mine = http.post("/api/kernels", json={"name": "python3"}).json()["id"]
            deadline = time.monotonic() + 30
            while mine in {k["id"] for k in http.get("/api/kernels").json()}:
                assert time.monotonic() < deadline, "the idle kernel was not culled"
                time.sleep(0.2)
            # The endpoint kernel, idle as long, is the gateway's own: not culled.
            assert [k["id"] for k in http.get("/api/kernels").json()] == [endpoint["id"]]

            def endpoint_kernels() -> list[dict]:
                return http.get("/api/status").json()["notebook_http"]["kernels"]

            async def busy_then_more() -> list[int]:
                async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c:

                    async def kernels() -> list[dict]:
                        return (await c.get("/api/status")).json()["notebook_http"]["kernels"]

                    first = asyncio.ensure_future(c.get("/notebook/pid", params={"s": "2"}))
                    while (await kernels())[0]["state"] != "busy":
                        await asyncio.sleep(0.05)
                    second = asyncio.ensure_future(c.get("/notebook/hello"))  # waits: grows
                    while len(await kernels()) < 2:
                        await asyncio.sleep(0.05)
                    return [(await first).status_code, (await second).status_code]

            assert asyncio.run(busy_then_more()) == [200, 200]
            deadline = time.monotonic() + 60
            while len(endpoint_kernels()) != 1 or endpoint_kernels()[0]["state"] != "idle":
                assert time.monotonic() < deadline, f"not back to 1 kernel: {endpoint_kernels()}"
                time.sleep(0.2)
            assert endpoint_kernels()[0]["index"] == 0  # the extra one stopped, idle
            assert [k["id"] for k in http.get("/api/kernels").json()] == [endpoint["id"]]
    finally:
        server.stop()


def test_mode_from_variables_and_config_file(
    tmp_path: Path, refused_serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYGATE_API", "notebook-http")
    monkeypatch.setenv("RAYGATE_SEED_URI", str(tmp_path / "from-env.ipynb"))
    result = refused_serve("--default-launcher", "local")
    assert result.exit_code != 0 and "from-env.ipynb" in result.output
    monkeypatch.delenv("RAYGATE_API")
    monkeypatch.delenv("RAYGATE_SEED_URI")
    config = tmp_path / "raygate.toml"
    config.write_text(
        f'api = "kernel_gateway.notebook_http"\nseed_uri = "{tmp_path / "from-toml.ipynb"}"\n'
        "prespawn_count = 3\n"
    )
    result = refused_serve("--config", str(config), "--default-launcher", "local")
    assert result.exit_code != 0 and "from-toml.ipynb" in result.output
    result = refused_serve("--api", "websocket")
    assert result.exit_code != 0 and "not one of" in result.output
