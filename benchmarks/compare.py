#!/usr/bin/env python
"""raygate beside Jupyter Kernel Gateway, Enterprise Gateway and straight ZMQ: one report.

    python benchmarks/compare.py [--quick]

1. Creates, the first time, a virtualenv with Jupyter Kernel Gateway and one with Jupyter
   Enterprise Gateway under ``.bench-venvs/`` at the repository root (reused afterwards),
   each with ipykernel and a ``python3`` kernelspec of its own (Kernel Gateway's with the
   ipykernel version this environment has; Enterprise Gateway 3.3 needs jupyter_client 6,
   so it gets the newest ipykernel 6).
2. Starts, each on a free loopback port with a random token: raygate with the local
   launcher, raygate with the local launcher and ``--prewarm python3=K``, raygate with the
   Ray launcher (an embedded Ray), Kernel Gateway and Enterprise Gateway.
3. Measures them all in one run with ``raygate.bench`` (the same client for all, taking
   turns), beside a client straight on a local kernel's ZMQ sockets: start to ready, N
   starts at once, execute round trip, output throughput with every byte checked,
   interrupt, restart, and each gateway's CPU and memory.
4. For each number of live kernels (0, 5, 10, 20; ``--quick``: 0, 5) starts that many idle
   kernels on every server and measures start to ready and round trip again.
5. Writes ``docs/comparison.md`` (tables, goals, plots, a reading), ``docs/comparison.json``
   (every figure and sample) and the plots ``docs/img/start-latency.png`` and
   ``docs/img/round-trip.png``.

Everything it starts is stopped at the end, also on Ctrl-C; every process it starts
carries a mark in its environment, and psutil checks that none is left (exit status 2 if
one was). Exits 1 when a goal of issue 7 is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import psutil
from ray_start import free_port

from raygate import __version__
from raygate.bench import BenchError, BenchOptions, Server, run_servers
from raygate.bench.client import GatewayClient
from raygate.bench.command import RichProgress
from raygate.bench.measure import Target, measure_concurrent, ready_kernel, start_to_ready
from raygate.bench.report import METRICS, ZMQ_METRICS, _count_of, _format, ratio

REPO = Path(__file__).resolve().parent.parent
VENVS = Path(os.environ.get("RAYGATE_BENCH_VENVS") or REPO / ".bench-venvs")
"""Where the peers' virtualenvs are made once and reused; CI keeps them outside its fresh
clone (``.ci/run``), so each run does not make Kernel Gateway's again."""
DOCS = REPO / "docs"
MARK = "RAYGATE_COMPARE_RUN"
"""Environment variable every process this script starts carries (children inherit it), so
the leftover check finds kernels and Ray workers however they were started."""
KERNELSPEC = "python3"
POLL = httpx.Client()
"""The client of the servers' readiness polls: one, as each new one reads the CA bundle
(45 ms of CPU on a 2-core machine, which a poll every 0.3 s would spend on the side)."""

RTT_GOAL = 1.1
"""A raygate round trip (p50) within this factor of straight ZMQ's."""
THROUGHPUT_GOAL = 0.7
"""raygate's output throughput at least this fraction of straight ZMQ's, every byte intact."""
WARM_GOAL_S = 0.1
"""p50 start to ready of a warm kernel under this many seconds..."""
WARM_VS_KG_GOAL = 10.0
"""...and at least this many times faster than Kernel Gateway's (cold) start."""
BURSTS = (8, 32)
"""Kernels started at once, on each server in turn (issue 14)."""
POOL_MAX = 32
"""--prewarm-max of the warm Ray server: its pool may grow to a burst of 32."""
BURST_VS_KG_GOAL = 1.5
"""A Ray burst of 8 all ready within this factor of Kernel Gateway's 8 local starts..."""
RAY_COLD_GOAL = 1.2
"""...one cold Ray kernel (p50) within this factor of a local raygate kernel..."""
RAY_WARM_GOAL_S = 0.05
"""...a warm Ray kernel (p50) under this many seconds..."""
FOOTPRINT_GOAL = 1.5
"""...an idle Ray kernel's PSS (kernel + its actor's worker) within this factor of a local
kernel's..."""
FLOOD_GOAL = 0.95
"""...and the small-output flood at least this fraction of straight ZMQ's, every line."""
FOOTPRINT_KERNELS = 4
"""Idle kernels per server whose memory is measured."""
WARM_KINDS = ("raygate-warm", "raygate-ray-warm")


# -- the servers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    """A virtualenv for a gateway that is not raygate."""

    name: str
    package: str
    module: str
    """``python -m MODULE`` runs the server (the process is then the server itself)."""
    app: str
    """Its traitlets app class, for the ``--App.option=value`` flags."""
    same_ipykernel: bool = True
    """Pin ipykernel to this environment's version, so the kernels are alike (Enterprise
    Gateway 3.3 cannot have it: it needs jupyter_client 6)."""
    options: tuple[str, ...] = ()
    """More ``--App.option=value`` flags of this server."""

    @property
    def path(self) -> Path:
        return VENVS / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def requirements(self) -> list[str]:
        pin = f"=={version('ipykernel')}" if self.same_ipykernel else ""
        return [self.package, f"ipykernel{pin}"]


KG = Venv("kg", "jupyter_kernel_gateway==3.0.1", "kernel_gateway", "KernelGatewayApp")
EG = Venv(
    "eg",
    "jupyter_enterprise_gateway==3.3.0",
    "enterprise_gateway",
    "EnterpriseGatewayApp",
    same_ipykernel=False,
    # EG refuses kernels to root by default, and a request without KERNEL_USERNAME runs as
    # the server's user (root on this VM): refuse only "nobody" instead.
    options=("--EnterpriseGatewayApp.unauthorized_users=nobody",),
)


@dataclass(frozen=True)
class Kind:
    """One server of the comparison."""

    key: str
    title: str
    venv: Venv | None = None
    raygate_args: tuple[str, ...] = ()


def kinds(pool: int, ray_cpus: int) -> list[Kind]:
    return [
        Kind("raygate-local", "raygate (local)", raygate_args=("--default-launcher", "local")),
        Kind(
            "raygate-warm",
            "raygate (local, warm)",
            raygate_args=("--default-launcher", "local", "--prewarm", f"{KERNELSPEC}={pool}"),
        ),
        Kind(
            "raygate-ray",
            "raygate (Ray)",
            raygate_args=("--default-launcher", "ray", "--ray-num-cpus", str(ray_cpus)),
        ),
        Kind(
            "raygate-ray-warm",
            "raygate (Ray, warm)",
            raygate_args=(
                *("--default-launcher", "ray", "--ray-num-cpus", str(ray_cpus)),
                *("--prewarm", f"{KERNELSPEC}={pool}", "--prewarm-max", str(POOL_MAX)),
            ),
        ),
        Kind("kg", "Kernel Gateway", venv=KG),
        Kind("eg", "Enterprise Gateway", venv=EG),
    ]


