"""Tenants: from inside a real kernel of one user, attack another user's kernel.

A gateway with ``--kernel-isolation users`` and a users file (``"tok1" = "user1"``,
``"tok2" = "user2"``, each mapped to an OS test account of tests/accounts.py) runs a kernel
for each user. Code executed in user1's kernel, as user1 would write it, tries to take over,
read, signal or overhear user2's kernel. It is told everything about the target a
determined attacker could find out (pid, ports, file paths, the Ray address): the
protection must not depend on secrecy of where things are. Every attack must fail, user2's
kernel must still work afterwards, and each kernel must run as its user's account.

Local launcher, Ray (the session's token-auth cluster) and SSH (the session's sshd, logging
in as each account). Run as root (CI does): the accounts are made for the session and
removed after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from accounts import TestAccounts, can_make_accounts
from test_dask import dask_cluster  # noqa: F401 - the fixture, used by name

from conftest import ServerProcess, missing
from kernelspecs import ipykernel_argv, write_kernelspec
from kgclient import Gateway

# One pair of accounts per test process: pytest-xdist's workers make and remove their own.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
ACCOUNTS = {"user1": f"rgtest1{_WORKER}", "user2": f"rgtest2{_WORKER}"}
TOKENS = {"tok1": "user1", "tok2": "user2", "tok3": "user3", "tok4": "user4"}
MISSING_ACCOUNT = "rgtest-nosuch"
"""user4's users-file entry names this account, which no host has."""
STATIC_TOKEN = "static-gateway-secret"
"""The gateway's static token, given in its environment: no user, and a secret of the
gateway's that no kernel may see."""
ISOLATION = ("--kernel-isolation", "users")

pytestmark = [
    pytest.mark.skipif(not zmq.has("curve"), reason="pyzmq without CurveZMQ"),
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="session")
def accounts() -> Iterator[dict[str, Any]]:
    cannot = can_make_accounts()
    if cannot:
        missing(cannot, "run the tests as root, as CI does")
    made = TestAccounts()
    try:
        made.reach(sys.executable)
        yield {user: made.ensure(name) for user, name in ACCOUNTS.items()}
    finally:
        made.remove()


def write_users_file(path: str) -> str:
    """Plain ``"token" = "user"`` entries, and the per-user table mapping users to accounts."""
    lines = [f'"{token}" = "{user}"' for token, user in TOKENS.items()]
    for user, account in {**ACCOUNTS, "user4": MISSING_ACCOUNT}.items():
        lines += [f"[users.{user}]", f'account = "{account}"']
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def specs_dir(root: str) -> str:
    write_kernelspec(root, "python3", ipykernel_argv())
    write_kernelspec(root, "py-ray", ipykernel_argv(), metadata={"raygate": {"launcher": "ray"}})
    write_kernelspec(root, "py-ssh", ipykernel_argv(), metadata={"raygate": {"launcher": "ssh"}})
    return root


def user_client(server: ServerProcess, token: str) -> Gateway:
    return Gateway(server.url, token)


# -- what runs inside the kernels ------------------------------------------------------

PROBE = """
import json, os, pwd
from ipykernel.connect import get_connection_file
_cf = get_connection_file()
_dir = os.path.dirname(_cf)
_names = sorted(os.listdir(_dir))
_mine = [n for n in _names if KERNEL_ID in n] or _names  # a shared dir, or one of its own
_info = json.load(open(_cf))
SECRET = "secret-of-" + pwd.getpwuid(os.geteuid()).pw_name + "-" + KERNEL_ID
print(json.dumps({
    "pid": os.getpid(),
    "user": pwd.getpwuid(os.geteuid()).pw_name,
    "connection_file": _cf,
    "files": [os.path.join(_dir, n) for n in _mine],
    "ip": _info["ip"],
    "iopub_port": _info["iopub_port"],
    "shell_port": _info["shell_port"],
    "secret": SECRET,
}))
"""

