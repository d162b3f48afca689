"""How long a Ray kernel takes to be ready, and what an idle one costs, against a local one.

Starts a one-node Ray cluster with Ray's cluster utilities (token auth on, as Ray 2.59+
has it) and one ``raygate serve --ray-address ...`` with two kernelspecs running the same
ipykernel: ``bench-ray`` (the ray launcher) and ``bench-local`` (the local launcher).
For each, alternately, it measures the time from ``POST /api/kernels`` to the first
``kernel_info_reply`` on a fresh WebSocket, and the resident memory (RSS) of each idle
kernel: the kernel process, plus for Ray its actor's worker process.

    python benchmarks/ray_start.py [--rounds 8] [--cpus 4]

Prints a Markdown table (the figures in docs/benchmarks.md come from it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx
import psutil
import websockets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_specs(root: str) -> None:
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    for name, launcher in (("bench-ray", "ray"), ("bench-local", "local")):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        spec = {
            "argv": argv,
            "display_name": name,
            "language": "python",
            "metadata": {"raygate": {"launcher": launcher}},
        }
        with open(os.path.join(root, name, "kernel.json"), "w") as f:
            json.dump(spec, f)


async def kernel_info(url: str, kernel_id: str) -> None:
    ws_url = url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    async with websockets.connect(ws_url) as ws:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "kernel_info_request",
            "username": "bench",
            "session": uuid.uuid4().hex,
            "date": "2026-01-01T00:00:00.000000Z",
            "version": "5.3",
        }
        await ws.send(
            json.dumps(
                {
                    "header": header,
                    "parent_header": {},
                    "metadata": {},
                    "content": {},
                    "channel": "shell",
                }
            )
        )
        while True:
            reply = json.loads(await ws.recv())
            if reply["parent_header"].get("msg_id") == msg_id:
                return


def rss(pid: int | None) -> int:
    try:
        return psutil.Process(pid).memory_info().rss if pid else 0
    except psutil.NoSuchProcess:
        return 0


async def measure(url: str, spec: str) -> tuple[float, float, dict]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        started = time.perf_counter()
        r = await http.post("/api/kernels", json={"name": spec})
        r.raise_for_status()
        kernel = r.json()
        posted = time.perf_counter() - started
        await kernel_info(url, kernel["id"])
        ready = time.perf_counter() - started
        return posted, ready, kernel


async def bench(url: str, rounds: int, gap: float) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    kernels: list[tuple[str, dict]] = []
    for _ in range(rounds):
        for spec in ("bench-local", "bench-ray"):
            posted, ready, kernel = await measure(url, spec)
            row = results.setdefault(spec, {"posted": [], "ready": [], "rss": []})
            row["posted"].append(posted)
            row["ready"].append(ready)
            kernels.append((spec, kernel))
            await asyncio.sleep(gap)
    await asyncio.sleep(5)  # idle
    for spec, kernel in kernels:
        placement = kernel["placement"]
        total = rss(placement.get("pid")) + rss(placement.get("actor_pid"))
        results[spec]["rss"].append(total / 2**20)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for _, kernel in kernels:
            await http.delete(f"/api/kernels/{kernel['id']}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument(
        "--gap", type=float, default=3.0, help="seconds between one start and the next"
    )
    parser.add_argument("--cpus", type=float, default=16, help="logical CPUs of the Ray node")
    args = parser.parse_args()

    token = secrets.token_hex(16)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": args.cpus, "include_dashboard": False},
    )
    specs = tempfile.mkdtemp(prefix="raygate-bench-specs-")
    write_specs(specs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RAY_AUTH_TOKEN": token}
    env.pop("RAY_AUTH_MODE")
    cmd = [sys.executable, "-m", "raygate", "serve", "--port", str(port)]
    cmd += ["--ray-address", cluster.address, "--kernelspec-dirs", specs]
    cmd += ["--ray-namespace", f"bench-{uuid.uuid4().hex[:6]}", "--log-level", "warning"]
    gateway = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/api", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        results = asyncio.run(bench(url, args.rounds, args.gap))
    finally:
        gateway.terminate()
        gateway.wait(30)
        cluster.shutdown()

    print(
        f"\n{args.rounds} kernels each, started alternately {args.gap:g}s apart; "
        f"{os.cpu_count()} cores\n"
    )
    print(
        "| kernel | POST → 201 (median) | POST → first kernel_info_reply: median | min | max "
        "| RSS per idle kernel (median) |"
    )
    print("|---|---|---|---|---|---|")
    for spec, label in (("bench-local", "local"), ("bench-ray", "Ray actor")):
        row = results[spec]
        print(
            f"| {label} | {statistics.median(row['posted']):.2f} s "
            f"| {statistics.median(row['ready']):.2f} s | {min(row['ready']):.2f} s "
            f"| {max(row['ready']):.2f} s | {statistics.median(row['rss']):.0f} MiB |"
        )
    ratio = statistics.median(results["bench-ray"]["ready"]) / statistics.median(
        results["bench-local"]["ready"]
    )
    print(f"\nRay / local, median time to ready: {ratio:.2f}x")


if __name__ == "__main__":
    main()