def jupyter_env(venv: Venv, home: Path) -> dict[str, str]:
    """A Jupyter server's environment: its venv first on PATH and none of this user's
    Jupyter directories, so it sees only the kernelspec in its own prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "RAYGATE_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=f"{venv.path / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv.path),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
    )
    return env


def ensure_venv(venv: Venv, logs: Path) -> dict[str, Any]:
    """Create (or reuse) the virtualenv with a python3 kernelspec of its own; returns its
    versions and the kernelspec its server will use."""
    marker = venv.path / "raygate-compare.json"
    wanted = {"python": sys.version, "requirements": venv.requirements()}
    try:
        have = json.loads(marker.read_text())
    except (OSError, ValueError):
        have = None
    if have != wanted:
        print(f"setting up {venv.path}: {' '.join(wanted['requirements'])}")
        print("  (the first time this takes a minute or two)")
        log = logs / f"pip-{venv.name}.log"
        if not venv.python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv.path)], check=True)
        pip = [str(venv.python), "-m", "pip", "install", "--disable-pip-version-check"]
        with open(log, "w") as out:
            if subprocess.run([*pip, *wanted["requirements"]], stdout=out, stderr=out).returncode:
                raise SystemExit(f"pip install into {venv.path} failed; see {log}")
        # The venv's own python by absolute path, in the venv's own prefix.
        install = ["-m", "ipykernel", "install", "--sys-prefix", "--name", KERNELSPEC]
        subprocess.run([str(venv.python), *install], check=True, capture_output=True)
        marker.write_text(json.dumps(wanted))
    return describe_venv(venv)


def describe_venv(venv: Venv) -> dict[str, Any]:
    """Versions in the venv, and the python3 kernelspec as its server will find it."""
    code = (
        "import json, importlib.metadata as m, jupyter_client.kernelspec as k\n"
        f"spec = k.KernelSpecManager().get_kernel_spec({KERNELSPEC!r})\n"
        "names = ['ipykernel', 'jupyter_client', 'jupyter_server', 'tornado', "
        f"{venv.package.split('==')[0]!r}]\n"
        "print(json.dumps({'versions': {n: m.version(n) for n in names}, "
        "'kernelspec': {'resource_dir': spec.resource_dir, 'argv': spec.argv}}))\n"
    )
    with tempfile.TemporaryDirectory(prefix="raygate-compare-") as home:
        env = jupyter_env(venv, Path(home))
        out = subprocess.run(
            [str(venv.python), "-c", code], env=env, check=True, capture_output=True, text=True
        )
    info = json.loads(out.stdout)
    if not info["kernelspec"]["argv"][0].startswith(str(venv.path)):
        raise SystemExit(f"{venv.path}: its python3 kernelspec runs {info['kernelspec']['argv']}")
    return info


class ServerFailed(Exception):
    """A server that exited or did not come up; the message ends with its log."""


@dataclass
class Running:
    """One server process, in a session of its own so that Ctrl-C reaches only this script
    (which then stops the server in order)."""

    kind: Kind
    log: Path
    port: int
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"{self.kind.title} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                r = POLL.get(f"{self.url}/api/kernelspecs", headers=headers(self), timeout=5)
                if r.status_code == 200 and KERNELSPEC in r.json().get("kernelspecs", {}):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        self.stop(10)
        raise ServerFailed(
            f"{self.kind.title} did not come up in {timeout:g} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 60) -> str:
        """SIGTERM (the server shuts its kernels down); SIGKILL to its session if it hangs.
        Its kernels, in sessions of their own, are killed if the server left them."""
        if self.proc is None:
            return "never started"
        kernels = descendants(self.pid)
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
            how = f"exited ({self.proc.returncode})"
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            how = f"killed after {timeout:g} s"
        _, left = psutil.wait_procs(kernels, timeout=5)
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        return how + (f"; {len(left)} of its processes killed" if left else "")


def descendants(pid: int | None) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True) if pid else []
    except psutil.NoSuchProcess:
        return []


def pss_mib(pid: int | None) -> float | None:
    """A process's proportional set size (its share of the pages it shares), in MiB."""
    try:
        return psutil.Process(pid).memory_full_info().pss / 2**20 if pid else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def headers(server: Running) -> dict[str, str]:
    return {"Authorization": f"token {server.token}"}


def make_server(kind: Kind, run_id: str, scratch: Path, attempt: int = 1) -> Running:
    name = kind.key if attempt == 1 else f"{kind.key}-{attempt}"
    home = scratch / name
    home.mkdir(parents=True)
    server = Running(kind, scratch / f"{name}.log", free_port())
    port = str(server.port)
    if kind.venv is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAYGATE_")}
        env.pop("RAY_ADDRESS", None)  # an embedded Ray, not whatever cluster the shell names
        server.argv = [sys.executable, "-m", "raygate", "serve", "--ip", "127.0.0.1"]
        server.argv += ["--port", port, "--auth-token", server.token, "--state-dir", str(home)]
        server.argv += ["--log-level", "warning", *kind.raygate_args]
    else:
        venv = kind.venv
        env = jupyter_env(venv, home)
        server.argv = [str(venv.python), "-m", venv.module, f"--{venv.app}.ip=127.0.0.1"]
        server.argv += [f"--{venv.app}.port={port}", f"--{venv.app}.port_retries=0"]
        server.argv += [f"--{venv.app}.auth_token={server.token}", *venv.options]
    env[MARK] = run_id
    server.env = env
    return server


def shown_command(server: Running) -> str:
    """The server's command line as the report shows it: no token, no port, short paths."""
    words = [a.replace(server.token, "T").replace(f"={server.port}", "=P") for a in server.argv]
    words = ["P" if w == str(server.port) else w for w in words]
    words[0] = (
        "python" if server.kind.venv is None else f".bench-venvs/{server.kind.venv.name}/bin/python"
    )
    return " ".join(
        shlex.quote(w) for w in words if "state-dir" not in w and "/raygate-compare-" not in w
    )


def marked(run_id: str) -> list[psutil.Process]:
    """Processes carrying this run's mark, other than this script itself."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARK) == run_id:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline()[:4])[:120]}")
        except psutil.Error:
            out.append(f"{p.pid} (gone)")
    return out


def stop_everything(servers: list[Running], run_id: str) -> dict[str, Any]:
    """Stop every server, then make sure nothing this run started is left."""
    for server in servers:  # all at once: each shuts its kernels down meanwhile
        if server.proc is not None and server.proc.poll() is None:
            server.proc.terminate()
    stopped = {server.kind.key: server.stop() for server in servers}
    deadline = time.monotonic() + 30  # kernels notice their parent's end within seconds
    left = marked(run_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = marked(run_id)
    stragglers = describe(left)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    return {
        "servers": stopped,
        "killed_after_stop": stragglers,
        "left_over": describe(marked(run_id)),
    }


# -- measuring ---------------------------------------------------------------------------


async def wait_pool_full(server: Running, size: int, timeout: float = 300) -> None:
    """Until the warm pool holds ``size`` ready kernels (a start then gets one)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.url, headers=headers(server)) as http:
        while time.monotonic() < deadline:
            pool = (await http.get("/api/status")).json().get("pool", {}).get(KERNELSPEC, {})
            if pool.get("ready", 0) >= size:
                return
            await asyncio.sleep(0.2)
    raise BenchError(f"{server.kind.title}: the warm pool did not fill in {timeout:g} s")


