#!/usr/bin/env python
"""Bridge benchmark: raygate's WebSocket bridge against straight ZMQ, on one kernel.

Starts ``raygate serve --default-launcher local`` as its own process on a free loopback
port, starts a kernel through its API, and measures on that kernel:

* the execute round trip: an ``execute_request`` of a trivial statement until both its
  ``execute_reply`` and its ``idle`` status arrived (p50 / p99 over ``--rounds``);
* the throughput of a cell that prints ``--mb`` MB: MB/s from the request to the idle
  status, with every byte of the output compared to what the cell printed.

Three ways in, measured alternately in short blocks so that machine noise hits them alike:

* ``zmq``: jupyter_client's ``AsyncKernelClient`` straight on the kernel's ZMQ sockets,
  connected through the connection file raygate's local launcher wrote for that very
  kernel (``<tmp>/raygate-local-*/kernel-<id>.json``; the API never shows the key).
  ``--baseline separate`` uses a kernel of the same kernelspec started by jupyter_client's
  ``AsyncKernelManager`` instead, which raygate does not listen to.
* ``legacy``: a WebSocket to raygate with no subprotocol (JSON text frames), the framing
  jupyter_server's gateway client uses;
* ``v1``: a WebSocket with the ``v1.kernel.websocket.jupyter.org`` binary subprotocol.

The clients, the cells and the turn-taking are ``raygate.bench``'s (the same as
``raygate bench URL`` uses); this script adds the ZMQ ways in on raygate's own kernel,
the goals and its table.

Goals (issue 2): raygate's round trip within 1.25x of ZMQ's (compared at p50), its
throughput at least half of ZMQ's, every byte delivered. Exits 1 when a goal is missed.

    python benchmarks/bridge.py [--rounds 200] [--mb 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from jupyter_client.manager import AsyncKernelManager

from raygate.bench.cells import TRIVIAL
from raygate.bench.client import GatewayClient, loads
from raygate.bench.measure import (
    Channel,
    NoProgress,
    Target,
    WebSocketChannel,
    measure_output,
    measure_round_trips,
    percentile,
)
from raygate.bench.runner import machine as bench_machine
from raygate.bench.usage import UsageProbe
from raygate.bench.zmq_baseline import ZmqChannel

MODES = ("zmq", "legacy", "v1")
LABELS = {"zmq": "ZMQ (jupyter_client)", "legacy": "raygate legacy JSON", "v1": "raygate v1 binary"}
RTT_GOAL = 1.25
THROUGHPUT_GOAL = 0.5
TIMEOUT = 120.0

# -- the gateway ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """``raygate serve`` in its own process, as deployed."""

    def __init__(self) -> None:
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="raygate-bench-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "raygate", "serve", "--default-launcher", "local"]
        cmd += ["--ip", "127.0.0.1", "--port", str(self.port), "--auth-token", self.token]
        cmd += ["--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=120
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"raygate exited early; see {self.log.name}")
            try:
                if self.http.get("/api").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"raygate did not come up; see {self.log.name}")

    def start_kernel(self, name: str) -> str:
        r = self.http.post("/api/kernels", json={"name": name})
        if r.status_code != 201:
            raise RuntimeError(f"kernel start failed: {r.status_code} {r.text}")
        return r.json()["id"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        self.log.close()


def raygate_connection_file(kernel_id: str) -> str | None:
    """The connection file the local launcher's kernel supervisor wrote for a kernel."""
    pattern = os.path.join(
        tempfile.gettempdir(),
        "raygate-local-*",
        f"raygate-kernel-{kernel_id[:8]}-*",
        "connection.json",
    )
    found = glob.glob(pattern)
    return found[0] if found else None


# -- measuring ------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """CPU seconds a process used so far, all threads (Linux; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ProcessCpu(UsageProbe):
    """raygate's CPU time, read from /proc, during each way in's timed part."""

    available = True

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.source = f"pid {pid} (/proc)"

    async def cpu_seconds(self) -> float | None:
        return process_cpu(self.pid)


@dataclass
class Measured:
    """What one way in measured, and the gateway CPU time spent while it did."""

    rtts: list[float] = field(default_factory=list)
    prints: list[dict[str, Any]] = field(default_factory=list)
    rtt_gateway_cpu: float = 0.0
    print_gateway_cpu: float = 0.0


async def round_trips(
    clients: dict[str, Channel], measured: dict[str, Measured], rounds: int, block: int, pid: int
) -> None:
    """raygate.bench's round trips: the ways in take turns in blocks, each on a fresh
    connection, cycling through every order."""
    results = await measure_round_trips(
        [clients[mode] for mode in MODES],
        rounds,
        block,
        TIMEOUT,
        NoProgress(),
        [ProcessCpu(pid)] * len(MODES),
    )
    for mode, result in zip(MODES, results):
        measured[mode].rtts += [ms / 1000 for ms in result["samples_ms"]]
        measured[mode].rtt_gateway_cpu += result["gateway_cpu_s"]


