#!/usr/bin/env python
"""Bursts: N kernels asked for at once, on a two-node Ray cluster and as local processes.

Starts the tests' two-node Ray cluster (``tests/ray_cluster.py``: a head node with 4 CPUs
and a node with 2 CPUs and 2 logical GPUs, token auth on) and two ``raygate serve``
processes on loopback: one joined to that cluster (the Ray launcher) and one with the local
launcher, the same ipykernel kernelspec for both. For each burst size it sends N
``POST /api/kernels`` at once to one gateway and waits for each kernel's first
``kernel_info_reply`` on a fresh WebSocket (start to ready, as a notebook server sees it),
then shuts them all down and does the same on the other gateway.

Per Ray kernel it also reports where the time went, from the processes themselves: when
its actor's worker process was created (before the burst: a worker Ray had started ahead
of demand; after it: one started for this kernel), when the kernel process was created,
and when the POST was answered. Each kernel asks for ``--kernel-cpus`` CPUs so that a
burst of 8 fits the cluster's 6 CPUs.

    python benchmarks/burst.py [--sizes 1,8,32] [--rounds 2] [--kernel-cpus 0.1]
                               [--ray-args "--prewarm python3=2 --prewarm-max 8"]
                               [--without rfc3987_syntax] [--json out.json]

Prints a Markdown table per burst size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from ray_start import free_port, kernel_info

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from ray_cluster import RayTestCluster  # noqa: E402


def write_spec(root: str, name: str, launcher: str, cpus: float) -> None:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    metadata: dict[str, Any] = {"launcher": launcher}
    if launcher == "ray":
        metadata["resources"] = {"cpus": cpus}
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": "python",
        "metadata": {"raygate": metadata},
    }
    with open(os.path.join(root, name, "kernel.json"), "w") as f:
        json.dump(spec, f)


def pss(pid: int | None) -> float | None:
    """A process's proportional set size in MiB (its share of pages it shares)."""
    try:
        return psutil.Process(pid).memory_full_info().pss / 2**20 if pid else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def created(pid: int | None) -> float | None:
    """A process's creation time (wall clock, as time.time()), None when gone."""
    try:
        return psutil.Process(pid).create_time() if pid else None
    except psutil.NoSuchProcess:
        return None