async def listed_kernels(server: Running) -> int:
    async with httpx.AsyncClient(base_url=server.url, headers=headers(server)) as http:
        return len((await http.get("/api/kernels")).json())


class Fleet:
    """The running servers as measured: bench Servers for the runs, and clients that start
    the extra idle kernels."""

    def __init__(self, servers: list[Running], pool: int, timeout: float) -> None:
        self.servers = servers
        self.pool = pool
        self.clients = [GatewayClient(s.url, s.token, "legacy", timeout) for s in servers]
        self.targets = [Target(s.kind.key, c, KERNELSPEC) for s, c in zip(servers, self.clients)]
        self.extra: list[list[str]] = [[] for _ in servers]

    def bench_servers(self) -> list[Server]:
        return [Server(s.url, s.token, s.pid) for s in self.servers]

    async def settle(self) -> None:
        """The warm pool full again before anything is timed."""
        for server in self.servers:
            if server.kind.key in WARM_KINDS:
                await wait_pool_full(server, self.pool)

    async def warm_up(self) -> None:
        """One untimed start per server: first imports, Ray's first worker, caches."""
        await self.settle()
        for target in self.targets:
            await start_to_ready(target)
        await self.settle()

    async def grow(self, count: int, batch: int = 4) -> None:
        """Until every server has ``count`` extra idle kernels (started, ready, left alone)."""
        for target, extra in zip(self.targets, self.extra):
            while len(extra) < count:
                todo = min(batch, count - len(extra))
                results = await asyncio.gather(
                    *(ready_kernel(target, extra) for _ in range(todo)), return_exceptions=True
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    raise BenchError(f"{target.label}: an extra kernel failed: {failed[0]}")
        await self.settle()

    async def bursts(self, sizes: list[int], progress: Any) -> list[dict[str, Any]]:
        """``size`` kernels asked for at once on each server in turn (its warm pool full
        first), for each size: raygate.bench's concurrent measurement."""
        done = []
        for size in sizes:
            # One server's burst at a time, deleted before the next's.
            if psutil.virtual_memory().available - size * 250e6 < 3e9:
                done.append({"size": size, "skipped_for_memory": True, "results": {}})
                continue
            results: dict[str, Any] = {}
            for server, target in zip(self.servers, self.targets):
                await self.settle()
                (result,) = await measure_concurrent([target], size, progress)
                results[server.kind.key] = result
            done.append({"size": size, "results": results})
        await self.settle()
        return done

    async def footprint(self, count: int) -> dict[str, Any]:
        """PSS of ``count`` idle kernels per server, each kernel's own processes: for
        raygate the kernel process and (Ray) its actor's worker, from the kernel's
        placement; for the others the processes the server started for it."""
        found: dict[str, Any] = {}
        for server, target in zip(self.servers, self.targets):
            before = {p.pid for p in descendants(server.pid)}
            ids: list[str] = []
            try:
                for _ in range(count):
                    await ready_kernel(target, ids)
                await asyncio.sleep(3)  # idle
                kernels, workers = [], []
                async with httpx.AsyncClient(base_url=server.url, headers=headers(server)) as http:
                    models = [(await http.get(f"/api/kernels/{k}")).json() for k in ids]
                placements = [m.get("placement") or {} for m in models]
                if any(p.get("pid") for p in placements):
                    kernels = [pss_mib(p.get("pid")) for p in placements]
                    workers = [pss_mib(p.get("actor_pid")) for p in placements]
                else:  # one process tree per kernel, new since the start
                    new = [p for p in descendants(server.pid) if p.pid not in before]
                    tops = [p for p in new if p.ppid() not in {q.pid for q in new}]
                    kernels = [
                        sum(pss_mib(q.pid) or 0 for q in [t, *t.children(True)]) for t in tops
                    ]
                kernel = [k for k in kernels if k]
                worker = [w for w in workers if w]
                found[server.kind.key] = {
                    "n": len(kernel),
                    "kernel_pss_mib": statistics.median(kernel) if kernel else None,
                    "worker_pss_mib": statistics.median(worker) if worker else None,
                    "pss_mib": (statistics.median(kernel) if kernel else 0)
                    + (statistics.median(worker) if worker else 0)
                    if kernel
                    else None,
                }
            finally:
                for kernel_id in ids:
                    await target.client.delete_kernel(kernel_id)
        await self.settle()
        return found

    def memory_allows(self, count: int, per_kernel: float = 250e6, spare: float = 3e9) -> bool:
        """Whether ``count`` extra kernels per server fit in the memory free now."""
        more = sum(max(0, count - len(extra)) for extra in self.extra)
        return psutil.virtual_memory().available - more * per_kernel > spare

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def named(document: dict[str, Any], servers: list[Running]) -> dict[str, Any]:
    """A run's document with each server's result named after the server it measured."""
    for result, server in zip(document["servers"], servers):
        result["name"] = server.kind.key
        result["title"] = server.kind.title
    return document


async def measure(
    servers: list[Running],
    options: BenchOptions,
    scan_options: BenchOptions,
    live: list[int],
    pool: int,
    burst_sizes: list[int],
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    fleet = Fleet(servers, pool, options.timeout)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    scan: list[dict[str, Any]] = []
    skipped: list[int] = []
    scan_error = ""
    try:
        with Progress(*columns, transient=False) as bar:
            progress = RichProgress(bar)
            progress.phase("warm-up: one untimed start per server", 1)
            await fleet.warm_up()
            progress.advance()
            main = named(await run_servers(fleet.bench_servers(), options, progress), servers)
            bursts = await fleet.bursts(burst_sizes, progress)
            progress.phase(f"memory of {FOOTPRINT_KERNELS} idle kernels per server", 1)
            footprint = await fleet.footprint(FOOTPRINT_KERNELS)
            progress.advance()
            for count in live:
                if not fleet.memory_allows(count):
                    skipped.append(count)
                    continue
                progress.phase(f"{count} extra idle kernels on each server", 1)
                try:  # what was measured so far still makes a report
                    await fleet.grow(count)
                    progress.advance()
                    doc = await run_servers(fleet.bench_servers(), scan_options, progress)
                except BenchError as exc:
                    scan_error = f"at {count} live kernels: {exc}"
                    break
                doc = named(doc, servers)
                doc["live_kernels"] = count
                doc["listed_kernels"] = {s.kind.key: await listed_kernels(s) for s in servers}
                scan.append(doc)
    finally:
        await fleet.close()
    if scan_error:
        print(f"the live-kernel scan stopped {scan_error}")
    return {
        "main": main,
        "bursts": bursts,
        "footprint": footprint,
        "scan": scan,
        "scan_skipped_for_memory": skipped,
        "scan_error": scan_error,
    }


# -- the report --------------------------------------------------------------------------


def machine_now() -> dict[str, Any]:
    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "memory_available_bytes": psutil.virtual_memory().available,
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": sys.version.split()[0],
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return info


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "n/a"


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in document["servers"]}


def value(result: dict[str, Any] | None, key: str) -> float | None:
    metric = next(m for m in METRICS if m.key == key)
    return metric.value(result) if result else None


def check_goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals of issue 7, on the main run: each with its figure and PASS or MISS."""
    main = report["main"]
    results = by_name(main)
    vs_zmq = (main.get("vs_zmq") or {}).get("values") or {}
    goals: list[dict[str, Any]] = []

    def add(what: str, figure: float | None, passed: bool, shown: str) -> None:
        state = "n/a" if figure is None else "PASS" if passed else "MISS"
        goals.append({"goal": what, "figure": figure, "shown": shown, "result": state})

    for name, result in results.items():
        if not name.startswith("raygate"):
            continue
        ratios = vs_zmq.get(result["url"], {})
        rtt = ratios.get("round_trip_p50_ms")
        add(
            f"{result['title']}: execute round trip p50 within {RTT_GOAL}x of ZMQ",
            rtt,
            rtt is not None and rtt <= RTT_GOAL,
            "n/a" if rtt is None else f"{rtt:.2f}x",
        )
        out = ratios.get("output_mb_per_s")
        intact = bool((result.get("output") or {}).get("all_identical"))
        add(
            f"{result['title']}: output throughput at least {THROUGHPUT_GOAL}x of ZMQ, "
            "every byte delivered",
            out,
            out is not None and out >= THROUGHPUT_GOAL and intact,
            "n/a" if out is None else f"{out:.2f}x, {'every' if intact else 'NOT every'} byte",
        )
    warm = value(results.get("raygate-warm"), "start_p50_s")
    kg = value(results.get("kg"), "start_p50_s")
    add(
        f"raygate (local, warm): start to ready p50 under {WARM_GOAL_S * 1000:.0f} ms",
        warm,
        warm is not None and warm < WARM_GOAL_S,
        "n/a" if warm is None else f"{warm * 1000:.0f} ms",
    )
    speedup = None if warm is None or kg is None or warm == 0 else kg / warm
    add(
        f"raygate (local, warm): at least {WARM_VS_KG_GOAL:g}x faster than Kernel Gateway's "
        "start (p50)",
        speedup,
        speedup is not None and speedup >= WARM_VS_KG_GOAL,
        "n/a" if speedup is None else f"{speedup:.1f}x",
    )
    issue14_goals(report, add)
    return goals


def burst_wall(report: dict[str, Any], size: int, name: str) -> float | None:
    for burst in report.get("bursts") or []:
        if burst["size"] == size:
            result = burst["results"].get(name) or {}
            return result.get("wall_s") if not result.get("failures") else None
    return None


def issue14_goals(report: dict[str, Any], add: Any) -> None:
    """Bursts, Ray starts, footprint and the flood (issue 14); ``add`` records each."""
    results = by_name(report["main"])
    vs_zmq = (report["main"].get("vs_zmq") or {}).get("values") or {}
    kg8 = burst_wall(report, 8, "kg")
    for name in ("raygate-ray", "raygate-ray-warm"):
        if name not in results:
            continue
        title = results[name]["title"]
        mine = burst_wall(report, 8, name)
        r = None if mine is None or not kg8 else mine / kg8
        add(
            f"{title}: 8 at once all ready within {BURST_VS_KG_GOAL}x of Kernel Gateway's 8",
            r,
            r is not None and r <= BURST_VS_KG_GOAL,
            "n/a" if r is None else f"{r:.2f}x ({mine:.2f} s against {kg8:.2f} s)",
        )
        for burst in report.get("bursts") or []:
            if burst["size"] != 32 or name not in burst["results"]:
                continue
            res = burst["results"][name]
            add(
                f"{title}: 32 at once, no failures",
                float(res["failures"]),
                res["failures"] == 0,
                f"{res['ready']} of 32 ready in {res['wall_s']:.1f} s",
            )
    cold = value(results.get("raygate-ray"), "start_p50_s")
    local = value(results.get("raygate-local"), "start_p50_s")
    r = None if cold is None or not local else cold / local
    add(
        f"raygate (Ray): one cold start (p50) within {RAY_COLD_GOAL}x of a local one",
        r,
        r is not None and r <= RAY_COLD_GOAL,
        "n/a" if r is None else f"{r:.2f}x",
    )
    warm = value(results.get("raygate-ray-warm"), "start_p50_s")
    add(
        f"raygate (Ray, warm): start to ready p50 under {RAY_WARM_GOAL_S * 1000:.0f} ms",
        warm,
        warm is not None and warm < RAY_WARM_GOAL_S,
        "n/a" if warm is None else f"{warm * 1000:.0f} ms",
    )
    feet = report.get("footprint") or {}
    ray_pss = (feet.get("raygate-ray") or {}).get("pss_mib")
    local_pss = (feet.get("raygate-local") or {}).get("pss_mib")
    r = None if ray_pss is None or not local_pss else ray_pss / local_pss
    add(
        f"raygate (Ray): an idle kernel's PSS within {FOOTPRINT_GOAL}x of a local one's",
        r,
        r is not None and r <= FOOTPRINT_GOAL,
        "n/a" if r is None else f"{r:.2f}x ({ray_pss:.0f} MiB against {local_pss:.0f} MiB)",
    )
    for name, result in results.items():
        if not name.startswith("raygate"):
            continue
        flood = vs_zmq.get(result["url"], {}).get("flood_lines_per_s")
        every = bool((result.get("flood") or {}).get("all_identical"))
        add(
            f"{result['title']}: small-output flood at least {FLOOD_GOAL}x of ZMQ, every line",
            flood,
            flood is not None and flood >= FLOOD_GOAL and every,
            "n/a" if flood is None else f"{flood:.2f}x, {'every' if every else 'NOT every'} line",
        )


def plot_bursts(report: dict[str, Any], img: Path, plt: Any) -> list[str]:
    """Start latency against burst size, and each server's memory per idle kernel."""
    written = []
    names = [(s["name"], s["title"]) for s in report["main"]["servers"]]
    bursts = [b for b in report.get("bursts") or [] if b["results"]]
    if bursts:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for name, title in names:
            xs, ys = [1], [value(by_name(report["main"]).get(name), "start_p50_s")]
            for burst in bursts:
                result = burst["results"].get(name) or {}
                xs.append(burst["size"])
                ys.append(result.get("wall_s") if not result.get("failures") else None)
            ax.plot(xs, ys, marker="o", label=title)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, *[b["size"] for b in bursts]])
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("kernels asked for at once (1: one start, p50)")
        ax.set_ylabel("until all are ready (s, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img / "burst-latency.png")
        plt.close(fig)
        written.append("img/burst-latency.png")
    feet = report.get("footprint") or {}
    if feet:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        titles = [t for n, t in names if n in feet]
        kernel = [(feet[n].get("kernel_pss_mib") or 0) for n, _ in names if n in feet]
        worker = [(feet[n].get("worker_pss_mib") or 0) for n, _ in names if n in feet]
        ax.bar(titles, kernel, label="kernel process")
        ax.bar(titles, worker, bottom=kernel, label="its Ray actor's worker process")
        ax.set_ylabel("PSS per idle kernel (MiB)")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "kernel-memory.png")
        plt.close(fig)
        written.append("img/kernel-memory.png")
    return written