ATTACKS = r'''
import json, os, subprocess, sys, threading, time
import zmq

T = json.loads(TARGET)
RESULTS = {}


def attempt(name, fn):
    print("attempting:", name, flush=True)  # a hang shows where (kgclient's TimeoutError)
    try:
        RESULTS[name] = {"succeeded": True, "detail": str(fn())[:400]}
    except Exception as exc:
        RESULTS[name] = {"succeeded": False, "detail": f"{type(exc).__name__}: {exc}"[:400]}


def take_over(info):
    """Execute code in the target kernel with this connection info; its secret, or raise."""
    from jupyter_client.blocking.client import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_info(info)
    kc.start_channels(hb=False)
    # A Curve kernel drops a client without its keys; once ZMQ has dropped it, a send
    # blocks for good (no peer left). Bounded, the attempt fails instead of hanging (CI
    # runs 14 and 18: "shell without key" hung the attack's cell for 300 s).
    kc.shell_channel.socket.setsockopt(zmq.SNDTIMEO, 2000)
    kc.shell_channel.socket.setsockopt(zmq.LINGER, 0)
    try:
        msg_id = kc.execute("print(SECRET)")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # never below 0: zmq takes a negative poll timeout as "wait forever" (a CI run
            # hung here once, the deadline passing between the check and the call)
            msg = kc.get_iopub_msg(timeout=max(0.05, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                return "took over, read " + msg["content"]["text"].strip()
        raise TimeoutError("no answer")
    finally:
        kc.stop_channels()


def connection_file():
    with open(T["connection_file"]) as f:
        info = json.load(f)
    return take_over(info)


def runtime_files():
    readable = []
    for path in T["files"]:
        try:
            with open(path, "rb") as f:
                f.read(1)
            readable.append(path)
        except OSError:
            pass
    if not readable:
        raise PermissionError(f"none of {T['files']} readable")
    return readable


def environ():
    with open(f"/proc/{T['pid']}/environ", "rb") as f:
        return f.read()[:200]


def signal_kernel():
    os.kill(T["pid"], 0)  # the permission check of a real signal, without its effect
    return "may signal"


def gateway_secrets():
    found = [s for s in T["secrets"] if any(s in v for v in os.environ.values())]
    try:
        with open(f"/proc/{T['gateway_pid']}/environ", "rb") as f:
            text = f.read().decode(errors="replace")
        found += [f"gateway environ: {s}" for s in T["secrets"] if s in text]
    except OSError:
        pass
    if not found:
        raise LookupError("no gateway secret in reach")
    return found


def shell_without_key():
    return take_over({"ip": T["ip"], "shell_port": T["shell_port"], "iopub_port": T["iopub_port"],
                      "transport": "tcp", "key": ""})


RAY_ATTACK = """
import json, sys, ray
target = json.loads(sys.argv[1])
ray.init(address=target["ray_address"], namespace="attacker", log_to_driver=False)
names = ray.util.list_named_actors(all_namespaces=True)
actor = ray.get_actor(target["kernel_id"], namespace=target["ray_namespace"])
out = {"named_actors": len(names)}
for method, args in (("describe", ()), ("kept_output", ([],)), ("signal", (0,))):
    try:
        out[method] = repr(ray.get(getattr(actor, method).remote(*args), timeout=30))[:300]
    except Exception as exc:
        out[method + "_refused"] = type(exc).__name__
print(json.dumps(out))
"""


def ray_api():
    if not T.get("ray_address"):
        raise LookupError("not a Ray kernel")
    proc = subprocess.run([sys.executable, "-c", RAY_ATTACK, json.dumps(T)], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise PermissionError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    info = out.get("describe", "")
    if "'key'" not in info and "kept_output" not in out and "signal" not in out:
        raise PermissionError(f"the actor answered nothing: {out}")
    return out


OVERHEARD = []


def overhear():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://{T['ip']}:{T['iopub_port']}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sock.poll(200):
            OVERHEARD.append(b"".join(sock.recv_multipart()))
    sock.close(0)


threading.Thread(target=overhear, daemon=True).start()
for name, fn in (("connection file", connection_file), ("runtime files", runtime_files),
                 ("environ", environ), ("signal", signal_kernel),
                 ("gateway secrets", gateway_secrets), ("shell without key", shell_without_key),
                 ("ray api", ray_api)):
    attempt(name, fn)
print("attacks done")
'''

