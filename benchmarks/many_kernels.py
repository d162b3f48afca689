#!/usr/bin/env python
"""Many kernels through one gateway: what hundreds of idle kernels cost raygate.

Starts ``raygate serve`` as its own process (the local launcher by default; ``--launcher
ray`` uses the embedded Ray, with ``--kernels`` + 16 logical CPUs and a small
``--ray-kernel-cpus``), starts one *active* kernel and measures its execute round trip
alone, then starts ``--kernels`` more in batches, leaves them idle (``--connect-idle``: each
with an open WebSocket client too) and measures again:

* the active kernel's round trip (p50/p99 over ``--rounds`` trivial cells) through raygate's
  WebSocket, in both framings, beside jupyter_client straight on the same kernel's ZMQ
  sockets (through the connection file raygate's launcher wrote), the three taking turns
  in blocks (``raygate.bench``'s clients and turn-taking, as ``benchmarks/bridge.py``);
* the bridge's own cost: raygate's round trip minus ZMQ's, and the gateway's CPU time per
  round trip (5 messages: the request, its reply, and busy/execute_input/idle on iopub);
* the gateway's resident memory (RSS and PSS) and open fds, per idle kernel;
* the gateway's CPU use while everything is idle for ``--idle-seconds`` (work that polls
  each kernel shows up here), and the idle kernels' own;
* the memory of each idle kernel (its process, plus for Ray its actor's worker).

The round trips alone are measured before the other kernels start and again after they
are shut down; "alone" is the mean of the two p50s, so a drifting machine load cancels.

Goals (issue 7): the active kernel's round trip among the others within 1.2x of its round
trip alone (at p50, divided by the same ratio of ZMQ's: what slows ZMQ too is the machine,
not raygate), the gateway's CPU per message well under a millisecond. Exits 1 when a goal
is missed, 2 when kernels were left behind. Every kernel is shut down at the end and the
gateway stopped; leftover processes are reported.

    python benchmarks/many_kernels.py [--kernels 200] [--batch 8] [--connect-idle]
                                      [--launcher ray|standin] [--json out.json]

``--launcher standin`` makes the idle kernels stand-ins (``benchmarks/standin_kernels.py``:
one process serving every idle kernel's five sockets with the real, signed protocol), so
that a thousand fit this machine and what is measured is the gateway's own cost; the
active kernel stays a real ipykernel (local launcher).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import psutil
import websockets
from bridge import Gateway, free_port, machine, raygate_connection_file
from standin_kernels import CONTROL_ENV, install_entry_point

from raygate.bench.client import GatewayClient
from raygate.bench.measure import (
    Channel,
    NoProgress,
    Target,
    WebSocketChannel,
    measure_round_trips,
)
from raygate.bench.usage import PidProbe
from raygate.bench.zmq_baseline import ZmqChannel

MODES = ("zmq", "legacy", "v1")
TIMEOUT = 120.0
RTT_GOAL = 1.2
"""Round trip of the active kernel among the others, at most this times its round trip alone."""
MESSAGES_PER_RTT = 5
BRIDGE_GOAL_US = 1000.0
"""The gateway's CPU per message bridged, at most this (well under it, really)."""
MIB = 2**20
HERE = os.path.dirname(os.path.abspath(__file__))


class ManyGateway(Gateway):
    """``raygate serve`` for many kernels: bridge.Gateway with the launcher chosen."""

    def __init__(self, args: argparse.Namespace) -> None:  # replaces Gateway's fixed command
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="raygate-many-", suffix=".log", delete=False)
        default = "local" if args.launcher == "standin" else args.launcher
        cmd = [sys.executable, "-m", "raygate", "serve", "--default-launcher", default]
        cmd += ["--ip", "127.0.0.1", "--port", str(self.port), "--auth-token", self.token]
        cmd += ["--log-level", "info"]
        if args.launcher == "ray":
            cmd += ["--ray-num-cpus", str(args.kernels + 16)]
            cmd += ["--ray-kernel-cpus", str(args.ray_kernel_cpus)]
        env = dict(os.environ)
        self.standin: subprocess.Popen | None = None
        if args.launcher == "standin":
            # The idle kernels are stand-ins in one host process; the active one is a real
            # local ipykernel (kernelspec python3), so its ZMQ baseline is a real kernel's.
            root = tempfile.mkdtemp(prefix="raygate-many-standin-")
            control = f"tcp://127.0.0.1:{free_port()}"
            host = [sys.executable, os.path.join(HERE, "standin_kernels.py"), "--control", control]
            self.standin = subprocess.Popen(host)
            write_standin_specs(os.path.join(root, "kernels"))
            cmd += ["--kernelspec-dirs", os.path.join(root, "kernels")]
            paths = [install_entry_point(os.path.join(root, "path")), HERE]
            env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
            env[CONTROL_ENV] = control
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=300
        )