def bursts_table(report: dict[str, Any]) -> list[str]:
    names = [(s["name"], s["title"]) for s in report["main"]["servers"]]
    rows = []
    for burst in report.get("bursts") or []:
        if burst.get("skipped_for_memory"):
            rows.append([str(burst["size"]), *["skipped (memory)" for _ in names]])
            continue
        row = [str(burst["size"])]
        for name, _ in names:
            result = burst["results"].get(name)
            if result is None:
                row.append("")
                continue
            cell = f"{_format(result['wall_s'], 's')}"
            if result["failures"]:
                cell += f", {result['failures']} failed"
            row.append(cell)
        rows.append(row)
    return md_table(["at once", *[t for _, t in names]], rows)


def footprint_table(report: dict[str, Any]) -> list[str]:
    feet = report.get("footprint") or {}
    rows = []
    for server in report["main"]["servers"]:
        f = feet.get(server["name"])
        if not f:
            continue
        rows.append(
            [
                server["title"],
                "n/a" if f["kernel_pss_mib"] is None else f"{f['kernel_pss_mib']:.0f} MiB",
                "" if f["worker_pss_mib"] is None else f"{f['worker_pss_mib']:.0f} MiB",
                "n/a" if f["pss_mib"] is None else f"{f['pss_mib']:.0f} MiB",
            ]
        )
    return md_table(["server", "kernel process", "its actor's worker", "per idle kernel"], rows)


