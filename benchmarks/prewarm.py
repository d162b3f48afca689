"""How long a kernel start takes with a warm pool (``--prewarm``) and without one.

Starts two ``raygate serve`` processes side by side on loopback, the same kernelspec (an
ipykernel) and launcher for both, one of them with ``--prewarm bench=N``. For each, in
turn, it measures the time from ``POST /api/kernels`` to the first ``kernel_info_reply``
on a fresh WebSocket, the way a notebook server starts a kernel. Each start sends the env
jupyter_server's gateway client sends (``KERNEL_USERNAME``, ``KERNEL_LAUNCH_TIMEOUT``,
``KERNEL_WORKING_DIR``), so a warm start pays for taking that env on. Before each warm
start the pool is let fill up again (a steady trickle of starts, not a burst); each
kernel is shut down before the next start.

    python benchmarks/prewarm.py [--rounds 20] [--pool 2] [--launcher local|ray]

Prints p50 and p95 per gateway as a Markdown table (docs/benchmarks.md quotes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
from ray_start import free_port, kernel_info

SPEC = "bench"


def write_spec(root: str, launcher: str) -> None:
    os.makedirs(os.path.join(root, SPEC), exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": SPEC,
        "language": "python",
        "metadata": {"raygate": {"launcher": launcher}},
    }
    with open(os.path.join(root, SPEC, "kernel.json"), "w") as f:
        json.dump(spec, f)


class Gateway:
    def __init__(self, specs: str, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "raygate", "serve", "--port", str(self.port)]
        cmd += ["--kernelspec-dirs", specs, "--log-level", "warning", *extra]
        self.proc = subprocess.Popen(cmd)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"raygate exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/api", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("raygate did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def wait_pool_full(http: httpx.AsyncClient, size: int) -> None:
    while True:
        pool = (await http.get("/api/status")).json()["pool"].get(SPEC, {})
        if pool.get("ready") == size:
            return
        await asyncio.sleep(0.1)


async def one_start(http: httpx.AsyncClient, url: str, workdir: str) -> tuple[float, bool]:
    env = {
        "KERNEL_USERNAME": "bench",
        "KERNEL_LAUNCH_TIMEOUT": "40",
        "KERNEL_WORKING_DIR": workdir,
    }
    started = time.perf_counter()
    r = await http.post("/api/kernels", json={"name": SPEC, "env": env})
    r.raise_for_status()
    kernel = r.json()
    await kernel_info(url, kernel["id"])
    seconds = time.perf_counter() - started
    row = next(
        k for k in (await http.get("/api/status")).json()["kernels"] if k["id"] == kernel["id"]
    )
    await http.delete(f"/api/kernels/{kernel['id']}")
    return seconds, bool(row.get("warm"))


async def bench(cold: Gateway, warm: Gateway, rounds: int, pool: int) -> dict[str, list[float]]:
    workdir = tempfile.mkdtemp(prefix="raygate-bench-cwd-")
    out: dict[str, list[float]] = {"cold": [], "warm": []}
    async with (
        httpx.AsyncClient(base_url=cold.url, timeout=120) as cold_http,
        httpx.AsyncClient(base_url=warm.url, timeout=120) as warm_http,
    ):
        for _ in range(rounds):
            await wait_pool_full(warm_http, pool)
            seconds, served_warm = await one_start(warm_http, warm.url, workdir)
            if not served_warm:
                raise SystemExit("a start on the --prewarm gateway was not served warm")
            out["warm"].append(seconds)
            await wait_pool_full(warm_http, pool)  # neither start shares the CPU with a refill
            seconds, _ = await one_start(cold_http, cold.url, workdir)
            out["cold"].append(seconds)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pool", type=int, default=2, help="warm kernels (--prewarm bench=N)")
    parser.add_argument("--launcher", choices=["local", "ray"], default="local")
    args = parser.parse_args()

    specs = tempfile.mkdtemp(prefix="raygate-bench-specs-")
    write_spec(specs, args.launcher)
    common = ["--default-launcher", args.launcher]
    if args.launcher == "ray":
        common += ["--ray-num-cpus", "8"]  # each gateway starts a Ray of its own
    cold = Gateway(specs, common)
    warm = Gateway(specs, [*common, "--prewarm", f"{SPEC}={args.pool}"])
    try:
        cold.wait_ready()
        warm.wait_ready()
        results = asyncio.run(bench(cold, warm, args.rounds, args.pool))
    finally:
        cold.stop()
        warm.stop()

    print(
        f"\n{args.rounds} starts per gateway, {args.launcher} launcher, one at a time; "
        f"{os.cpu_count()} cores\n"
    )
    print("| gateway | POST → kernel_info_reply: p50 | p95 | min | max |")
    print("|---|---|---|---|---|")
    for key, label in (("cold", "no pool"), ("warm", f"--prewarm {SPEC}={args.pool}")):
        row = results[key]
        print(
            f"| {label} | {statistics.median(row) * 1000:.0f} ms | {p95(row) * 1000:.0f} ms "
            f"| {min(row) * 1000:.0f} ms | {max(row) * 1000:.0f} ms |"
        )
    speedup = statistics.median(results["cold"]) / statistics.median(results["warm"])
    print(f"\nmedian speed-up with the pool: {speedup:.1f}x")


if __name__ == "__main__":
    main()
