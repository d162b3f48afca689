"""Kernels' memory and CPU limits are enforced, not only recorded (issue 18, item 7).

Pure parts first (choosing the limits, finding the cgroup hierarchies, the values written),
then the kernel supervisor with real processes (a cgroup per kernel where this host lets
root make one; the watchdog where it is forced), then real ipykernels through a gateway
(local kernels with a cgroup and with the watchdog, a Ray kernel in its actor, an SSH kernel
under its bootstrap): a kernel that allocates past its limit is stopped with a message that
names the limit under the cell that ran, is restarted under the same limits, a kernel
beside it keeps its state, and its cgroup goes when the kernel does.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ServerProcess
from kgclient import KernelWS
from raygate.launchers.kernelside import cgroups
from raygate.launchers.kernelside.cgroups import (
    Hierarchy,
    KernelCgroup,
    cpu_files,
    find_hierarchy,
    memory_files,
    parse_mountinfo,
    parse_proc_cgroup,
)
from raygate.launchers.kernelside.limits import (
    Enforcer,
    KernelLimits,
    descendants,
    mechanism,
    tree_memory,
)
from raygate.launchers.kernelside.supervisor import KernelCommand, KernelSupervisor
from raygate.resources import ResourceRequest, resource_request, with_default_limits

MiB = 2**20

# -- choosing the limits -------------------------------------------------------------------


def test_the_request_beats_the_kernelspec_and_the_default_fills_only_what_is_unset() -> None:
    spec = {"resources": {"memory_limit": "1Gi", "cpus_limit": 2}}
    request = resource_request(spec, {"KERNEL_MEMORY_LIMIT": "200M"})
    assert (request.memory_limit, request.cpus_limit) == (200_000_000, 2.0)
    filled = with_default_limits(request, memory_limit=4 * 2**30, cpus_limit=1.0)
    assert (filled.memory_limit, filled.cpus_limit) == (200_000_000, 2.0)
    bare = with_default_limits(ResourceRequest(), memory_limit=512 * MiB, cpus_limit=0.5)
    assert (bare.memory_limit, bare.cpus_limit) == (512 * MiB, 0.5)
    # A default is never below what the kernel reserves.
    big = with_default_limits(ResourceRequest(memory=2 * 2**30, cpus=4), 512 * MiB, 0.5)
    assert (big.memory_limit, big.cpus_limit) == (2 * 2**30, 4.0)
    assert with_default_limits(ResourceRequest()) == ResourceRequest()


def test_limits_travel_from_the_request_to_the_supervisor() -> None:
    request = ResourceRequest(memory=MiB, memory_limit=200 * MiB, cpus_limit=0.5)
    limits = KernelLimits.from_resources(request)
    assert limits == KernelLimits(200 * MiB, 0.5)
    assert KernelLimits.from_resources(request.to_dict()) == limits  # the Ray actor's meta
    assert KernelLimits.from_dict(limits.to_dict()) == limits  # the bootstrap's settings
    assert not KernelLimits.from_resources(ResourceRequest())
    assert limits.describe() == "memory 200.0 MiB, 0.5 CPUs"


def test_the_mechanism_is_the_hosts_choice() -> None:
    assert mechanism({}) == "auto"
    assert mechanism({"RAYGATE_KERNEL_LIMITS": "Watchdog"}) == "watchdog"
    with pytest.raises(ValueError, match="RAYGATE_KERNEL_LIMITS must be one of"):
        mechanism({"RAYGATE_KERNEL_LIMITS": "ulimit"})


# -- finding the hierarchies --------------------------------------------------------------

HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = "4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n"


def test_a_hybrid_host_has_memory_and_cpu_on_v1_even_with_a_v2_mount() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTS)
    v1, v2 = parse_proc_cgroup(HYBRID_CGROUP)
    assert v2 == "/" and v1["memory"] == "/process_api/abc"
    hugetlb_only = frozenset({"hugetlb"})
    assert find_hierarchy("memory", mounts, v1, v2, hugetlb_only) == Hierarchy(
        1, "/sys/fs/cgroup/memory/process_api/abc"
    )
    assert find_hierarchy("cpu", mounts, v1, v2, hugetlb_only) == Hierarchy(1, "/sys/fs/cgroup/cpu")


def test_a_v2_host_uses_the_unified_hierarchy_below_a_namespaced_mount_root() -> None:
    mounts = parse_mountinfo(
        "29 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    v1, v2 = parse_proc_cgroup("0::/kubepods/pod1/ctr\n")
    both = frozenset({"memory", "cpu", "pids"})
    assert find_hierarchy("memory", mounts, v1, v2, both) == Hierarchy(2, "/sys/fs/cgroup/ctr")
    assert find_hierarchy("cpu", mounts, v1, v2, frozenset({"memory"})) is None
    # A cgroup outside what the mount shows cannot be used.
    _, elsewhere = parse_proc_cgroup("0::/system.slice/x\n")
    assert find_hierarchy("memory", mounts, v1, elsewhere, both) is None


def test_the_values_written_for_each_version() -> None:
    assert memory_files(2, 200 * MiB) == [
        ("memory.max", str(200 * MiB), True),
        ("memory.swap.max", "0", False),
        ("memory.oom.group", "1", False),
    ]
    assert memory_files(1, 200 * MiB) == [
        ("memory.limit_in_bytes", str(200 * MiB), True),
        ("memory.memsw.limit_in_bytes", str(200 * MiB), False),
    ]
    assert cpu_files(2, 0.5) == [("cpu.max", "50000 100000", True)]
    assert cpu_files(1, 1.5) == [
        ("cpu.cfs_period_us", "100000", True),
        ("cpu.cfs_quota_us", "150000", True),
    ]
    assert cpu_files(2, 0.001) == [("cpu.max", "1000 100000", True)]  # the kernel's minimum
    assert cgroups.oom_kills("oom 2\noom_kill 1\noom_group_kill 0\n") == 1
    assert cgroups.oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3


def fake_tree(root: Path, version: int) -> Hierarchy:
    """A directory standing in for our cgroup (files the kernel would show, as plain files)."""
    root.mkdir(parents=True)
    if version == 2:
        (root / "cgroup.subtree_control").write_text("")
    return Hierarchy(version, str(root))


def test_a_v2_cgroup_enables_its_controllers_writes_its_limits_and_is_removed(
    tmp_path: Path,
) -> None:
    parent = fake_tree(tmp_path / "ours", 2)
    limits = KernelLimits(200 * MiB, 0.5)
    made = KernelCgroup.create_in("k1", limits, {"memory": parent, "cpu": parent})
    kernel = tmp_path / "ours" / "raygate-kernel-k1"
    assert made.directories == {"memory": str(kernel), "cpu": str(kernel)}
    assert (tmp_path / "ours" / "cgroup.subtree_control").read_text() == "+cpu"  # last write
    assert (kernel / "memory.max").read_text() == str(200 * MiB)
    assert (kernel / "cpu.max").read_text() == "50000 100000"
    assert not (kernel / "memory.swap.max").exists()  # optional files only where they are
    assert made.procs_files() == [str(kernel / "cgroup.procs")]
    for name in os.listdir(kernel):  # a real cgroupfs removes its files with the directory
        os.unlink(kernel / name)
    made.remove()
    assert not kernel.exists()


def test_the_watchdog_counts_the_whole_process_tree() -> None:
    parents = {10: 1, 11: 10, 12: 11, 13: 1, 14: 10}
    assert sorted(descendants(10, parents)) == [10, 11, 12, 14]
    used, pids = tree_memory(os.getpid())
    assert os.getpid() in pids and used > 10 * MiB


# -- the supervisor with real processes ----------------------------------------------------

HOG = (
    "import sys, time\n"
    "chunks = []\n"
    "print('allocating', flush=True)\n"
    "for i in range(12):\n"
    "    chunks.append(bytearray(100 * 2**20))\n"
    "    time.sleep(0.1)\n"
    "print('survived', flush=True)\n"
    "time.sleep(600)\n"
)
SLEEPER = "import time; print('up', flush=True); time.sleep(600)\n"


def can_make_cgroups() -> bool:
    try:
        KernelCgroup.create(f"probe-{uuid.uuid4()}", KernelLimits(256 * MiB, 1)).remove()
    except cgroups.CgroupError:
        return False
    return True


CGROUPS = os.geteuid() == 0 and can_make_cgroups()
needs_cgroups = pytest.mark.skipif(
    not CGROUPS, reason="this host lets no cgroup be made here (not root, or no controllers)"
)


def supervised(tmp_path: Path, code: str, limits: KernelLimits) -> KernelSupervisor:
    cmd = KernelCommand(kernel_id=str(uuid.uuid4()), argv=[sys.executable, "-c", code])
    supervisor = KernelSupervisor(cmd, ip="127.0.0.1", runtime_root=str(tmp_path), limits=limits)
    supervisor.start()
    return supervisor


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def cgroup_of(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path
    return ""


def test_a_v2_cgroup_that_holds_processes_puts_kernels_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "service.slice"
    ours = fake_tree(parent / "ray.service", 2)
    (parent / "cgroup.subtree_control").write_text("cpu memory pids")
    (parent / "ray.service" / "cgroup.controllers").write_text("cpu memory pids")
    real_write = cgroups._write

    def busy(path: str, value: str) -> None:
        if path.endswith("ray.service/cgroup.subtree_control"):
            raise OSError(16, "Device or resource busy")  # what the kernel says
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", busy)
    made = KernelCgroup.create_in("k6", KernelLimits(memory=MiB), {"memory": ours})
    assert made.directories["memory"] == str(parent / "raygate-kernel-k6")
    (parent / "cgroup.subtree_control").write_text("pids")  # the parent offers no memory
    with pytest.raises(cgroups.CgroupError, match="cannot enable memory below"):
        KernelCgroup.create_in("k7", KernelLimits(memory=MiB), {"memory": ours})


@needs_cgroups
def test_a_cgroup_that_cannot_be_made_leaves_nothing(tmp_path: Path) -> None:
    memory = cgroups.host_hierarchies(["memory"])["memory"]
    cpu = Hierarchy(1, str(tmp_path / "no-such-cpu-hierarchy"))
    kernel_id = str(uuid.uuid4())
    with pytest.raises(cgroups.CgroupError, match="cannot make the kernel's cgroup"):
        KernelCgroup.create_in(
            kernel_id, KernelLimits(100 * MiB, 1), {"memory": memory, "cpu": cpu}
        )
    assert not os.path.exists(os.path.join(memory.directory, f"raygate-kernel-{kernel_id}"))


@needs_cgroups
def test_a_kernel_runs_in_its_cgroup_from_its_first_line_and_leaves_none_behind(
    tmp_path: Path,
) -> None:
    supervisor = supervised(tmp_path, SLEEPER, KernelLimits(300 * MiB, 0.5))
    try:
        cgroup = supervisor.enforcer.cgroup
        assert cgroup is not None
        memory, cpu = cgroup.directories["memory"], cgroup.directories["cpu"]
        pid = supervisor.pid
        assert pid is not None and pid in cgroup.pids()
        name = f"raygate-kernel-{supervisor.kernel_id}"
        assert cgroup_of(pid, "memory").endswith(name) and cgroup_of(pid, "cpu").endswith(name)
        if cgroup.versions["memory"] == 1:
            assert Path(memory, "memory.limit_in_bytes").read_text().strip() == str(300 * MiB)
            assert Path(cpu, "cpu.cfs_quota_us").read_text().strip() == "50000"
        else:
            assert Path(memory, "memory.max").read_text().strip() == str(300 * MiB)
            assert Path(cpu, "cpu.max").read_text().strip() == "50000 100000"
        asyncio.run(supervisor.restart())  # the same cgroup, the same limits
        assert supervisor.enforcer.cgroup is cgroup and supervisor.pid in cgroup.pids()
    finally:
        asyncio.run(supervisor.shutdown())
    assert not os.path.exists(memory) and not os.path.exists(cpu)


@needs_cgroups
def test_a_kernel_over_its_memory_limit_is_stopped_by_its_cgroup_and_says_so(
    tmp_path: Path,
) -> None:
    supervisor = supervised(tmp_path, HOG, KernelLimits(memory=200 * MiB))
    neighbour = supervised(tmp_path, SLEEPER, KernelLimits(memory=200 * MiB))
    try:
        assert supervisor.enforcer.kind.startswith("cgroup")
        wait_until(lambda: not supervisor.alive())
        reason = supervisor.exit_reason()
        assert "memory limit of 200.0 MiB" in reason and "survived" not in reason, reason
        assert neighbour.alive()
        asyncio.run(supervisor.restart())  # a fresh process, limits kept, stopped again
        wait_until(lambda: not supervisor.alive())
        assert "memory limit of 200.0 MiB" in supervisor.exit_reason()
    finally:
        asyncio.run(supervisor.shutdown())
        asyncio.run(neighbour.shutdown())


@needs_cgroups
def test_a_cpu_limit_throttles_a_busy_kernel(tmp_path: Path) -> None:
    busy = "import time\nend = time.time() + 600\nwhile time.time() < end: pass\n"
    supervisor = supervised(tmp_path, busy, KernelLimits(cpus=0.2))
    try:
        import psutil

        proc = psutil.Process(supervisor.pid)
        time.sleep(0.5)
        before, started = sum(proc.cpu_times()[:2]), time.monotonic()
        time.sleep(2.0)
        share = (sum(proc.cpu_times()[:2]) - before) / (time.monotonic() - started)
        assert share < 0.45, f"a kernel limited to 0.2 CPUs used {share:.2f}"
        cgroup = supervisor.enforcer.cgroup
        assert cgroup is not None
        stat = Path(cgroup.directories["cpu"], "cpu.stat").read_text()
        throttled = dict(line.split() for line in stat.splitlines())["nr_throttled"]
        assert int(throttled) > 0
    finally:
        asyncio.run(supervisor.shutdown())


def test_the_watchdog_stops_a_kernel_over_its_limit_where_no_cgroup_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYGATE_KERNEL_LIMITS", "watchdog")
    monkeypatch.setenv("RAYGATE_KERNEL_WATCHDOG_INTERVAL", "0.1")
    supervisor = supervised(tmp_path, HOG, KernelLimits(memory=200 * MiB, cpus=1))
    try:
        assert supervisor.enforcer.kind == "watchdog" and supervisor.enforcer.cgroup is None
        wait_until(lambda: not supervisor.alive())
        reason = supervisor.exit_reason()
        assert "memory limit of 200.0 MiB" in reason and "survived" not in reason, reason
    finally:
        asyncio.run(supervisor.shutdown())


def test_auto_falls_back_to_the_watchdog_when_no_cgroup_can_be_made(tmp_path: Path) -> None:
    def refuse(kernel_id: str, limits: KernelLimits) -> KernelCgroup:
        raise cgroups.CgroupError("read-only cgroupfs")

    enforcer = Enforcer("k3", KernelLimits(memory=100 * MiB), {}, cgroup_factory=refuse)
    assert enforcer.prepare() == [] and enforcer.kind == "watchdog"
    off = Enforcer("k4", KernelLimits(memory=100 * MiB), {"RAYGATE_KERNEL_LIMITS": "off"})
    assert off.prepare() == [] and off.kind == "off"
    assert Enforcer("k5", KernelLimits(), {}).prepare() == []  # no limits: nothing made


# -- through a gateway, with real ipykernels ------------------------------------------------

HOG_CELL = (
    "import time\n"
    "chunks = []\n"
    "for i in range(12):\n"
    "    chunks.append(bytearray(100 * 2**20))\n"
    "    time.sleep(0.1)\n"
    "print('survived')\n"
)


async def run_until_stopped(ws: KernelWS, timeout: float = 60) -> tuple[str, list[str]]:
    """Run the hog and collect raygate's stderr notice (answering the cell) and the
    reasons of its status notices, until the kernel is back (idle after restarting)."""
    msg = {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "username": "test",
            "session": ws.session,
            "date": "",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": HOG_CELL, "silent": False, "store_history": True},
        "channel": "shell",
        "buffers": [],
    }
    await ws.send(msg)
    notice, reasons, restarted = "", [], False
    deadline = time.monotonic() + timeout
    while not (notice and restarted):
        m = await ws.recv(max(0.1, deadline - time.monotonic()))
        kind = m["header"]["msg_type"]
        if kind == "stream" and m["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert "survived" not in m["content"]["text"]
            if m["content"]["name"] == "stderr" and "raygate" in m["content"]["text"]:
                notice = m["content"]["text"]
        if kind == "status":
            state = m["content"]["execution_state"]
            if m["content"].get("reason"):
                reasons.append(m["content"]["reason"])
            restarted = restarted or state in ("restarting", "dead")
    return notice, reasons


def cgroup_limit_cell() -> str:
    """Code that prints the kernel's own memory and CPU limits as its cgroup says."""
    return (
        "import os\n"
        "def mine(controller):\n"
        "    for line in open('/proc/self/cgroup'):\n"
        "        _, names, path = line.strip().split(':', 2)\n"
        "        if controller in names.split(','):\n"
        "            return '/sys/fs/cgroup/' + controller + path\n"
        "print(open(mine('memory') + '/memory.limit_in_bytes').read().strip(),"
        " open(mine('cpu') + '/cpu.cfs_quota_us').read().strip())\n"
    )