def plot(report: dict[str, Any], img: Path) -> list[str]:
    """The two plots of the live-kernel scan; returns their paths relative to docs/."""
    scan = report["scan"]
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the plots need matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    bursts = plot_bursts(report, img, plt)
    if not scan:
        return bursts
    xs = [doc["live_kernels"] for doc in scan]
    names = [(s["name"], s["title"]) for s in report["main"]["servers"]]
    written = []
    figures = (
        ("start-latency.png", "start_p50_s", 1000.0, "start to ready, p50 (ms, log scale)"),
        ("round-trip.png", "round_trip_p50_ms", 1.0, "execute round trip, p50 (ms)"),
    )
    for filename, key, scale, ylabel in figures:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for name, title in names:
            ys = [value(by_name(doc).get(name), key) for doc in scan]
            ax.plot(xs, [None if y is None else y * scale for y in ys], marker="o", label=title)
        if key == "round_trip_p50_ms":
            zmq = [value(doc.get("zmq_baseline"), key) for doc in scan]
            ax.plot(xs, zmq, marker="s", linestyle="--", color="black", label="straight ZMQ")
            ax.set_ylim(bottom=0)
        else:
            ax.set_yscale("log")
        ax.set_xlabel("idle kernels on each server besides the one measured")
        ax.set_ylabel(ylabel)
        ax.set_xticks(xs)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img / filename)
        plt.close(fig)
        written.append(f"img/{filename}")
    return bursts + written


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(head) - 1)
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def figures_table(main: dict[str, Any]) -> list[str]:
    servers = main["servers"]
    zmq = main.get("zmq_baseline") or {}
    options = main["options"]
    rows = []
    for m in METRICS:
        values = [m.value(s) for s in servers]
        if all(v is None for v in values) and m.unit not in ("bytes", "count"):
            continue
        title = m.title.replace("N at once", f"{options['concurrent']} at once")
        if m.key.startswith("output_"):
            title += f" ({options['output_mb']:g} MB x {options['output_rounds']})"
        if m.key.startswith("flood_"):
            title += (
                f" ({options.get('flood_lines', 0):,} lines x {options.get('flood_rounds', 0)})"
            )
        if m.unit == "count":
            cells = [_count_of(s, m) for s in servers]
        else:
            cells = [_format(v, m.unit) for v in values]
        cells.append(_format(m.value(zmq), m.unit) if zmq and m.key in ZMQ_METRICS else "")
        rows.append([title, *cells])
    return md_table(["measurement", *[s["title"] for s in servers], "straight ZMQ"], rows)


def ratios_table(main: dict[str, Any]) -> list[str]:
    """Each server ÷ ZMQ (round trip, throughput) and ÷ Kernel Gateway (everything)."""
    servers = main["servers"]
    kg = by_name(main).get("kg")
    vs_zmq = (main.get("vs_zmq") or {}).get("values") or {}
    head = ["measurement"]
    if vs_zmq:
        head += [f"{s['title']} ÷ ZMQ" for s in servers]
    if kg is not None:
        head += [f"{s['title']} ÷ KG" for s in servers if s is not kg]
    rows = []
    for m in METRICS:
        if m.unit == "count":
            continue
        cells = []
        if vs_zmq:
            for s in servers:
                r = vs_zmq.get(s["url"], {}).get(m.key) if m.key in ZMQ_METRICS else None
                cells.append("" if r is None else f"{r:.2f}x")
        if kg is not None:
            for s in servers:
                if s is not kg:
                    r = ratio(m.value(kg), m.value(s))
                    cells.append("" if r is None else f"{r:.2f}x")
        if any(cells):
            rows.append([m.title, *cells])
    return md_table(head, rows)


def scan_table(report: dict[str, Any]) -> list[str]:
    names = [(s["name"], s["title"]) for s in report["main"]["servers"]]
    rows = []
    for doc in report["scan"]:
        results = by_name(doc)
        row = [str(doc["live_kernels"])]
        for name, _ in names:
            start = value(results.get(name), "start_p50_s")
            rtt = value(results.get(name), "round_trip_p50_ms")
            row.append(f"{_format(start, 's')} / {_format(rtt, 'ms')}")
        row.append(_format(value(doc.get("zmq_baseline"), "round_trip_p50_ms"), "ms"))
        rows.append(row)
    return md_table(["live kernels", *[t for _, t in names], "straight ZMQ round trip"], rows)