OVERHEARD_RESULT = """
import json
_heard = b"".join(OVERHEARD)
RESULTS["iopub without key"] = {
    "succeeded": bool(OVERHEARD),
    "detail": f"{len(OVERHEARD)} message(s), marker seen: {MARKER.encode() in _heard}",
}
print(json.dumps(RESULTS))
"""

WHOAMI = "import os, pwd; print(pwd.getpwuid(os.geteuid()).pw_name)"


async def run_ok(client: Gateway, kernel_id: str, code: str, timeout: float = 120) -> str:
    out = await client.run(kernel_id, code, timeout=timeout)
    assert out.status == "ok", (out.error, out.stderr)
    return out.stdout


async def attack(
    server: ServerProcess, spec: str, secrets: list[str], ray: dict[str, str] | None = None
) -> None:
    """user1's kernel attacks user2's; every attack fails and user2's kernel still works."""
    c1, c2 = user_client(server, "tok1"), user_client(server, "tok2")
    # KERNEL_USERNAME is what a client says: it names nobody in this mode.
    k2 = c2.start_kernel(spec)["id"]
    k1 = c1.start_kernel(spec, env={"KERNEL_USERNAME": "user2"})["id"]
    try:
        assert (await run_ok(c1, k1, WHOAMI)).strip() == ACCOUNTS["user1"]
        assert (await run_ok(c2, k2, WHOAMI)).strip() == ACCOUNTS["user2"]
        target = json.loads(await run_ok(c2, k2, f"KERNEL_ID = {k2!r}\n" + PROBE))
        assert target["user"] == ACCOUNTS["user2"]
        target.update(kernel_id=k2, gateway_pid=server.proc.pid, secrets=secrets, **(ray or {}))
        marker = uuid.uuid4().hex
        setup = f"TARGET = {json.dumps(target)!r}\nMARKER = {marker!r}\n"
        assert "attacks done" in await run_ok(c1, k1, setup + ATTACKS, timeout=300)
        for _ in range(10):  # user2 works meanwhile; an eavesdropper would hear it
            assert marker in await run_ok(c2, k2, f"print({marker!r})")
            await asyncio.sleep(0.3)
        results = json.loads(await run_ok(c1, k1, OVERHEARD_RESULT))
        succeeded = {name: r["detail"] for name, r in results.items() if r["succeeded"]}
        assert not succeeded, f"attacks that succeeded: {json.dumps(succeeded, indent=1)}"
        # user2's kernel is unharmed: same process, same state
        assert (await run_ok(c2, k2, "print(SECRET)")).strip() == target["secret"]
        assert (await run_ok(c2, k2, "import os; print(os.getpid())")).strip() == str(target["pid"])
    finally:
        c1.shutdown_kernel(k1)
        c2.shutdown_kernel(k2)


# -- the gateways ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenant_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tenants")
    return {
        "users": write_users_file(str(root / "users.toml")),
        "specs": specs_dir(str(root / "specs")),
        "state": str(root / "state"),
    }


def gateway_args(files: dict[str, str], *extra: str) -> list[str]:
    return [
        *ISOLATION,
        "--users-file", files["users"],
        "--kernelspec-dirs", files["specs"],
        "--state-dir", files["state"],
        *extra,
    ]  # fmt: skip


@pytest.fixture
def start_tenant_gateway() -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(
            args, env={"RAYGATE_AUTH_TOKEN": STATIC_TOKEN, **(env or {})}, token=""
        )
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


# -- the attacks, per launcher -----------------------------------------------------------


async def test_local_kernels_of_two_users_cannot_reach_each_other(
    accounts: dict[str, Any],
    tenant_files: dict[str, str],
    start_tenant_gateway: Callable[..., ServerProcess],
) -> None:
    server = start_tenant_gateway(gateway_args(tenant_files, "--default-launcher", "local"))
    await attack(server, "python3", [STATIC_TOKEN])