def gateway_with_limits(start_server: Callable[..., ServerProcess], *args: str, **kw):
    return start_server("--default-launcher", "local", *args, **kw)


async def check_stop_and_neighbour(server: ServerProcess, name: str = "python3") -> str:
    client = server.client
    hog = client.start_kernel(name, env={"KERNEL_MEMORY_LIMIT": "200M"})["id"]
    other = client.start_kernel(name)["id"]
    assert (await client.run(other, "kept = 42")).status == "ok"
    ws = await client.connect(hog)
    try:
        notice, reasons = await run_until_stopped(ws)
    finally:
        await ws.close()
    assert "memory limit of 190.7 MiB" in notice, notice  # 200M = 200,000,000 bytes
    assert any("memory limit of 190.7 MiB" in r for r in reasons), reasons
    # Restarted as any kernel that died, and answers again; the other kernel kept its state.
    deadline = time.monotonic() + 60
    while True:
        try:
            result = await client.run(hog, "print('back')", timeout=20)
            if result.stdout == "back\n":
                break
        except (TimeoutError, OSError):
            pass
        assert time.monotonic() < deadline, "the stopped kernel did not come back"
        await asyncio.sleep(0.5)
    assert (await client.run(other, "print(kept)")).stdout == "42\n"
    return hog