async def throughputs(
    clients: dict[str, Channel],
    measured: dict[str, Measured],
    rounds: int,
    mb: float,
    chunk_kb: int,
    pid: int,
) -> None:
    """raygate.bench's output measurement: the text is built in the kernel, then each way
    in takes its turn at the timed print, cycling through every order."""
    results = await measure_output(
        [clients[mode] for mode in MODES],
        mb,
        rounds,
        chunk_kb,
        TIMEOUT,
        NoProgress(),
        [ProcessCpu(pid)] * len(MODES),
    )
    for mode, result in zip(MODES, results):
        measured[mode].print_gateway_cpu += result["gateway_cpu_s"]
        measured[mode].prints += [
            {
                "seconds": run["seconds"],
                "mb_per_s": run["mb_per_s"],
                "bytes_delivered": run["stdout_bytes"],
                "bytes_expected": result["bytes_expected"] // result["rounds"],
                "messages": run["stream_messages"],
                "identical": run["identical"],
                "status": run["status"],
            }
            for run in result["runs"]
        ]


def summarize(measured: dict[str, Measured]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        m = measured[mode]
        ms = [s * 1000 for s in m.rtts]
        runs = m.prints or [
            {"mb_per_s": float("nan"), "bytes_delivered": 0, "bytes_expected": 0}
            | {"identical": True, "status": "ok", "messages": 0}
        ]
        summary[mode] = {
            "rtt_ms": {
                "p50": percentile(ms, 50),
                "p99": percentile(ms, 99),
                "mean": statistics.fmean(ms),
                "min": min(ms),
                "n": len(ms),
            },
            "gateway_cpu_us_per_rtt": m.rtt_gateway_cpu / len(ms) * 1e6,
            "throughput": {
                "mb_per_s": statistics.median(r["mb_per_s"] for r in runs),
                "bytes_delivered": sum(r["bytes_delivered"] for r in runs),
                "bytes_expected": sum(r["bytes_expected"] for r in runs),
                "all_identical": all(r["identical"] and r["status"] == "ok" for r in runs),
                "messages_per_print": [r["messages"] for r in runs],
                "runs": runs,
                "gateway_cpu_ms_per_print": m.print_gateway_cpu / max(1, len(m.prints)) * 1e3,
            },
        }
    base = summary["zmq"]
    for mode in MODES:
        s = summary[mode]
        s["rtt_ratio_p50"] = s["rtt_ms"]["p50"] / base["rtt_ms"]["p50"]
        s["rtt_ratio_p99"] = s["rtt_ms"]["p99"] / base["rtt_ms"]["p99"]
        s["throughput_ratio"] = s["throughput"]["mb_per_s"] / base["throughput"]["mb_per_s"]
        checks = {"all_bytes": s["throughput"]["all_identical"]}
        if mode != "zmq":
            checks["rtt"] = s["rtt_ratio_p50"] <= RTT_GOAL
            if m.prints:
                checks["throughput"] = s["throughput_ratio"] >= THROUGHPUT_GOAL
        s["checks"] = checks
        s["pass"] = all(checks.values())
    return summary


def table(summary: dict[str, dict[str, Any]], mb: float) -> str:
    """The figures, one row per way in; ratios are against the ZMQ row."""
    columns = [  # (title, unit, width)
        ("RTT p50", "ms", 8),
        ("RTT p99", "ms", 8),
        ("p50", "vs ZMQ", 7),
        ("p99", "vs ZMQ", 7),
        ("gw CPU", "us/RTT", 8),
        (f"{mb:g} MB print", "MB/s", 12),
        ("", "vs ZMQ", 7),
        ("gw CPU", "ms/print", 9),
        ("bytes delivered", "of expected", 23),
    ]
    rows = [
        " ".join([f"{'':22}"] + [f"{title:>{width}}" for title, _, width in columns] + [" goals"]),
        " ".join([f"{'':22}"] + [f"{unit:>{width}}" for _, unit, width in columns]),
    ]
    for mode in MODES:
        s = summary[mode]
        tp = s["throughput"]
        delivered = f"{tp['bytes_delivered']}/{tp['bytes_expected']}"
        if not tp["all_identical"]:
            delivered += " DIFFERS"
        if mode == "zmq":
            verdict = "baseline" if s["pass"] else "FAIL (bytes)"
        else:
            verdict = (
                "PASS"
                if s["pass"]
                else "FAIL: " + ", ".join(name for name, ok in s["checks"].items() if not ok)
            )
        values = [
            f"{s['rtt_ms']['p50']:.3f}",
            f"{s['rtt_ms']['p99']:.3f}",
            f"{s['rtt_ratio_p50']:.2f}x",
            f"{s['rtt_ratio_p99']:.2f}x",
            f"{s['gateway_cpu_us_per_rtt']:.0f}",
            f"{tp['mb_per_s']:.1f}",
            f"{s['throughput_ratio']:.2f}x",
            f"{tp['gateway_cpu_ms_per_print']:.0f}",
            delivered,
        ]
        cells = [f"{v:>{width}}" for v, (_, _, width) in zip(values, columns)]
        rows.append(" ".join([f"{LABELS[mode]:22}", *cells, f" {verdict}"]))
    rows.append(
        f"goals: RTT p50 <= {RTT_GOAL}x ZMQ's, print throughput >= {THROUGHPUT_GOAL}x ZMQ's,"
        " every byte delivered. gw CPU: CPU time of the raygate process meanwhile"
        " (10 ms clock ticks, summed over all rounds)."
    )
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    info = bench_machine()
    import jupyter_client
    import uvicorn
    import zmq

    info["versions"] = {
        "websockets": websockets.__version__,
        "uvicorn": uvicorn.__version__,
        "pyzmq": zmq.__version__,
        "jupyter_client": jupyter_client.__version__,
    }
    return info


async def run(args: argparse.Namespace) -> int:
    gateway = Gateway()
    manager: AsyncKernelManager | None = None
    http_clients: list[GatewayClient] = []
    try:
        gateway.wait_ready()
        kernel_id = gateway.start_kernel(args.kernel)
        connection_file = (
            None if args.baseline == "separate" else raygate_connection_file(kernel_id)
        )
        if connection_file is not None:
            baseline = (
                f"the same kernel: jupyter_client connected with the connection file "
                f"raygate's local launcher wrote ({connection_file})"
            )
        else:
            manager = AsyncKernelManager(kernel_name=args.kernel)
            await manager.start_kernel()
            connection_file = manager.connection_file
            baseline = (
                f"a second kernel of kernelspec {args.kernel!r} started by jupyter_client's "
                "AsyncKernelManager (raygate not subscribed to it)"
            )
        print(f"raygate pid {gateway.proc.pid} on {gateway.url}, kernel {kernel_id}")
        print(f"ZMQ baseline: {baseline}")
        legacy = GatewayClient(gateway.url, gateway.token, "legacy", TIMEOUT)
        v1 = GatewayClient(gateway.url, gateway.token, "v1", TIMEOUT)
        http_clients += [legacy, v1]
        clients: dict[str, Channel] = {
            "zmq": ZmqChannel(connection_file),
            "legacy": WebSocketChannel(Target(LABELS["legacy"], legacy, args.kernel), kernel_id),
            "v1": WebSocketChannel(Target(LABELS["v1"], v1, args.kernel), kernel_id),
        }
        pid = gateway.proc.pid
        print(f"warming up, then {args.rounds} round trips per way in, blocks of {args.block}")
        await round_trips(clients, {mode: Measured() for mode in MODES}, 20 * len(MODES), 20, pid)
        measured = {mode: Measured() for mode in MODES}
        await round_trips(clients, measured, args.rounds, args.block, pid)
        print(f"{args.tp_rounds} prints of {args.mb:g} MB per way in")
        await throughputs(clients, measured, args.tp_rounds, args.mb, args.chunk_kb, pid)
    finally:
        for client in http_clients:
            await client.close()
        if manager is not None:
            await manager.shutdown_kernel(now=True)
        gateway.stop()
    summary = summarize(measured)
    print()
    print(table(summary, args.mb))
    chunking = (
        f"in flushed pieces of {args.chunk_kb} KiB" if args.chunk_kb > 0 else "with one print()"
    )
    print(f"(the {args.mb:g} MB cell prints {chunking}; messages per print:", end=" ")
    print(", ".join(f"{m} {summary[m]['throughput']['messages_per_print']}" for m in MODES) + ")")
    ok = all(summary[mode]["pass"] for mode in MODES)
    if args.json:
        report = {
            "machine": machine(),
            "settings": {
                "rounds": args.rounds,
                "block": args.block,
                "mb": args.mb,
                "chunk_kb": args.chunk_kb,
                "throughput_rounds": args.tp_rounds,
                "kernel": args.kernel,
                "trivial_statement": TRIVIAL,
                "client_json": loads.__module__,
            },
            "baseline": baseline,
            "goals": {"rtt_p50_ratio_max": RTT_GOAL, "throughput_ratio_min": THROUGHPUT_GOAL},
            "results": summary,
            "rtt_samples_ms": {mode: [s * 1000 for s in measured[mode].rtts] for mode in MODES},
            "pass": ok,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed round trips per way in")
    parser.add_argument("--block", type=int, default=20, help="round trips per alternation block")
    parser.add_argument("--mb", type=float, default=20, help="MB (10^6 bytes) the cell prints")
    parser.add_argument(
        "--chunk-kb",
        type=int,
        default=64,
        help="print in flushed pieces of this many KiB (0: one print of the whole text)",
    )
    parser.add_argument("--tp-rounds", type=int, default=3, help="timed prints per way in")
    parser.add_argument("--kernel", default="python3", help="kernelspec to benchmark")
    parser.add_argument(
        "--baseline",
        choices=("same", "separate"),
        default="same",
        help="ZMQ on raygate's own kernel (same) or on a second kernel (separate)",
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