def word_ratio(a: float | None, b: float | None) -> str:
    """Time ``a`` against time ``b`` in words: '2.3x faster', '1.4x slower', 'about the same'."""
    if a is None or b is None or a == 0 or b == 0:
        return "n/a"
    r = b / a
    if 0.95 <= r <= 1.05:
        return "about the same"
    return f"{r:.1f}x faster" if r > 1 else f"{1 / r:.1f}x slower"


def versus_kg(main: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Each raygate figure more than 5% better or worse than Kernel Gateway's."""
    results = by_name(main)
    kg = results.get("kg")
    wins: list[str] = []
    losses: list[str] = []
    if kg is None:
        return wins, losses
    # MB/s of a server that dropped output times a shorter transfer: no comparison.
    kg_dropped = (kg.get("output") or {}).get("delivered_pct") not in (None, 100.0)
    concurrent = main["options"]["concurrent"]
    for name, result in results.items():
        if not name.startswith("raygate"):
            continue
        for m in METRICS:
            if m.unit == "count" or (kg_dropped and m.key == "output_mb_per_s"):
                continue
            r = ratio(m.value(kg), m.value(result))
            if r is None or abs(r - 1) < 0.05:
                continue
            better = r < 1 if m.lower_is_better else r > 1
            title = m.title.replace("N at once", f"{concurrent} at once")
            (wins if better else losses).append(f"{result['title']}: {title} {r:.2f}x")
    return wins, losses


def reading(report: dict[str, Any]) -> list[str]:
    """What the figures say, sentence by sentence from this run's numbers."""
    main = report["main"]
    results = by_name(main)
    zmq = main.get("zmq_baseline") or {}
    kg = results.get("kg")
    lines = []
    rtts = ", ".join(
        f"{r['title']} {_format(value(r, 'round_trip_p50_ms'), 'ms')}" for r in main["servers"]
    )
    lines.append(
        "- **Round trip.** p50 of an execute of `pass`: straight ZMQ "
        f"{_format(value(zmq, 'round_trip_p50_ms'), 'ms')}; {rtts}. Most of it is ipykernel's "
        "own time to answer; what a gateway adds is the difference to ZMQ."
    )
    if kg is not None:
        wins, losses = versus_kg(main)
        lines.append(
            "- **Better than Kernel Gateway** (by more than 5%; raygate ÷ KG): "
            + ("; ".join(wins) if wins else "nothing in this run")
            + "."
        )
        lines.append(
            "- **Worse than Kernel Gateway** (by more than 5%; raygate ÷ KG): "
            + ("; ".join(losses) if losses else "nothing in this run")
            + "."
        )
    for r in main["servers"]:
        out = r.get("output") or {}
        if out.get("delivered_pct") in (None, 100.0):
            continue
        lost = (
            f"- **{r['title']} dropped output**: it delivered {out['delivered_pct']:.1f} % of "
            f"the bytes printed ({out['bytes_delivered']:,} of {out['bytes_expected']:,})."
        )
        if r["name"].startswith("raygate"):
            lines.append(lost + " raygate must never drop output: this is a bug.")
        else:
            lines.append(
                lost + " Out of the box it discards iopub output above a data rate "
                "(jupyter_server's `iopub_data_rate_limit`), so its MB/s times a shorter "
                "transfer and cannot be compared; raygate has no such limit."
            )
    warm = value(results.get("raygate-warm"), "start_p50_s")
    cold = value(results.get("raygate-local"), "start_p50_s")
    ray = value(results.get("raygate-ray"), "start_p50_s")
    kg_start = value(kg, "start_p50_s")
    if warm is not None:
        lines.append(
            f"- **Warm starts.** A warm kernel was ready in {_format(warm, 's')} at p50, against "
            f"{_format(cold, 's')} for a cold local raygate start and {_format(kg_start, 's')} "
            f"for Kernel Gateway ({word_ratio(warm, kg_start)} than KG). A warm start is a "
            "hand-out plus a silent cell that sets the request's env and directory; the pool "
            "then starts a replacement in the background, which costs the CPU of a cold start, "
            "only not while anyone waits (on 2 cores it competes with the other servers' turns)."
        )
    if ray is not None:
        lines.append(
            f"- **Ray launcher.** A Ray kernel was ready in {_format(ray, 's')} at p50 "
            f"({word_ratio(ray, cold)} than a local raygate kernel): an actor is created and "
            "called on top of the kernel's own start. Its gateway CPU and RSS are the raygate "
            "process's only, not those of the Ray processes it started."
        )
    eg = results.get("eg")
    eg_kernel = (report.get("venvs", {}).get("eg") or {}).get("versions", {}).get("ipykernel")
    if eg is not None and eg_kernel and eg_kernel != report["versions"]["ipykernel"]:
        lines.append(
            f"- **Enterprise Gateway's kernel differs.** EG 3.3 needs jupyter_client 6, so its "
            f"venv runs ipykernel {eg_kernel} where every other server runs "
            f"{report['versions']['ipykernel']}; part of any difference in EG's figures is the "
            "kernel's."
        )
    scan = report["scan"]
    if len(scan) >= 2:
        first, last = scan[0], scan[-1]
        moves = []
        for result in main["servers"]:
            a, b = by_name(first).get(result["name"]), by_name(last).get(result["name"])
            moves.append(
                f"{result['title']} round trip {_format(value(a, 'round_trip_p50_ms'), 'ms')} → "
                f"{_format(value(b, 'round_trip_p50_ms'), 'ms')}, start "
                f"{_format(value(a, 'start_p50_s'), 's')} → {_format(value(b, 'start_p50_s'), 's')}"
            )
        lines.append(
            f"- **Live kernels** ({first['live_kernels']} → {last['live_kernels']} idle kernels "
            f"on every server, {last['live_kernels'] * len(main['servers'])} on the machine): "
            + "; ".join(moves)
            + ". Idle kernels cost little CPU, so what changes here is mostly the machine's "
            "noise and memory; a gateway that polled every kernel would show a slope."
        )
    for key, missing in report.get("not_started", {}).items():
        note = (
            " Ray gives its node a fixed 30 s to register when it starts; on this shared "
            "2-core VM under heavy load that is not always enough."
            if key == "raygate-ray"
            else ""
        )
        lines.append(
            f"- **{missing['title']} is missing from this run**: it failed to start twice "
            f"(`{missing['why']}`).{note}"
        )
    if report.get("scan_error"):
        lines.append(f"- The live-kernel scan stopped {report['scan_error']}.")
    if report.get("scan_skipped_for_memory"):
        lines.append(
            f"- Live-kernel counts {report['scan_skipped_for_memory']} were skipped: not "
            "enough free memory for that many kernels on every server."
        )
    cpus = report["machine"]["cpus"]
    lines.append(
        f"- **Noise.** This is a {cpus}-core VM shared with other work (other engineers' test "
        f"suites and Ray clusters): load average {report['machine_at_start']['load_average'][0]} "
        f"at the start and {report['machine_at_end']['load_average'][0]} at the end, on {cpus} "
        "cores. Absolute figures vary by ±20% or more between runs. The ratios are steadier, "
        "because the servers and the ZMQ client take turns (alternating starts, round trips "
        "in blocks, every order), so the machine's noise hits them alike; p99s mostly measure "
        "the scheduler. Rerun on a quiet machine before quoting absolute figures."
    )
    return lines


def markdown(report: dict[str, Any]) -> str:
    main = report["main"]
    m = report["machine"]
    v = report["versions"]
    options = main["options"]
    scan_opts = report["scan_options"]
    start_load = " / ".join(map(str, report["machine_at_start"]["load_average"]))
    end_load = " / ".join(map(str, report["machine_at_end"]["load_average"]))
    out = [
        "# raygate beside Kernel Gateway and Enterprise Gateway",
        "",
        "Generated by `benchmarks/compare.py` (do not edit by hand; rerun it):",
        "",
        "```",
        report["command"],
        "```",
        "",
        "The full run, for figures to quote (on a quiet machine): `python benchmarks/compare.py`.",
        "",
        f"Run at {report['started']}, {report['seconds'] / 60:.0f} minutes. Every figure and "
        "sample: [comparison.json](comparison.json). How each is measured: "
        "[benchmarks.md](benchmarks.md#raygate-bench-any-kernel-gateway-api-server-one-client).",
        "",
        "## Machine and versions",
        "",
        f"- {m['cpus']} cores ({m.get('cpu', 'unknown CPU')}), "
        f"{m['memory_bytes'] / 2**30:.0f} GiB memory, Python {m['python']}",
        f"- load average (1 / 5 / 15 min) at the start: {start_load}; at the end: {end_load}",
        f"- raygate {v['raygate']}, Ray {v['ray']}, ipykernel {v['ipykernel']}, jupyter_client "
        f"{v['jupyter_client']} (raygate's kernels and the ZMQ client)",
    ]
    for key, title in (("kg", "Kernel Gateway"), ("eg", "Enterprise Gateway")):
        info = report.get("venvs", {}).get(key)
        if info:
            vs = info["versions"]
            package = next(n for n in vs if "gateway" in n)
            out.append(
                f"- {title} {vs[package]} in `.bench-venvs/{key}`: jupyter_server "
                f"{vs['jupyter_server']}, jupyter_client {vs['jupyter_client']}, tornado "
                f"{vs['tornado']}, its kernels ipykernel {vs['ipykernel']}"
            )
    out += ["", "## The servers", ""]
    out += md_table(
        ["server", "command (P: a free port, T: a random token)"],
        [[s["title"], f"`{s['command']}`"] for s in report["servers"]],
    )
    out += [
        "",
        "All listen on loopback with a token and run the `python3` kernelspec of their own "
        "environment. Straight ZMQ is jupyter_client's `AsyncKernelClient` on a kernel this "
        "script starts with `AsyncKernelManager`. Every server is measured with "
        "`raygate.bench`'s client and the legacy JSON WebSocket framing (what jupyter_server's "
        "gateway client speaks).",
        "",
        "## Every measurement",
        "",
        f"After one untimed start on each server: {options['starts']} sequential starts, "
        f"{options['concurrent']} at once, {options['rounds']} round trips in blocks of "
        f"{options['block']}, {options['output_mb']:g} MB printed x {options['output_rounds']} "
        f"in {options['chunk_kb']} KiB pieces, {options.get('flood_rounds', 0)} floods of "
        f"{options.get('flood_lines', 0):,} flushed one-line prints "
        "(`for i in range(N): print(i, flush=True)`), "
        f"{options['interrupts']} interrupts and {options['restarts']} restarts per server.",
        "",
        *figures_table(main),
        "",
        "Gateway CPU and RSS are the gateway process's own (psutil), not its kernels'.",
        "",
        "### Ratios",
        "",
        "Below 1 is faster or smaller, except throughput, where above 1 is better.",
        "",
        *ratios_table(main),
        "",
        "## Bursts",
        "",
        "Kernels asked for at once on each server in turn (warm pools full first), from "
        "the first `POST` until every one answers kernel_info on its WebSocket; the Ray "
        "servers run an embedded Ray with "
        f"{report.get('ray_cpus', 64)} logical CPUs on this machine.",
        "",
        *bursts_table(report),
        "",
        "## Memory of an idle kernel",
        "",
        f"PSS (each process's share of the pages it shares) of {FOOTPRINT_KERNELS} idle "
        "kernels per server, median: the kernel process, and for Ray the worker process of "
        "its actor. Idle Ray workers kept ahead of demand (`--ray-warm-workers`) and warm "
        "pool kernels are not counted here.",
        "",
        *footprint_table(report),
        "",
        "## Goals (issues 7 and 14)",
        "",
        *md_table(
            ["goal", "this run", "result"],
            [[g["goal"], g["shown"], g["result"]] for g in report["goals"]],
        ),
        "",
        "## With live kernels",
        "",
        "At each count every server first gets that many extra idle kernels (started, ready, "
        f"left alone); then {scan_opts['starts']} sequential starts and {scan_opts['rounds']} "
        "round trips per server, taking turns, beside straight ZMQ. Each cell: start to ready "
        "p50 / round trip p50.",
        "",
        *scan_table(report),
        "",
    ]
    for path in report["plots"]:
        out += [f"![{Path(path).stem}]({path})", ""]
    out += ["## Reading", "", *reading(report)]
    stop = report["stop"]
    servers = ", ".join(f"{k} {s}" for k, s in stop["servers"].items())
    out += [
        "",
        "## Clean-up",
        "",
        f"Servers stopped with SIGTERM: {servers}. Processes of this run still alive 30 s "
        f"later: {len(stop['killed_after_stop'])} (then killed); left over at the end: "
        f"{len(stop['left_over'])}.",
        "",
    ]
    return "\n".join(out)


# -- the command ----------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="raygate (local, warm pool, Ray) beside Jupyter Kernel Gateway, Enterprise "
        "Gateway and straight ZMQ; writes docs/comparison.md, comparison.json and the plots "
        "in docs/img/. Sets up .bench-venvs/ the first time.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds; live kernels 0, 5")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated servers to measure (default all): "
        "raygate-local,raygate-warm,raygate-ray,raygate-ray-warm,kg,eg",
    )
    parser.add_argument(
        "--bursts",
        default=",".join(map(str, BURSTS)),
        help="kernels started at once, per server in turn (0: none)",
    )
    parser.add_argument("--flood-lines", type=int, help="lines of the small-output flood")
    parser.add_argument("--live", default="", help="live-kernel counts (default 0,5,10,20)")
    parser.add_argument("--pool", type=int, default=2, help="warm kernels (--prewarm python3=N)")
    parser.add_argument("--ray-cpus", type=int, default=64, help="logical CPUs of the Ray")
    parser.add_argument("--starts", type=int, help="sequential starts per server")
    parser.add_argument("--rounds", type=int, help="execute round trips per server")
    parser.add_argument("--output-mb", type=float, help="MB the output cell prints")
    parser.add_argument("--scan-starts", type=int, help="starts per live-kernel count")
    parser.add_argument("--scan-rounds", type=int, help="round trips per live-kernel count")
    parser.add_argument("--out", default=str(DOCS), help="where the report goes (docs/)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite comparison.md and the plots from comparison.json",
    )
    args = parser.parse_args(argv)
    args.live = [int(x) for x in args.live.split(",") if x.strip()] or (
        [0, 5] if args.quick else [0, 5, 10, 20]
    )
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    args.bursts = [int(x) for x in args.bursts.split(",") if x.strip() and int(x) > 0]
    return args