def write_standin_specs(root: str) -> None:
    """``python3``: a real ipykernel (the active kernel); ``standin``: a stand-in kernel."""
    for name, argv, launcher in (
        ("python3", [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], ""),
        ("standin", ["standin"], "standin"),
    ):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        spec: dict[str, Any] = {"argv": argv, "display_name": name, "language": "python"}
        if launcher:
            spec["metadata"] = {"raygate": {"launcher": launcher}}
        with open(os.path.join(root, name, "kernel.json"), "w") as f:
            json.dump(spec, f)


def connection_file(kernel_id: str) -> str | None:
    """The connection file the local launcher or the Ray kernel actor wrote for a kernel."""
    found = raygate_connection_file(kernel_id)
    if found:
        return found
    pattern = os.path.join(
        tempfile.gettempdir(), f"raygate-kernel-{kernel_id[:8]}-*", "connection.json"
    )
    matches = glob.glob(pattern)
    return matches[0] if matches else None


# -- what the gateway and the kernels hold ------------------------------------------------


def memory(pid: int) -> tuple[float, float]:
    """RSS and PSS of a process in MiB (PSS splits shared pages among their users)."""
    try:
        info = psutil.Process(pid).memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0, 0.0
    return info.rss / MIB, getattr(info, "pss", info.rss) / MIB


def gateway_state(pid: int) -> dict[str, Any]:
    proc = psutil.Process(pid)
    rss, pss = memory(pid)
    return {"rss_mib": rss, "pss_mib": pss, "fds": proc.num_fds(), "threads": proc.num_threads()}


def kernel_pids(model: dict[str, Any]) -> list[int]:
    """The kernel's process and, for Ray, its actor's worker (from the kernel's placement)."""
    placement = model.get("placement") or {}
    return [int(placement[key]) for key in ("pid", "actor_pid") if placement.get(key)]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def placed_pids(models: list[dict[str, Any]], key: str) -> list[int]:
    """One pid of each kernel's placement: ``pid`` (the kernel) or ``actor_pid`` (Ray)."""
    return [int(m["placement"][key]) for m in models if (m.get("placement") or {}).get(key)]


async def idle_cpu(
    gateway_pid: int, models: list[dict[str, Any]], seconds: float, hosts: tuple[int, ...] = ()
) -> dict[str, float]:
    """CPU seconds the gateway, the kernels and (Ray) their actors' workers used while
    nothing was asked of them."""
    groups = {
        "gateway_cpu_s": [gateway_pid],
        "kernels_cpu_s": placed_pids(models, "pid") + list(hosts),
        "actor_workers_cpu_s": placed_pids(models, "actor_pid"),
    }
    before = {key: cpu_seconds(pids) for key, pids in groups.items()}
    await asyncio.sleep(seconds)
    used = {key: cpu_seconds(pids) - before[key] for key, pids in groups.items()}
    return {"seconds": seconds, **used}


# -- kernels --------------------------------------------------------------------------------


async def start_kernels(
    gateway: ManyGateway,
    models: list[dict[str, Any]],
    count: int,
    batch: int,
    timeout: float,
    name: str = "python3",
) -> None:
    """Start ``count`` kernels, ``batch`` at a time, adding their models to ``models`` as
    they come (so that the kernels of a run that fails half-way are shut down too)."""
    first_new = len(models)
    headers = {"Authorization": f"token {gateway.token}"}
    body = {"name": name, "env": {"KERNEL_LAUNCH_TIMEOUT": str(int(timeout))}}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=None) as http:
        started = time.monotonic()
        for first in range(0, count, batch):
            size = min(batch, count - first)
            replies = await asyncio.gather(
                *(http.post("/api/kernels", json=body) for _ in range(size))
            )
            models += [r.json() for r in replies if r.status_code == 201]
            for r in replies:
                if r.status_code != 201:
                    raise RuntimeError(f"kernel start failed: {r.status_code} {r.text}")
            seconds = time.monotonic() - started
            print(
                f"  {len(models) - first_new}/{count} kernels started ({seconds:.0f}s)", flush=True
            )


