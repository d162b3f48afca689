"""Users: per-user tokens and a trusted proxy header name the user; users see and control only
their own kernels; allow and deny lists; per-user caps on kernels, GPUs and memory, held under
concurrent starts. Real gateways with the local launcher and real ipykernels."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from conftest import ServerProcess, wait_gone
from kernelspecs import ipykernel_argv, make_test_kernelspecs, write_kernelspec
from kgclient import Gateway

USERS = {
    "alice-token": "alice",
    "bob-token": "bob",
    "carol-token": "carol",
    "dave-token": "dave",
    "erin-token": "erin",
    "root-token": "root",
    "mallory-token": "mallory",
}
PER_USER_KERNELS = 3


def write_users(path: str, users: dict[str, str]) -> None:
    with open(path, "w") as f:
        f.writelines(f'"{token}" = "{name}"\n' for token, name in users.items())


def make_specs(root: str) -> str:
    make_test_kernelspecs(root)
    write_kernelspec(
        root, "alice-only", ipykernel_argv(), metadata={"raygate": {"allow_users": ["alice"]}}
    )
    write_kernelspec(
        root, "no-bob", ipykernel_argv(), metadata={"raygate": {"deny_users": ["bob"]}}
    )
    return root


def assert_error(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"reason", "message"}, body
    for word in words:
        assert word in body["message"], body
    return body["message"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("users")
    users_file = str(root / "users.toml")
    write_users(users_file, USERS)
    server = ServerProcess(
        [
            "--default-launcher", "local",
            "--kernelspec-dirs", make_specs(str(root / "specs")),
            "--users-file", users_file,
            "--admin-users", "root",
            "--deny-users", "mallory",
            "--max-kernels", "30",
            "--max-kernels-per-user", str(PER_USER_KERNELS),
            "--max-gpus-per-user", "2",
            "--max-memory-per-user", "1Gi",
        ]
    )  # fmt: skip
    server.wait_ready()
    yield server
    server.stop()


def as_user(server: ServerProcess, name: str) -> Gateway:
    token = next(t for t, n in USERS.items() if n == name)
    return Gateway(server.url, token)


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[Gateway]:
    """The static token's client; every kernel is shut down after the test."""
    yield server.client
    kernels = server.client.get("/api/kernels").json()
    for k in kernels:
        server.client.shutdown_kernel(k["id"])
    assert wait_gone([k["placement"]["pid"] for k in kernels]) == []


def ids(gw: Gateway, path: str = "/api/kernels") -> set[str]:
    r = gw.get(path)
    assert r.status_code == 200, r.text
    return {item["id"] for item in r.json()}


async def test_users_see_and_control_only_their_own_kernels(
    server: ServerProcess, admin: Gateway
) -> None:
    alice, bob, root = (as_user(server, n) for n in ("alice", "bob", "root"))
    a = alice.start_kernel()
    b = bob.start_kernel()
    assert (a["username"], b["username"]) == ("alice", "bob")
    assert ids(alice) == {a["id"]} and ids(bob) == {b["id"]}
    assert ids(root) == ids(admin) == {a["id"], b["id"]}  # the admin and the static token
    assert alice.get(f"/api/kernels/{a['id']}").json()["username"] == "alice"
    # another user's kernel is not found, whatever is done to it
    for method, path in [
        ("GET", ""),
        ("POST", "/interrupt"),
        ("POST", "/restart"),
        ("DELETE", ""),
    ]:
        r = bob.http.request(method, f"/api/kernels/{a['id']}{path}")
        assert_error(r, 404, "Kernel does not exist")
    with pytest.raises(websockets.InvalidStatus) as info:
        await bob.connect(a["id"])
    assert info.value.response.status_code == 404
    assert (await alice.run(a["id"], "print(6 * 7)")).stdout == "42\n"
    # an admin controls anyone's kernel
    assert root.post(f"/api/kernels/{b['id']}/interrupt").status_code == 204
    assert root.delete(f"/api/kernels/{b['id']}").status_code == 204
    assert ids(bob) == set()