def options_from(args: argparse.Namespace) -> tuple[BenchOptions, BenchOptions]:
    q = args.quick
    main = BenchOptions(
        kernelspec=KERNELSPEC,
        starts=args.starts or (5 if q else 10),
        concurrent=3 if q else 5,
        rounds=args.rounds or (100 if q else 200),
        output_mb=args.output_mb or (10.0 if q else 20.0),
        output_rounds=2 if q else 3,
        flood_lines=args.flood_lines or 20000,
        flood_rounds=2 if q else 3,
        interrupts=2 if q else 3,
        restarts=2 if q else 3,
        zmq_baseline=True,
    )
    scan = BenchOptions(
        kernelspec=KERNELSPEC,
        starts=args.scan_starts or (3 if q else 5),
        concurrent=0,
        rounds=args.scan_rounds or (60 if q else 100),
        output_rounds=0,
        flood_rounds=0,
        interrupts=0,
        restarts=0,
        zmq_baseline=True,
    )
    return main, scan


def start_server(kind: Kind, run_id: str, scratch: Path, servers: list[Running]) -> Running | None:
    """Start one server and wait until it serves; a second try if it fails, then None (the
    report says which server is missing and why)."""
    for attempt in (1, 2):
        server = make_server(kind, run_id, scratch, attempt)
        servers.append(server)  # stopped at the end whatever happens
        server.start()
        try:
            server.wait_ready(300)
        except ServerFailed as exc:
            print(f"{exc}\n{kind.title}: failed to start (try {attempt} of 2)")
            server.stop(10)
            continue
        print(f"started {kind.title} (pid {server.pid}) on {server.url}")
        return server
    return None


