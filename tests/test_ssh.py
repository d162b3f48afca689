"""The ssh launcher against a real OpenSSH server on loopback (see tests/sshd.py).

Each loopback address the server listens on plays one host; kernels are really started
over SSH by the bootstrap, on this machine, so their processes can be checked here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from conftest import ServerProcess, assert_interrupts, wait_gone
from kernelspecs import ipykernel_argv, write_kernelspec
from kgclient import Gateway, message
from sshd import SSHServer

DEAD = "127.0.0.9"  # nothing listens there


def gateway_args(sshd: SSHServer, specs: str, state_dir: str, *extra: str) -> list[str]:
    hosts = ",".join([f"{DEAD}:{sshd.port}", *sshd.hosts()])
    return [
        "--kernelspec-dirs",
        specs,
        "--ssh-hosts",
        hosts,
        "--ssh-key-file",
        sshd.client_key,
        "--ssh-known-hosts",
        sshd.known_hosts,
        "--state-dir",
        state_dir,
        "--report-ip",
        "127.0.0.1",
        "--max-kernels",
        "8",
        "--default-launcher",
        "local",
        *extra,
    ]


@pytest.fixture(scope="module")
def ssh_specs(tmp_path_factory: pytest.TempPathFactory, sshd: SSHServer) -> str:
    root = str(tmp_path_factory.mktemp("ssh-kernelspecs"))
    write_kernelspec(
        root, "ssh-python", ipykernel_argv(), metadata={"raygate": {"launcher": "ssh"}}
    )
    dead = [f"127.0.0.9:{sshd.port}", f"127.0.0.10:{sshd.port}"]
    write_kernelspec(
        root,
        "ssh-dead",
        ipykernel_argv(),
        metadata={"raygate": {"launcher": "ssh", "ssh": {"hosts": dead}}},
    )
    write_kernelspec(
        root,
        "ssh-unknown-key",
        ipykernel_argv(),
        metadata={"raygate": {"launcher": "ssh", "ssh": {"hosts": [f"127.0.0.5:{sshd.port}"]}}},
    )
    return root


@pytest.fixture(scope="module")
def ssh_server(
    sshd: SSHServer, ssh_specs: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    state = str(tmp_path_factory.mktemp("ssh-state"))
    server = ServerProcess(gateway_args(sshd, ssh_specs, state))
    server.wait_ready()
    yield server
    server.stop()


def pair_specs(root: str, sshd: SSHServer) -> str:
    """A kernelspec whose kernels go to the two live hosts only."""
    write_kernelspec(
        root,
        "ssh-pair",
        ipykernel_argv(),
        metadata={"raygate": {"launcher": "ssh", "ssh": {"hosts": sshd.hosts()}}},
    )
    return root


@pytest.fixture
def ssh_gateway(ssh_server: ServerProcess) -> Iterator[Gateway]:
    client = ssh_server.client
    yield client
    for k in client.get("/api/kernels").json():
        client.shutdown_kernel(k["id"])


def remote_pids(model: dict) -> list[int]:
    placement = model["placement"]
    return [placement["pid"], placement["bootstrap_pid"]]


def assert_running(pids: list[int]) -> None:
    for pid in pids:
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


async def test_kernels_spread_over_hosts_and_a_dead_host_is_skipped(
    ssh_gateway: Gateway, ssh_server: ServerProcess, sshd: SSHServer
) -> None:
    models = [ssh_gateway.start_kernel("ssh-python") for _ in range(2)]
    hosts = [m["placement"]["host"] for m in models]
    assert sorted(hosts) == ["127.0.0.2", "127.0.0.3"], hosts
    assert all(m["launcher"] == "ssh" for m in models)
    assert f"skipping SSH host {DEAD}:{sshd.port}" in ssh_server.output()
    # the kernel really came through sshd: it sees the SSH connection it was started over
    out = await ssh_gateway.run(models[0]["id"], "import os; print(os.environ['SSH_CONNECTION'])")
    assert out.status == "ok"
    assert out.stdout.split()[2:] == [hosts[0], str(sshd.port)]
    pids = [pid for m in models for pid in remote_pids(m)]
    assert_running(pids)
    for m in models:
        ssh_gateway.shutdown_kernel(m["id"])
    assert wait_gone(pids) == []


async def test_interrupt_restart_shutdown(ssh_gateway: Gateway) -> None:
    model = ssh_gateway.start_kernel("ssh-python", env={"KERNEL_REMOTE_HOST": "127.0.0.3"})
    kernel_id = model["id"]
    assert model["placement"]["host"] == "127.0.0.3"
    assert (await ssh_gateway.run(kernel_id, "x = 1")).status == "ok"
    await assert_interrupts(ssh_gateway, kernel_id)

    old_pid = model["placement"]["pid"]
    r = ssh_gateway.post(f"/api/kernels/{kernel_id}/restart")
    assert r.status_code == 200, r.text
    assert wait_gone([old_pid]) == []
    out = await ssh_gateway.run(kernel_id, "x")
    assert out.error and out.error["ename"] == "NameError"  # a fresh kernel

    model = ssh_gateway.get(f"/api/kernels/{kernel_id}").json()
    assert model["placement"]["pid"] != old_pid
    pids = remote_pids(model)
    assert_running(pids)
    assert ssh_gateway.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert wait_gone(pids) == []


async def test_kernel_that_dies_is_restarted_through_its_bootstrap(ssh_gateway: Gateway) -> None:
    model = ssh_gateway.start_kernel("ssh-python")
    kernel_id, old_pid = model["id"], model["placement"]["pid"]
    ws = await ssh_gateway.connect(kernel_id)
    await ws.send(message("execute_request", {"code": "import os; os._exit(1)", "silent": False}))
    await ws.close()
    assert wait_gone([old_pid]) == []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        model = ssh_gateway.get(f"/api/kernels/{kernel_id}").json()
        # restarted, and ready: the gateway has heard the new kernel on iopub
        if model["placement"]["pid"] != old_pid and model["execution_state"] == "idle":
            break
        await asyncio.sleep(0.2)
    assert model["placement"]["pid"] != old_pid
    out = await ssh_gateway.run(kernel_id, "1 + 1")
    assert out.result == "2"
    ssh_gateway.shutdown_kernel(kernel_id)
    assert wait_gone(remote_pids(model)) == []


def test_pinned_host_must_be_in_the_pool(ssh_gateway: Gateway) -> None:
    r = ssh_gateway.post(
        "/api/kernels", json={"name": "ssh-python", "env": {"KERNEL_REMOTE_HOST": "10.1.2.3"}}
    )
    assert r.status_code == 400
    assert "KERNEL_REMOTE_HOST=10.1.2.3" in r.json()["message"]


def test_no_host_reachable_names_hosts_and_errors(ssh_gateway: Gateway, sshd: SSHServer) -> None:
    r = ssh_gateway.post("/api/kernels", json={"name": "ssh-dead"})
    assert r.status_code == 503, r.text
    text = r.json()["message"]
    assert f"127.0.0.9:{sshd.port}" in text and f"127.0.0.10:{sshd.port}" in text
    assert "refused" in text.lower()


def test_unknown_host_key_is_refused(ssh_gateway: Gateway, sshd: SSHServer) -> None:
    r = ssh_gateway.post("/api/kernels", json={"name": "ssh-unknown-key"})
    assert r.status_code == 503, r.text
    text = r.json()["message"]
    assert f"127.0.0.5:{sshd.port}" in text and "not trusted" in text


async def test_kernel_survives_gateway_sigkill_and_new_gateway_stops_it(
    start_server: Callable[..., ServerProcess],
    sshd: SSHServer,
    ssh_specs: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    state = str(tmp_path_factory.mktemp("ssh-reattach"))
    args = gateway_args(sshd, ssh_specs, state)
    first = start_server(*args)
    model = first.client.start_kernel("ssh-python")
    kernel_id = model["id"]
    assert (await first.client.run(kernel_id, "x = 41")).status == "ok"

    # the reattach record: private, and its secret never shows in a log or a command line
    [record_path] = [os.path.join(state, "kernels", n) for n in os.listdir(f"{state}/kernels")]
    assert stat.S_IMODE(os.stat(record_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(record_path)).st_mode) == 0o700
    with open(record_path) as f:
        secret = json.load(f)["secret"]
    assert secret not in first.output() and secret not in sshd.output()
    for proc in psutil.process_iter(["cmdline"]):
        assert secret not in " ".join(proc.info["cmdline"] or [])

    pids = remote_pids(model)
    first.stop(signal.SIGKILL)
    await asyncio.sleep(0.5)
    assert_running(pids)

    second = start_server(*args)
    assert [k["id"] for k in second.client.get("/api/kernels").json()] == [kernel_id]
    out = await second.client.run(kernel_id, "x + 1")
    assert out.status == "ok" and out.result == "42"  # the same kernel, its state intact
    assert second.client.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert wait_gone(pids) == []
    assert os.listdir(f"{state}/kernels") == []


if sys.platform != "linux":  # loopback aliases beyond 127.0.0.1 are a Linux thing
    pytestmark = pytest.mark.skip("needs Linux loopback addresses")


async def test_host_keys_new_accepted_only_when_allowed_and_changed_always_refused(
    sshd: SSHServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from raygate.launchers.ssh import SSHHost, SSHLauncher

    root = tmp_path_factory.mktemp("known-hosts")
    known = str(root / "known_hosts")
    shutil.copy(sshd.known_hosts, known)
    new_host = SSHHost("127.0.0.5", sshd.port)
    strict = SSHLauncher(key_file=sshd.client_key, known_hosts=known)
    with pytest.raises(Exception, match="not trusted"):
        await strict._connect(new_host, "root")

    trusting = SSHLauncher(key_file=sshd.client_key, known_hosts=known, accept_new_host_keys=True)
    conn = await trusting._connect(new_host, "root")
    conn.close()
    with open(known) as f:
        assert f"[127.0.0.5]:{sshd.port} ssh-ed25519 " in f.read()
    conn = await strict._connect(new_host, "root")  # now known
    conn.close()

    # a host whose recorded key differs is refused even when new keys are accepted
    other = str(root / "other_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    with open(other + ".pub") as f:
        algorithm, key = f.read().split()[:2]
    with open(known, "w") as f:
        f.write(f"[127.0.0.2]:{sshd.port} {algorithm} {key}\n")
    with pytest.raises(Exception, match="not trusted"):
        await trusting._connect(SSHHost("127.0.0.2", sshd.port), "root")


def test_hosts_pinning_and_users() -> None:
    from raygate.launchers.base import KernelSpecInfo, KernelStartError, LaunchRequest
    from raygate.launchers.ssh import SSHHost, SSHLauncher

    def request(**env: str) -> LaunchRequest:
        spec = KernelSpecInfo("k", ipykernel_argv())
        return LaunchRequest("id", spec, env, 10.0, username=env.get("KERNEL_USERNAME"))

    launcher = SSHLauncher(hosts="a,b:2222,c", user="svc")
    hosts = launcher.hosts
    assert [str(h) for h in hosts] == ["a", "b:2222", "c"]
    assert [str(h) for h in launcher._order(hosts, request(KERNEL_REMOTE_HOST="b"))] == ["b:2222"]

    assert launcher._user(hosts[0], request(KERNEL_USERNAME="bob")) == "svc"
    launcher.user_from_request = True
    assert launcher._user(hosts[0], request(KERNEL_USERNAME="bob")) == "bob"
    with pytest.raises(KernelStartError) as err:
        launcher._user(hosts[0], request(KERNEL_USERNAME="bob; rm -rf /"))
    assert err.value.status == 400
    assert SSHHost.parse("alice@[::1]:2200") == SSHHost("::1", 2200, "alice")


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        # each start takes the next host, whatever ran before
        ("round-robin", ["127.0.0.2", "127.0.0.3", "127.0.0.2"]),
        # each start takes the host with the fewest kernels (ties: the first listed)
        ("least-kernels", ["127.0.0.2", "127.0.0.3", "127.0.0.3"]),
    ],
)
def test_host_selection(
    start_server, sshd: SSHServer, tmp_path, selection: str, expected: list[str]
) -> None:
    specs = pair_specs(str(tmp_path / "specs"), sshd)
    args = gateway_args(sshd, specs, str(tmp_path / "state"), "--ssh-host-selection", selection)
    gw = start_server(*args).client
    # two kernels, the second shut down, then a third: round robin goes on to the first
    # host again, least-kernels fills the host the shut-down kernel left
    first, second = (gw.start_kernel("ssh-pair") for _ in range(2))
    gw.shutdown_kernel(second["id"])
    third = gw.start_kernel("ssh-pair")
    assert [k["placement"]["host"] for k in (first, second, third)] == expected
    for kernel in (first, third):
        gw.shutdown_kernel(kernel["id"])