def test_sessions_are_per_user(server: ServerProcess, admin: Gateway) -> None:
    alice, bob, root = (as_user(server, n) for n in ("alice", "bob", "root"))
    body = {"path": "Untitled.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    r = alice.post("/api/sessions", json=body)
    assert r.status_code == 201, r.text
    sa = r.json()
    assert sa["kernel"]["username"] == "alice"
    # the same path is another session for another user, with a kernel of their own
    b_kernel = bob.start_kernel()
    r = bob.post("/api/sessions", json={**body, "kernel": {"id": b_kernel["id"]}})
    assert r.status_code == 201, r.text
    sb = r.json()
    assert sb["id"] != sa["id"] and sb["kernel"]["id"] == b_kernel["id"]
    assert ids(alice, "/api/sessions") == {sa["id"]}
    assert ids(bob, "/api/sessions") == {sb["id"]}
    assert ids(root, "/api/sessions") == ids(admin, "/api/sessions") == {sa["id"], sb["id"]}
    # neither another user's session nor their kernel can be reached through sessions
    for method in ("GET", "DELETE"):
        assert_error(bob.http.request(method, f"/api/sessions/{sa['id']}"), 404, "not found")
    r = bob.http.patch(f"/api/sessions/{sa['id']}", json={"path": "mine.ipynb"})
    assert_error(r, 404, "not found")
    r = bob.post("/api/sessions", json={"path": "b.ipynb", "kernel": {"id": sa["kernel"]["id"]}})
    assert_error(r, 404, "Kernel does not exist")
    r = bob.http.patch(f"/api/sessions/{sb['id']}", json={"kernel": {"id": sa["kernel"]["id"]}})
    assert_error(r, 404, "Kernel does not exist")
    assert ids(alice) == {sa["kernel"]["id"]}  # alice's kernel untouched
    assert bob.delete(f"/api/sessions/{sb['id']}").status_code == 204
    assert ids(bob) == set()


async def test_kernel_username_is_the_authenticated_user(
    server: ServerProcess, admin: Gateway
) -> None:
    alice = as_user(server, "alice")
    kernel = alice.start_kernel(env={"KERNEL_USERNAME": "bob"})
    assert kernel["username"] == "alice"
    code = "import os; print(os.environ['KERNEL_USERNAME'])"
    assert (await alice.run(kernel["id"], code)).stdout == "alice\n"
    assert ids(as_user(server, "bob")) == set()
    # with the static token the request's KERNEL_USERNAME names the user, as before; a
    # proxy header is not trusted unless --user-header names it
    headers = {"X-Forwarded-User": "alice"}
    r = admin.post(
        "/api/kernels", json={"name": "python3", "env": {"KERNEL_USERNAME": "zed"}}, headers=headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["username"] == "zed"
    assert (await admin.run(r.json()["id"], code)).stdout == "zed\n"
    assert ids(admin, "/api/kernels") == {kernel["id"], r.json()["id"]}
    assert admin.get("/api/kernels", headers=headers).status_code == 200
    assert len(admin.get("/api/kernels", headers=headers).json()) == 2


def test_allow_and_deny(server: ServerProcess, admin: Gateway) -> None:
    mallory, bob, alice = (as_user(server, n) for n in ("mallory", "bob", "alice"))
    r = mallory.post("/api/kernels", json={"name": "python3"})
    assert_error(r, 403, "'mallory'", "'python3'", "deny list")
    r = bob.post("/api/kernels", json={"name": "alice-only"})
    assert_error(r, 403, "'bob'", "'alice-only'", "allow list")
    r = bob.post("/api/kernels", json={"name": "no-bob"})
    assert_error(r, 403, "'bob'", "'no-bob'", "deny list")
    # a request with no user is not on an allow list; naming one is, without per-user auth
    r = admin.post("/api/kernels", json={"name": "alice-only"})
    assert_error(r, 403, "no user", "'alice-only'")
    # a denied user cannot slip in by naming someone else
    r = mallory.post("/api/kernels", json={"name": "python3", "env": {"KERNEL_USERNAME": "alice"}})
    assert_error(r, 403, "'mallory'")
    assert admin.get("/api/kernels").json() == []
    assert alice.start_kernel("alice-only")["name"] == "alice-only"
    assert alice.start_kernel("no-bob")["username"] == "alice"


def test_per_user_kernel_limit_under_concurrent_starts(
    server: ServerProcess, admin: Gateway
) -> None:
    carol = as_user(server, "carol")
    # starts that fail give their place back
    for _ in range(PER_USER_KERNELS + 1):
        assert_error(carol.post("/api/kernels", json={"name": "broken"}), 500, "failed to start")

    async def start_many(token: str, env: dict[str, str] | None = None) -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"token {token}"}, timeout=120
        ) as client:
            body = {"name": "python3", "env": env or {}}
            return await asyncio.gather(
                *(client.post("/api/kernels", json=body) for _ in range(10))
            )

    responses = asyncio.run(start_many("carol-token"))
    codes = [r.status_code for r in responses]
    assert sorted(codes) == [201] * PER_USER_KERNELS + [403] * (10 - PER_USER_KERNELS), codes
    for r in responses:
        if r.status_code == 403:
            assert_error(
                r, 403, "Per-user kernel limit", "'carol'", f"holds {PER_USER_KERNELS} kernels"
            )
            assert f"at most {PER_USER_KERNELS} per user" in r.json()["message"]
    assert len(ids(carol)) == PER_USER_KERNELS
    # the limit is per user: someone else still starts one
    assert as_user(server, "bob").start_kernel()["username"] == "bob"
    # GPUs: the sum over the user's kernels, starts in flight included (the local launcher
    # places none, but the cap is decided before launching)
    responses = asyncio.run(start_many("erin-token", {"KERNEL_GPUS": "1"}))
    codes = [r.status_code for r in responses]
    assert sorted(codes) == [201] * 2 + [403] * 8, codes
    for r in responses:
        if r.status_code == 403:
            assert_error(r, 403, "Per-user GPU limit", "'erin'", "at most 2 GPUs per user")
    assert len(ids(as_user(server, "erin"))) == 2