async def connect_idle(gateway: ManyGateway, kernel_ids: list[str]) -> list[Any]:
    """One open WebSocket per idle kernel, as a notebook tab that is left open keeps."""
    base = gateway.url.replace("http", "ws", 1)
    sockets = []
    for kernel_id in kernel_ids:
        sockets.append(
            await websockets.connect(
                f"{base}/api/kernels/{kernel_id}/channels?session_id={secrets.token_hex(16)}",
                additional_headers={"Authorization": f"token {gateway.token}"},
                compression=None,
                max_size=None,
                ping_interval=None,
            )
        )
    return sockets


async def stop_kernels(gateway: ManyGateway, kernel_ids: list[str], batch: int) -> list[str]:
    """DELETE every kernel; returns the ids whose shutdown did not answer 204."""
    failed = []
    headers = {"Authorization": f"token {gateway.token}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=120) as http:
        for first in range(0, len(kernel_ids), batch):
            ids = kernel_ids[first : first + batch]
            replies = await asyncio.gather(
                *(http.delete(f"/api/kernels/{kid}") for kid in ids), return_exceptions=True
            )
            for kid, r in zip(ids, replies):
                if isinstance(r, BaseException) or r.status_code != 204:
                    failed.append(kid)
    return failed


def still_running(pids: list[int], timeout: float = 30) -> list[int]:
    """The pids still alive (zombies aside) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


# -- measuring ------------------------------------------------------------------------------


async def measure_rtts(channels: list[Channel], rounds: int, block: int, pid: int) -> dict:
    """raygate.bench's round trips: the ways in take turns in blocks, each on a fresh
    connection, cycling through every order; with the gateway's CPU time meanwhile."""
    results = await measure_round_trips(
        channels, rounds, block, TIMEOUT, NoProgress(), [PidProbe(pid)] * len(channels)
    )
    out: dict[str, Any] = {}
    for mode, result in zip(MODES, results):
        out[mode] = {
            "p50": result["p50_ms"],
            "p99": result["p99_ms"],
            "mean": result["mean_ms"],
            "n": result["n"],
            "gateway_cpu_us_per_rtt": result["gateway_cpu_us_per_round_trip"],
        }
    for mode in ("legacy", "v1"):
        s = out[mode]
        s["bridge_ms_p50"] = s["p50"] - out["zmq"]["p50"]
        s["gateway_cpu_us_per_message"] = s["gateway_cpu_us_per_rtt"] / MESSAGES_PER_RTT
    return out


def table(report: dict[str, Any]) -> str:
    n = report["settings"]["kernels"]
    rtt = report["rtt_ms"]
    phases = ("before", "among", "after")
    rows = [
        f"{'active kernel round trip':34} {'alone, before':>17} {f'among {n} idle':>17} "
        f"{'alone, after':>17}  among/alone (p50)",
    ]
    for mode, label in (
        ("zmq", "ZMQ straight"),
        ("legacy", "raygate legacy"),
        ("v1", "raygate v1"),
    ):
        cells = " ".join(f"{rtt[p][mode]['p50']:8.2f} /{rtt[p][mode]['p99']:7.2f}" for p in phases)
        ratio = f"{rtt['ratio_p50'][mode]:.2f}x"
        if mode != "zmq":
            ratio += f" ({rtt['ratio_p50_vs_zmq'][mode]:.2f}x of ZMQ's)"
        rows.append(f"  {label + ' p50 / p99 (ms)':32} {cells}  {ratio}")
    for mode in ("legacy", "v1"):
        for key, label, fmt in (
            ("bridge_ms_p50", "bridge (p50 - ZMQ p50, ms)", ".2f"),
            ("gateway_cpu_us_per_message", "gw CPU per message (us)", ".0f"),
        ):
            cells = " ".join(f"{rtt[p][mode][key]:17{fmt}}" for p in phases)
            rows.append(f"  {f'{mode}: {label}':32} {cells}")
    g = report["gateway"]
    rows.append("")
    rows.append(f"{'gateway':34} {'1 kernel':>18} {f'{n + 1} kernels':>18}  per added kernel")
    for key, label, unit in (
        ("rss_mib", "RSS", "MiB"),
        ("pss_mib", "PSS", "MiB"),
        ("fds", "open fds", ""),
        ("threads", "threads", ""),
    ):
        one, many = g["one"][key], g["many"][key]
        per = (many - one) / n
        per_text = f"{per * 1024:.0f} KiB" if unit == "MiB" else f"{per:.1f}"
        rows.append(f"  {label:32} {one:18.1f} {many:18.1f}  {per_text}")
    roles = [("gateway_cpu_s", "gateway"), ("kernels_cpu_s", "the kernels")]
    if report["settings"]["launcher"] == "ray":
        roles.append(("actor_workers_cpu_s", "actor workers"))
    for key, label in roles:
        one, many = g["idle_one"][key], g["idle_many"][key]
        secs = g["idle_many"]["seconds"]
        rows.append(f"  {f'idle CPU s of {label} over {secs:g} s':32} {one:18.2f} {many:18.2f}")
    k = report["kernel_memory_mib"]
    rows.append("")
    rows.append(
        f"idle kernel ({report['settings']['launcher']}: {k['what']}), median of {k['n']}: "
        f"RSS {k['rss']:.0f} MiB, PSS {k['pss']:.0f} MiB"
    )
    rows.append(
        f"started {n} kernels in {report['start_seconds']:.0f}s "
        f"(batches of {report['settings']['batch']}); "
        f"idle clients connected: {report['settings']['connect_idle']}"
    )
    verdict = (
        "PASS"
        if report["pass"]
        else "FAIL: " + ", ".join(name for name, ok in report["checks"].items() if not ok)
    )
    rows.append(
        f"goals: active RTT p50 among {n} <= {RTT_GOAL}x alone (relative to ZMQ's ratio), "
        f"gateway CPU per message < {BRIDGE_GOAL_US:g} us: {verdict}"
    )
    return "\n".join(rows)


async def run(args: argparse.Namespace) -> int:
    gateway = ManyGateway(args)
    models: list[dict[str, Any]] = []
    idle_sockets: list[Any] = []
    gone_pids: list[int] = []
    leftover: list[int] = []
    failed_stops: list[str] = []
    report: dict[str, Any] = {}
    http_clients: list[GatewayClient] = []
    stopped = 1  # models[1:stopped] are shut down already; models[0] is the active kernel
    try:
        gateway.wait_ready(120)
        pid = gateway.proc.pid
        print(
            f"raygate pid {pid} on {gateway.url} ({args.launcher} launcher), log {gateway.log.name}"
        )
        active = gateway.http.post(
            "/api/kernels", json={"name": "python3", "env": {"KERNEL_LAUNCH_TIMEOUT": "300"}}
        )
        if active.status_code != 201:
            raise RuntimeError(f"kernel start failed: {active.status_code} {active.text}")
        models.append(active.json())
        active_id = models[0]["id"]
        conn = connection_file(active_id)
        if conn is None:
            raise RuntimeError(f"no connection file found for kernel {active_id}")
        for framing in ("legacy", "v1"):
            http_clients.append(GatewayClient(gateway.url, gateway.token, framing, TIMEOUT))
        clients: list[Channel] = [ZmqChannel(conn)] + [
            WebSocketChannel(Target(c.framing, c, "python3"), active_id) for c in http_clients
        ]
        print(f"warming up, then {args.rounds} round trips per way in, alone")
        await measure_rtts(clients, 20 * len(MODES), 20, pid)
        alone = await measure_rtts(clients, args.rounds, args.block, pid)
        one = gateway_state(pid)
        print(f"idle for {args.idle_seconds:g}s with 1 kernel")
        hosts = (gateway.standin.pid,) if gateway.standin is not None else ()
        idle_one = await idle_cpu(pid, models, args.idle_seconds, hosts)

        print(f"starting {args.kernels} kernels, {args.batch} at a time")
        started = time.monotonic()
        idle_spec = "standin" if args.launcher == "standin" else "python3"
        await start_kernels(
            gateway, models, args.kernels, args.batch, args.launch_timeout, idle_spec
        )
        start_seconds = time.monotonic() - started
        if args.connect_idle:
            idle_sockets = await connect_idle(gateway, [m["id"] for m in models[1:]])
        print(f"settling for {args.settle:g}s, then idle for {args.idle_seconds:g}s")
        await asyncio.sleep(args.settle)
        gone_pids = [p for m in models for p in kernel_pids(m)]
        idle_many = await idle_cpu(pid, models, args.idle_seconds, hosts)
        many = gateway_state(pid)
        per_kernel = [[memory(p) for p in kernel_pids(m)] for m in models[1:]]
        if gateway.standin is not None:  # all in one process: its share per kernel
            rss, pss = memory(gateway.standin.pid)
            per_kernel = [[(rss / args.kernels, pss / args.kernels)]]
        print(f"{args.rounds} round trips per way in, among {args.kernels} idle kernels")
        among = await measure_rtts(clients, args.rounds, args.block, pid)

        # Alone once more, so that drift of the machine's load shows (and averages out).
        for ws in idle_sockets:
            await ws.close()
        idle_sockets = []
        print(f"shutting down the {args.kernels} idle kernels")
        failed_stops = await stop_kernels(gateway, [m["id"] for m in models[1:]], args.batch)
        stopped = len(models)
        await asyncio.sleep(args.settle)
        print(f"{args.rounds} round trips per way in, alone again")
        after = await measure_rtts(clients, args.rounds, args.block, pid)

        report = {
            "machine": machine(),
            "settings": {
                "kernels": args.kernels,
                "batch": args.batch,
                "rounds": args.rounds,
                "block": args.block,
                "launcher": args.launcher,
                "connect_idle": args.connect_idle,
                "idle_seconds": args.idle_seconds,
                "ray_kernel_cpus": args.ray_kernel_cpus if args.launcher == "ray" else None,
            },
            "start_seconds": start_seconds,
            "rtt_ms": {
                "before": alone,
                "among": among,
                "after": after,
            },
            "gateway": {"one": one, "many": many, "idle_one": idle_one, "idle_many": idle_many},
            "kernel_memory_mib": {
                "what": {
                    "ray": "kernel + actor worker",
                    "standin": "the stand-in host's memory / kernels",
                }.get(args.launcher, "kernel process"),
                "n": len(per_kernel),
                "rss": statistics.median(sum(r for r, _ in k) for k in per_kernel),
                "pss": statistics.median(sum(p for _, p in k) for k in per_kernel),
            },
        }
        rtt = report["rtt_ms"]
        # Alone: the mean of the p50s before and after, so a drifting machine load cancels.
        rtt["ratio_p50"] = {
            m: rtt["among"][m]["p50"]
            / statistics.fmean((rtt["before"][m]["p50"], rtt["after"][m]["p50"]))
            for m in MODES
        }
        # The same kernel over ZMQ meanwhile is the control: what slows it (the machine,
        # the idle kernels' own CPU) is not raygate's. The goal is checked on raygate's part.
        rtt["ratio_p50_vs_zmq"] = {
            m: rtt["ratio_p50"][m] / rtt["ratio_p50"]["zmq"] for m in ("legacy", "v1")
        }
        report["checks"] = {
            "rtt": all(rtt["ratio_p50_vs_zmq"][m] <= RTT_GOAL for m in ("legacy", "v1")),
            "bridge_cpu": all(
                rtt[when][m]["gateway_cpu_us_per_message"] < BRIDGE_GOAL_US
                for when in ("before", "among", "after")
                for m in ("legacy", "v1")
            ),
        }
        report["pass"] = all(report["checks"].values())
    finally:
        for ws in idle_sockets:
            await ws.close()
        for client in http_clients:
            await client.close()
        ids = [m["id"] for m in models[:1] + models[stopped:]]
        if ids:
            print(f"shutting down {len(ids)} kernel(s)")
            failed_stops += await stop_kernels(gateway, ids, args.batch)
            gone_pids = gone_pids or [p for m in models for p in kernel_pids(m)]
        descendants = []
        if gateway.proc.poll() is None:
            descendants = [p.pid for p in psutil.Process(gateway.proc.pid).children(True)]
        gateway.stop()
        if gateway.standin is not None:
            gateway.standin.terminate()
            gateway.standin.wait(30)
        leftover = still_running(sorted(set(gone_pids) | set(descendants)))
        if leftover or failed_stops:
            print(f"LEFT BEHIND: processes {leftover}, kernels not shut down {failed_stops}")
    report["cleanup"] = {"leftover_pids": leftover, "failed_shutdowns": failed_stops}
    print()
    print(table(report))
    print(json.dumps(report, separators=(",", ":")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    if leftover or failed_stops:
        return 2
    return 0 if report["pass"] else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=int, default=200, help="idle kernels to add")
    parser.add_argument("--batch", type=int, default=8, help="kernels started at once")
    parser.add_argument("--rounds", type=int, default=300, help="timed round trips per way in")
    parser.add_argument("--block", type=int, default=20, help="round trips per alternation block")
    parser.add_argument(
        "--launcher",
        choices=("local", "ray", "standin"),
        default="local",
        help="where the idle kernels run; standin: stand-ins in one process "
        "(benchmarks/standin_kernels.py), for a thousand kernels",
    )
    parser.add_argument(
        "--ray-kernel-cpus", type=float, default=0.05, help="CPUs each Ray kernel reserves"
    )
    parser.add_argument(
        "--connect-idle", action="store_true", help="keep a WebSocket open on every idle kernel"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=30, help="idle window for the CPU figures"
    )
    parser.add_argument("--settle", type=float, default=10, help="seconds to wait after the starts")
    parser.add_argument(
        "--launch-timeout", type=float, default=300, help="KERNEL_LAUNCH_TIMEOUT of each start"
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