def why(server: Running) -> str:
    """The line of a failed server's log that says what went wrong."""
    lines = server.log_tail(40).splitlines()
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no log)"])[-1].strip()


def interrupted(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out = Path(args.out)
    all_kinds = kinds(args.pool, args.ray_cpus)
    unknown = set(args.only) - {k.key for k in all_kinds}
    if unknown:
        raise SystemExit(f"--only: no server {', '.join(sorted(unknown))}")
    chosen = [k for k in all_kinds if not args.only or k.key in args.only]
    if args.report_only:
        return write_report(json.loads((out / "comparison.json").read_text()), out)
    options, scan_options = options_from(args)
    run_id = uuid.uuid4().hex
    os.environ[MARK] = run_id  # the ZMQ baseline's kernel, started from here, carries it too
    scratch = Path(tempfile.mkdtemp(prefix="raygate-compare-"))
    began = time.time()
    report: dict[str, Any] = {
        "command": " ".join(["python benchmarks/compare.py", *map(shlex.quote, argv)]),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
        "machine": machine(),
        "machine_at_start": machine_now(),
        "versions": {
            "raygate": __version__,
            "ray": package_version("ray"),
            "ipykernel": package_version("ipykernel"),
            "jupyter_client": package_version("jupyter_client"),
        },
        "goals_defined": {
            "round_trip_vs_zmq_max": RTT_GOAL,
            "throughput_vs_zmq_min": THROUGHPUT_GOAL,
            "warm_start_p50_max_s": WARM_GOAL_S,
            "warm_vs_kg_start_min": WARM_VS_KG_GOAL,
        },
        "options": asdict(options),
        "scan_options": asdict(scan_options),
        "ray_cpus": args.ray_cpus,
    }
    load = report["machine_at_start"]["load_average"][0]
    print(f"load average {load} on {os.cpu_count()} cores; logs in {scratch}")
    servers: list[Running] = []
    signal.signal(signal.SIGTERM, interrupted)
    status = 0
    try:
        report["venvs"] = {k.key: ensure_venv(k.venv, scratch) for k in chosen if k.venv}
        report["not_started"] = {}
        for kind in chosen:  # one at a time: on a busy machine Ray's startup times out
            server = start_server(kind, run_id, scratch, servers)
            if server is None:
                report["not_started"][kind.key] = {"title": kind.title, "why": why(servers[-1])}
        servers = [s for s in servers if s.proc is not None and s.proc.poll() is None]
        if not servers:
            raise SystemExit("no server started")
        report["servers"] = [
            {"name": s.kind.key, "title": s.kind.title, "command": shown_command(s)}
            for s in servers
        ]
        report.update(
            asyncio.run(measure(servers, options, scan_options, args.live, args.pool, args.bursts))
        )
    except KeyboardInterrupt:
        print("interrupted: stopping everything")
        status = 130
    except BenchError as exc:
        print(f"error: {exc}")
        for server in servers:
            print(f"--- {server.kind.title} ({server.log}):\n{server.log_tail()}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping the servers")
        report["stop"] = stop_everything(servers, run_id)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for line in report["stop"]["left_over"]:
            print(f"left over: {line}")
    if status:
        return status
    report["machine_at_end"] = machine_now()
    report["seconds"] = time.time() - began
    return write_report(report, out)


def write_report(report: dict[str, Any], out: Path) -> int:
    """comparison.md, the plots and comparison.json from a run's figures; returns the exit
    status (1: a goal missed, 2: processes were left over)."""
    out.mkdir(parents=True, exist_ok=True)
    report["goals"] = check_goals(report)
    report["plots"] = plot(report, out / "img")
    (out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "comparison.md").write_text(markdown(report))
    print(f"wrote {out / 'comparison.md'}, comparison.json and {', '.join(report['plots'])}")
    for goal in report["goals"]:
        print(f"  {goal['result']:4}  {goal['goal']}: {goal['shown']}")
    if report["stop"]["left_over"]:
        return 2
    return 1 if any(g["result"] == "MISS" for g in report["goals"]) else 0


if __name__ == "__main__":
    sys.exit(main())