def cgroup_dirs(kernel_id: str) -> list[str]:
    name = f"raygate-kernel-{kernel_id}"
    found = []
    for top in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"):
        for dirpath, dirnames, _ in os.walk(top):
            if name in dirnames:
                found.append(os.path.join(dirpath, name))
    return found


@needs_cgroups
def test_a_local_kernel_over_its_limit_is_stopped_by_its_cgroup_and_the_user_is_told(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = gateway_with_limits(start_server)
    hog = asyncio.run(check_stop_and_neighbour(server))
    assert cgroup_dirs(hog), "the kernel ran without a cgroup"
    server.client.shutdown_kernel(hog)
    wait_until(lambda: not cgroup_dirs(hog))  # none left behind


def test_a_local_kernel_over_its_limit_is_stopped_by_the_watchdog_and_the_user_is_told(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = gateway_with_limits(
        start_server,
        env={"RAYGATE_KERNEL_LIMITS": "watchdog", "RAYGATE_KERNEL_WATCHDOG_INTERVAL": "0.1"},
    )
    hog = asyncio.run(check_stop_and_neighbour(server))
    assert not cgroup_dirs(hog)


@needs_cgroups
def test_the_operators_defaults_and_a_requests_cpu_limit_are_what_the_kernel_gets(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = gateway_with_limits(
        start_server,
        "--kernel-memory-limit-default",
        "300Mi",
        "--kernel-cpus-limit-default",
        "1.5",
    )
    client = server.client

    async def limits_of(env: dict[str, str]) -> str:
        kernel = client.start_kernel(env=env)["id"]
        try:
            return (await client.run(kernel, cgroup_limit_cell())).stdout.strip()
        finally:
            client.shutdown_kernel(kernel)

    assert asyncio.run(limits_of({})) == f"{300 * MiB} 150000"
    assert asyncio.run(limits_of({"KERNEL_CPUS_LIMIT": "0.5"})) == f"{300 * MiB} 50000"


@needs_cgroups
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs a system Python")
def test_a_kernel_run_as_another_account_joins_its_cgroup_before_it_drops_root(
    tmp_path: Path,
) -> None:
    from raygate.launchers.kernelside.account import Account

    nobody = Account.lookup("nobody")
    os.chmod(tmp_path, 0o755)
    code = "import os, time; print(os.getuid(), flush=True); time.sleep(600)\n"
    cmd = KernelCommand(kernel_id=str(uuid.uuid4()), argv=["/usr/bin/python3", "-c", code])
    supervisor = KernelSupervisor(
        cmd,
        ip="127.0.0.1",
        runtime_root=str(tmp_path),
        account=nobody,
        limits=KernelLimits(memory=300 * MiB),
    )
    supervisor.start()
    try:
        wait_until(lambda: Path(supervisor.log_path).read_text().endswith("\n"))
        assert Path(supervisor.log_path).read_text().strip() == str(nobody.uid)
        cgroup = supervisor.enforcer.cgroup
        assert cgroup is not None and supervisor.pid in cgroup.pids()
    finally:
        asyncio.run(supervisor.shutdown())
    assert not any(os.path.exists(d) for d in cgroup.directories.values())


@needs_cgroups
def test_a_ray_kernel_over_its_limit_is_stopped_on_its_node_and_the_user_is_told(
    ray_cluster, tmp_path: Path
) -> None:
    from kernelspecs import make_test_kernelspecs

    specs = make_test_kernelspecs(str(tmp_path / "specs"))
    namespace = f"rg-limits-{uuid.uuid4().hex[:8]}"
    server = ServerProcess(
        ["--ray-address", ray_cluster.address, "--ray-namespace", namespace]
        + ["--kernelspec-dirs", specs],
        env=ray_cluster.env(),
    )
    try:
        server.wait_ready(120)
        hog = asyncio.run(check_stop_and_neighbour(server))
        assert cgroup_dirs(hog), "the Ray kernel ran without a cgroup"
        server.client.shutdown_kernel(hog)
        wait_until(lambda: not cgroup_dirs(hog))
    finally:
        for kernel in server.client.get("/api/kernels").json():
            server.client.shutdown_kernel(kernel["id"])
        server.stop()


@needs_cgroups
def test_a_kernel_on_an_ssh_host_gets_its_limit_through_the_bootstrap(sshd, tmp_path: Path) -> None:
    from test_ssh import gateway_args

    from kernelspecs import ipykernel_argv, write_kernelspec

    specs = str(tmp_path / "specs")
    # Pinned to the live hosts (the gateway's list starts with one nothing listens on).
    ssh = {"launcher": "ssh", "ssh": {"hosts": sshd.hosts()}}
    write_kernelspec(specs, "ssh-python", ipykernel_argv(), metadata={"raygate": ssh})
    server = ServerProcess(gateway_args(sshd, specs, str(tmp_path / "state")))
    try:
        server.wait_ready()
        hog = asyncio.run(check_stop_and_neighbour(server, "ssh-python"))
        assert cgroup_dirs(hog), "the SSH kernel ran without a cgroup"
        server.client.shutdown_kernel(hog)
        wait_until(lambda: not cgroup_dirs(hog))
    finally:
        for kernel in server.client.get("/api/kernels").json():
            server.client.shutdown_kernel(kernel["id"])
        server.stop()