@pytest.fixture(scope="module")
def ray_tenant_gateway(
    accounts: dict[str, Any], tenant_files: dict[str, str], ray_cluster: Any
) -> Iterator[tuple[ServerProcess, str]]:
    """One users-mode gateway on the session's Ray cluster and its namespace, for the Ray
    attacks (each test shuts down the kernels it started)."""
    namespace = f"tenants-{uuid.uuid4().hex[:8]}"
    args = gateway_args(
        tenant_files,
        "--default-launcher", "ray",
        "--ray-address", ray_cluster.address,
        "--ray-namespace", namespace,
    )  # fmt: skip
    server = ServerProcess(
        args, env={"RAYGATE_AUTH_TOKEN": STATIC_TOKEN, **ray_cluster.env()}, token=""
    )
    server.wait_ready()
    yield server, namespace
    server.stop()


async def test_ray_kernels_of_two_users_cannot_reach_each_other(
    ray_tenant_gateway: tuple[ServerProcess, str], ray_cluster: Any
) -> None:
    server, namespace = ray_tenant_gateway
    ray = {"ray_address": ray_cluster.address, "ray_namespace": namespace}
    await attack(server, "py-ray", [STATIC_TOKEN, ray_cluster.token], ray)


ANOTHER_DRIVER = """
import json, sys, ray
address, namespace, kernel_id = sys.argv[1:4]
ray.init(address=address, namespace="someone-else", log_to_driver=False)
actor = ray.get_actor(kernel_id, namespace=namespace)
calls = {
    "describe": (), "kept_output": ([],), "failure_reason": (), "poll": (), "signal": (0,),
    "interrupt": (), "restart": (), "stop": (), "assign": ({"username": "x"},),
    "shutdown": (),
}
out = {}
for method, args in calls.items():
    for attempt in (args, (b"forged-ticket", *args)):
        try:
            out[method] = repr(ray.get(getattr(actor, method).remote(*attempt), timeout=30))
            break
        except Exception as exc:
            out[method] = "refused: " + type(exc).__name__
print(json.dumps(out))
"""