async def one_start(
    http: httpx.AsyncClient, url: str, spec: str, t0: float, timeout: float
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    try:
        r = await http.post("/api/kernels", json={"name": spec}, timeout=timeout)
        row["posted"] = time.time() - t0
        row["status"] = r.status_code
        if r.status_code != 201:
            row["message"] = r.json().get("message", r.text)
            return row
        kernel = r.json()
        row["id"] = kernel["id"]
        await kernel_info(url, kernel["id"])
        row["ready"] = time.time() - t0
        placement = kernel.get("placement") or {}
        row["pids"] = {"kernel": placement.get("pid"), "worker": placement.get("actor_pid")}
        for key, pid_key in (("worker_created", "actor_pid"), ("kernel_created", "pid")):
            when = created(placement.get(pid_key))
            row[key] = None if when is None else when - t0
    except Exception as exc:
        row["error"] = repr(exc)
    return row


async def burst(url: str, spec: str, size: int, timeout: float) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
        t0 = time.time()
        rows = await asyncio.gather(*(one_start(http, url, spec, t0, timeout) for _ in range(size)))
        wall = time.time() - t0
        await asyncio.sleep(2)  # idle
        for row in rows:
            pids = row.get("pids") or {}
            row["pss"] = {part: pss(pid) for part, pid in pids.items() if pid}
        for row in rows:
            if "id" in row:
                await http.delete(f"/api/kernels/{row['id']}")
    ready = [r["ready"] for r in rows if "ready" in r]
    kernels = [r["pss"]["kernel"] for r in rows if (r.get("pss") or {}).get("kernel")]
    workers = [r["pss"]["worker"] for r in rows if (r.get("pss") or {}).get("worker")]
    return {
        "kernel_pss": statistics.median(kernels) if kernels else None,
        "worker_pss": statistics.median(workers) if workers else None,
        "size": size,
        "all_ready": max(ready) if len(ready) == size else None,
        "wall": wall,
        "ready_p50": statistics.median(ready) if ready else None,
        "failures": size - len(ready),
        "statuses": sorted({r.get("status", 0) for r in rows}),
        "prestarted_workers": sum(1 for r in rows if (r.get("worker_created") or 1) < 0),
        "rows": rows,
    }


def mib(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs if r.get(key)]
    return f"{statistics.median(values):.0f} MiB" if values else "-"


def wait_up(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    poll = httpx.Client()  # one: each new client reads the CA bundle (45 ms of CPU here)
    while time.monotonic() < deadline:
        try:
            if poll.get(url + "/api", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


async def wait_pool(url: str, size: int, timeout: float = 300) -> None:
    """Until a gateway's warm pool (if any) holds ``size`` ready kernels."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url) as http:
        while time.monotonic() < deadline:
            shelves = (await http.get("/api/status")).json().get("pool") or {}
            if not shelves or sum(s["ready"] for s in shelves.values()) >= size:
                return
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,8", help="burst sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="bursts per size and gateway")
    parser.add_argument("--kernel-cpus", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--settle", type=float, default=8, help="idle seconds between bursts")
    parser.add_argument("--ray-args", default="", help="more options for the Ray gateway")
    parser.add_argument("--pool", type=int, default=0, help="wait for this many warm kernels")
    parser.add_argument(
        "--without",
        default="",
        help="modules the Ray nodes' Python cannot import (e.g. rfc3987_syntax: what a node "
        "environment without it would save), comma-separated",
    )
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    cluster = RayTestCluster(without=[m for m in args.without.split(",") if m])
    cluster.start()
    specs = tempfile.mkdtemp(prefix="raygate-burst-specs-")
    write_spec(specs, "python3", "ray", args.kernel_cpus)
    local_specs = tempfile.mkdtemp(prefix="raygate-burst-local-")
    write_spec(local_specs, "python3", "local", args.kernel_cpus)
    gateways: dict[str, tuple[str, subprocess.Popen]] = {}
    common = ["--log-level", "warning", "--kernel-launch-timeout", str(int(args.timeout))]
    try:
        for name, extra, env in (
            (
                "ray",
                [
                    "--ray-address",
                    cluster.address,
                    "--ray-namespace",
                    f"burst-{secrets.token_hex(3)}",
                    "--kernelspec-dirs",
                    specs,
                    *shlex.split(args.ray_args),
                ],
                cluster.env(),
            ),
            ("local", ["--default-launcher", "local", "--kernelspec-dirs", local_specs], {}),
        ):
            port = free_port()
            cmd = [sys.executable, "-m", "raygate", "serve", "--port", str(port), *common, *extra]
            proc = subprocess.Popen(cmd, env={**os.environ, **env})
            gateways[name] = (f"http://127.0.0.1:{port}", proc)
        for url, _ in gateways.values():
            wait_up(url)
        results: dict[str, list[dict[str, Any]]] = {"ray": [], "local": []}

        async def run_all() -> None:
            for size in sizes:
                for _ in range(args.rounds):
                    for name, (url, _) in gateways.items():
                        if args.pool and name == "ray":
                            await wait_pool(url, args.pool)
                        await asyncio.sleep(args.settle)
                        results[name].append(await burst(url, "python3", size, args.timeout))

        asyncio.run(run_all())
    finally:
        for _, proc in gateways.values():
            proc.terminate()
        for _, proc in gateways.values():
            proc.wait(60)
        cluster.stop()

    load = os.getloadavg()
    print(
        f"\n{os.cpu_count()} cores, load {load[0]:.2f}; Ray options: {args.ray_args or '-'}; "
        f"left out of the Ray nodes: {args.without or '-'}\n"
    )
    print(
        "| burst | gateway | all ready (median) | ready p50 | failures | prestarted workers "
        "| PSS: kernel | PSS: actor's worker |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        for name in ("local", "ray"):
            runs = [r for r in results[name] if r["size"] == size]
            alls = [r["all_ready"] for r in runs if r["all_ready"] is not None]
            p50s = [r["ready_p50"] for r in runs if r["ready_p50"] is not None]
            print(
                f"| {size} | {name} | {statistics.median(alls) if alls else float('nan'):.2f} s "
                f"| {statistics.median(p50s) if p50s else float('nan'):.2f} s "
                f"| {sum(r['failures'] for r in runs)} of {size * len(runs)} "
                f"| {sum(r['prestarted_workers'] for r in runs)} "
                f"| {mib(runs, 'kernel_pss')} | {mib(runs, 'worker_pss')} |"
            )
    print("\nRay kernels, per start (seconds after the burst began, last round of each size):")
    print("| burst | worker created | kernel created | POST answered | ready |")
    print("|---|---|---|---|---|")
    for size in sizes:
        runs = [r for r in results["ray"] if r["size"] == size]
        if not runs:
            continue
        for row in sorted(runs[-1]["rows"], key=lambda r: r.get("ready") or 1e9):

            def f(key: str, row: dict[str, Any] = row) -> str:
                v = row.get(key)
                return "-" if v is None else f"{v:.2f}"

            extra = row.get("message") or row.get("error") or ""
            print(
                f"| {size} | {f('worker_created')} | {f('kernel_created')} | {f('posted')} "
                f"| {f('ready')} {extra[:80]} |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