def test_per_user_gpu_and_memory_caps(server: ServerProcess, admin: Gateway) -> None:
    dave = as_user(server, "dave")
    r = dave.post("/api/kernels", json={"name": "python3", "env": {"KERNEL_GPUS": "3"}})
    assert_error(r, 403, "Per-user GPU limit", "'dave'", "holds 0 GPUs", "asks for 3 more")
    kernel = dave.start_kernel(env={"KERNEL_MEMORY": "700Mi"})
    r = dave.post("/api/kernels", json={"name": "python3", "env": {"KERNEL_MEMORY": "700Mi"}})
    message = assert_error(r, 403, "Per-user memory limit", "'dave'", "holds 700.0 MiB")
    assert "asks for 700.0 MiB more, at most 1.0 GiB per user" in message
    # room again once the kernel is gone
    dave.shutdown_kernel(kernel["id"])
    assert dave.start_kernel(env={"KERNEL_MEMORY": "700Mi"})["username"] == "dave"


def test_trusted_user_header(start_server) -> None:
    server = start_server(
        "--default-launcher", "local",
        "--user-header", "X-Forwarded-User",
        "--allow-users", "alice,bob",
    )  # fmt: skip
    gw = server.client

    def as_header(user: str) -> dict[str, str]:
        return {"X-Forwarded-User": user}

    body = {"name": "python3", "env": {"KERNEL_USERNAME": "bob"}}
    r = gw.post("/api/kernels", json=body, headers=as_header("alice"))
    assert r.status_code == 201, r.text
    kernel = r.json()
    assert kernel["username"] == "alice"
    assert gw.get("/api/kernels", headers=as_header("bob")).json() == []
    assert_error(gw.get(f"/api/kernels/{kernel['id']}", headers=as_header("bob")), 404)
    assert [k["id"] for k in gw.get("/api/kernels", headers=as_header("alice")).json()] == [
        kernel["id"]
    ]
    assert [k["id"] for k in gw.get("/api/kernels").json()] == [kernel["id"]]  # no header
    r = gw.post("/api/kernels", json={"name": "python3"}, headers=as_header("eve"))
    assert_error(r, 403, "'eve'", "'python3'", "allow list")
    assert_error(gw.post("/api/kernels", json={"name": "python3"}), 403, "no user")
    # the header does not stand in for the token
    r = httpx.get(server.url + "/api/kernels", headers=as_header("alice"))
    assert_error(r, 401, "token")
    assert gw.delete(f"/api/kernels/{kernel['id']}", headers=as_header("alice")).status_code == 204


def test_users_file_is_reread(start_server, tmp_path) -> None:
    users_file = str(tmp_path / "users.json")
    with open(users_file, "w") as f:
        json.dump({"first-token": "alice"}, f)
    server = start_server(
        "--default-launcher", "local", "--users-file", users_file, token=""
    )  # with per-user tokens a token is required, though there is no static one
    assert_error(httpx.get(server.url + "/api/kernels"), 401, "token")
    assert Gateway(server.url, "first-token").get("/api/kernels").status_code == 200

    def status(token: str) -> int:
        return Gateway(server.url, token).get("/api/kernels").status_code

    def wait_for(token: str, code: int) -> None:
        deadline = time.monotonic() + 20
        while status(token) != code and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status(token) == code

    # a change on disk is noticed
    with open(users_file, "w") as f:
        json.dump({"other-token": "alice"}, f)
    wait_for("other-token", 200)
    assert status("first-token") == 401
    # a broken file keeps the tokens read before
    with open(users_file, "w") as f:
        f.write("{not json")
    time.sleep(1.5)  # past the gateway's look at the file's time
    assert status("other-token") == 200
    with open(users_file, "w") as f:
        json.dump({"next-token": "bob"}, f)
    wait_for("next-token", 200)
    # SIGHUP rereads it, even when its time and size look unchanged
    stamp = os.stat(users_file)
    with open(users_file, "w") as f:
        json.dump({"last-token": "bob"}, f)
    os.utime(users_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    time.sleep(1.5)
    assert status("last-token") == 401
    server.proc.send_signal(signal.SIGHUP)
    wait_for("last-token", 200)
    assert server.proc.poll() is None


def test_bad_users_file_stops_serve(tmp_path, refused_serve) -> None:
    users_file = tmp_path / "users.toml"
    users_file.write_text('"a-token" = 3\n')
    result = refused_serve("--users-file", str(users_file))
    assert result.exit_code == 2, result.output
    assert "users file" in result.stderr and "username" in result.stderr


def test_static_token_alone_is_single_user(start_server) -> None:
    """Without per-user identity everything is as before: all kernels visible to the token."""
    server = start_server("--default-launcher", "local", "--max-kernels-per-user", "1")
    gw = server.client
    a = gw.start_kernel(env={"KERNEL_USERNAME": "alice"})
    assert a["username"] == "alice"
    r = gw.post("/api/kernels", json={"name": "python3", "env": {"KERNEL_USERNAME": "alice"}})
    assert_error(r, 403, "Per-user kernel limit", "'alice'", "holds 1 kernel ")
    b = gw.start_kernel()
    assert b["username"] is None
    assert ids(gw) == {a["id"], b["id"]}