async def test_ray_kernel_actor_answers_only_its_gateway(
    ray_tenant_gateway: tuple[ServerProcess, str], ray_cluster: Any
) -> None:
    """Another Ray driver, with the cluster's token, calls each of a kernel actor's methods
    (with no ticket and with a forged one): every call is refused, and the kernel runs on."""
    server, namespace = ray_tenant_gateway
    c2 = user_client(server, "tok2")
    k2 = c2.start_kernel("py-ray")["id"]
    try:
        before = await run_ok(c2, k2, "import os; print(os.getpid())")
        env = {**os.environ, **ray_cluster.env(), "RAY_AUTH_MODE": "token"}
        proc = subprocess.run(
            [sys.executable, "-c", ANOTHER_DRIVER, ray_cluster.address, namespace, k2],
            capture_output=True, text=True, timeout=180, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        answers = json.loads(proc.stdout.strip().splitlines()[-1])
        answered = {m: a for m, a in answers.items() if not a.startswith("refused")}
        assert not answered, answered
        assert await run_ok(c2, k2, "import os; print(os.getpid())") == before
    finally:
        c2.shutdown_kernel(k2)


@pytest.fixture(scope="module")
def sshd_for_accounts() -> Iterator[Any]:
    """A private sshd whose authorized_keys the test accounts can read (sshd reads it as
    the user logging in): under /tmp, not under pytest's root-only temporary directory."""
    from sshd import SSHD, SSHServer

    if not os.path.exists(SSHD):
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    root = tempfile.mkdtemp(prefix="raygate-tenants-sshd-")
    server = SSHServer(root, ["127.0.0.2"])
    server.start()
    os.chmod(root, 0o711)
    os.chmod(os.path.join(root, "authorized_keys"), 0o644)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


async def test_ssh_kernels_of_two_users_cannot_reach_each_other(
    accounts: dict[str, Any],
    tenant_files: dict[str, str],
    start_tenant_gateway: Callable[..., ServerProcess],
    sshd_for_accounts: Any,
) -> None:
    sshd = sshd_for_accounts
    server = start_tenant_gateway(
        gateway_args(
            tenant_files,
            "--default-launcher", "local",
            "--ssh-hosts", sshd.hosts()[0],
            "--ssh-key-file", sshd.client_key,
            "--ssh-known-hosts", sshd.known_hosts,
            "--report-ip", "127.0.0.1",
        )
    )  # fmt: skip
    await attack(server, "py-ssh", [STATIC_TOKEN])


DASK_JOINS = """
import os
from distributed import Client
with Client(timeout=30) as client:  # no arguments: DASK_SCHEDULER_ADDRESS
    print(len(client.scheduler_info()["workers"]), os.environ["DASK_SCHEDULER_ADDRESS"])
"""


async def test_dask_kernels_get_their_cluster_only_when_granted(
    accounts: dict[str, Any],
    tenant_files: dict[str, str],
    start_tenant_gateway: Callable[..., ServerProcess],
    dask_cluster: str,  # noqa: F811 - the fixture imported above
) -> None:
    """On a Dask worker (run as root), kernels run as their users; a kernelspec that
    grants cluster access gets the scheduler's address (``Client()`` joins with no
    arguments), one that does not gets nothing of the cluster's."""
    write_kernelspec(
        tenant_files["specs"],
        "dask-granted",
        ipykernel_argv(),
        metadata={"raygate": {"launcher": "dask", "cluster_access": True}},
    )
    write_kernelspec(
        tenant_files["specs"], "dask-plain", ipykernel_argv(),
        metadata={"raygate": {"launcher": "dask"}},
    )  # fmt: skip
    server = start_tenant_gateway(
        gateway_args(
            tenant_files,
            "--default-launcher", "local",
            "--dask-scheduler", dask_cluster,
            "--report-ip", "127.0.0.1",
        )
    )  # fmt: skip
    c1 = user_client(server, "tok1")
    granted, plain = c1.start_kernel("dask-granted")["id"], c1.start_kernel("dask-plain")["id"]
    try:
        for kernel_id in (granted, plain):
            assert (await run_ok(c1, kernel_id, WHOAMI)).strip() == ACCOUNTS["user1"]
        workers, address = (await run_ok(c1, granted, DASK_JOINS)).split()
        assert int(workers) >= 1 and address == dask_cluster
        out = await c1.run(plain, DASK_JOINS)
        assert out.status == "error", out.stdout
        leaked = "import os; print(sorted(k for k in os.environ if k.startswith('DASK_')))"
        assert (await run_ok(c1, plain, leaked)).strip() == "[]"
    finally:
        c1.shutdown_kernel(granted)
        c1.shutdown_kernel(plain)


# -- bad input: clear errors, nothing started ---------------------------------------------


def assert_refused(r: Any, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"reason", "message"}, body
    for word in words:
        assert word in body["message"], body


async def test_starts_that_name_no_account_are_refused_and_start_nothing(
    accounts: dict[str, Any],
    tenant_files: dict[str, str],
    start_tenant_gateway: Callable[..., ServerProcess],
) -> None:
    server = start_tenant_gateway(gateway_args(tenant_files, "--default-launcher", "local"))
    # user3 has a token but no account of that name on this host
    r = user_client(server, "tok3").post("/api/kernels", json={"name": "python3"})
    assert_refused(r, 403, "user3", "no OS account")
    # user4's users-file entry names an account that does not exist
    r = user_client(server, "tok4").post("/api/kernels", json={"name": "python3"})
    assert_refused(r, 403, "user4", MISSING_ACCOUNT)
    # the static token authenticates no user: nobody's account to run as
    r = user_client(server, STATIC_TOKEN).post(
        "/api/kernels", json={"name": "python3", "env": {"KERNEL_USERNAME": "user1"}}
    )
    assert_refused(r, 403, "authenticated user")
    assert user_client(server, STATIC_TOKEN).get("/api/kernels").json() == []
    assert server.kernel_pids() == []


def test_isolation_without_a_way_to_know_users_does_not_start(tmp_path: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "raygate", "serve", *ISOLATION, "--default-launcher", "local",
         "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--users-file" in proc.stderr and "--user-header" in proc.stderr, proc.stderr


def test_isolation_implies_curve_unless_set(tmp_path: Any) -> None:
    from raygate.config import GatewayConfig

    assert GatewayConfig(kernel_isolation="users").kernel_encryption == "curve"
    assert GatewayConfig().kernel_encryption == "none"
    explicit = GatewayConfig(kernel_isolation="users", kernel_encryption="none")
    assert explicit.kernel_encryption == "none"
