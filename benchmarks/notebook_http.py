#!/usr/bin/env python
"""notebook-http throughput: raygate beside Jupyter Kernel Gateway, 1 and 4 kernels.

    python benchmarks/notebook_http.py [--seconds 10] [--kernels 1,4] [--launcher local]

Writes a notebook whose endpoint ``GET /work`` sleeps 0.1 s in its cell, then for each
number of kernels N serves it with ``raygate serve --api notebook-http --prespawn-count N``
and with Kernel Gateway (``--KernelGatewayApp.api=kernel_gateway.notebook_http``, the same
``prespawn_count``; its virtualenv made as benchmarks/compare.py makes it, under
``.bench-venvs/``), one server at a time, and drives each with 2N clients that send
requests back to back for ``--seconds``: requests/s, and latency p50/p95 (ms). Prints a
Markdown table (the figures in docs/notebook-http.md come from it). Exits 1 when raygate
with 4 kernels serves less than 3x what it serves with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # this directory's: Kernel Gateway's virtualenv, servers, stopping them

CELL_SECONDS = 0.1
SCALE_GOAL = 3.0
"""raygate with 4 kernels serves at least this many times what it serves with 1."""
WORK = [
    "import time",
    f"# GET /work\ntime.sleep({CELL_SECONDS})\nprint('done')",
]


def write_seed(path: Path) -> str:
    """The benchmark's notebook (nbformat 4, one seed cell, one endpoint)."""
    import json

    cells = [
        {"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for s in WORK
    ]
    metadata = {"kernelspec": {"name": compare.KERNELSPEC, "display_name": "Python 3"}}
    path.write_text(
        json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": metadata, "cells": cells})
    )
    return str(path)


def kg_notebook_server(
    seed: str, kernels: int, run_id: str, scratch: Path, name: str
) -> compare.Running:
    """Kernel Gateway serving ``seed`` in notebook-http mode with ``kernels`` kernels (not
    started yet: call ``start()``). Also used by tests/test_notebook_http_kg.py."""
    kind = compare.Kind(name, "Kernel Gateway", venv=compare.KG)
    server = compare.make_server(kind, run_id, scratch)
    app = compare.KG.app
    server.argv += [
        f"--{app}.api=kernel_gateway.notebook_http",
        f"--{app}.seed_uri={seed}",
        f"--{app}.prespawn_count={kernels}",
    ]
    return server


def raygate_notebook_server(
    seed: str, kernels: int, launcher: str, run_id: str, scratch: Path, name: str
) -> compare.Running:
    args = ("--api", "notebook-http", "--seed-uri", seed, "--prespawn-count", str(kernels))
    args += ("--default-launcher", launcher)
    return compare.make_server(compare.Kind(name, "raygate", raygate_args=args), run_id, scratch)


def wait_serving(server: compare.Running, timeout: float = 300) -> None:
    """Until the server answers its swagger document (raygate: once its kernels are seeded;
    Kernel Gateway answers before, and holds requests until its pool is up)."""
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise compare.ServerFailed(f"{server.kind.title} exited:\n{server.log_tail()}")
        try:
            url = server.url + "/_api/spec/swagger.json"
            if compare.POLL.get(url, headers=compare.headers(server), timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise compare.ServerFailed(
        f"{server.kind.title} did not serve in {timeout:g} s:\n{server.log_tail()}"
    )


@dataclass
class Load:
    requests: int
    failed: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(server: compare.Running, clients: int, seconds: float) -> Load:
    """``clients`` loops of back-to-back GET /work for ``seconds`` (after a warm-up)."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=server.url, headers=compare.headers(server), timeout=60, limits=limits
    ) as http:
        await asyncio.gather(*(http.get("/work") for _ in range(clients)))  # warm-up
        latencies: list[float] = []
        failed = 0
        started = time.monotonic()
        deadline = started + seconds

        async def client() -> None:
            nonlocal failed
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    r = await http.get("/work")
                except httpx.HTTPError as exc:
                    print(
                        f"  {server.kind.key}: {type(exc).__name__} after {time.monotonic() - t0:.1f} s"
                    )
                    failed += 1
                    continue
                if r.status_code == 200 and r.text == "done\n":
                    latencies.append(time.monotonic() - t0)
                else:
                    print(f"  {server.kind.key}: {r.status_code} {r.text[:100]!r}")
                    failed += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        return Load(len(latencies), failed, time.monotonic() - started, latencies)


def measure(server: compare.Running, kernels: int, seconds: float) -> Load:
    server.start()
    try:
        wait_serving(server)
        return asyncio.run(drive(server, 2 * kernels, seconds))
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load per server")
    parser.add_argument("--kernels", default="1,4", help="kernel counts, comma-separated")
    parser.add_argument("--launcher", default="local", help="raygate's --default-launcher")
    parser.add_argument("--no-kg", action="store_true", help="raygate only")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.kernels.split(",")]
    run_id = uuid.uuid4().hex
    results: dict[tuple[str, int], Load] = {}
    with tempfile.TemporaryDirectory(prefix="raygate-nbhttp-bench-") as tmp:
        scratch = Path(tmp)
        seed = write_seed(scratch / "work.ipynb")
        if not args.no_kg:
            compare.ensure_venv(compare.KG, scratch)
        servers: list[compare.Running] = []
        try:
            for n in counts:
                plan = [
                    (
                        "raygate",
                        raygate_notebook_server(
                            seed, n, args.launcher, run_id, scratch, f"raygate-{n}"
                        ),
                    )
                ]
                if not args.no_kg:
                    plan.append(("kg", kg_notebook_server(seed, n, run_id, scratch, f"kg-{n}")))
                for key, server in plan:
                    servers.append(server)
                    print(f"{key} with {n} kernel(s)...", flush=True)
                    results[(key, n)] = measure(server, n, args.seconds)
        finally:
            left = compare.stop_everything(servers, run_id)
    print()
    print(
        f"`GET /work` (the cell sleeps {CELL_SECONDS:g} s), 2N clients back to back, {args.seconds:g} s each:"
    )
    print()
    print("| server | kernels | requests/s | p50 ms | p95 ms | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    for (key, n), load in results.items():
        title = f"raygate ({args.launcher})" if key == "raygate" else "Kernel Gateway 3.0.1"
        print(
            f"| {title} | {n} | {load.per_second:.1f} | {load.ms(0.5):.0f} | {load.ms(0.95):.0f} "
            f"| {load.failed} |"
        )
    status = 0
    if ("raygate", 1) in results and ("raygate", 4) in results:
        scale = results[("raygate", 4)].per_second / results[("raygate", 1)].per_second
        ok = scale >= SCALE_GOAL
        print(
            f"\nraygate, 4 kernels / 1 kernel: {scale:.2f}x (goal: at least {SCALE_GOAL:g}x) {'met' if ok else 'MISSED'}"
        )
        status = 0 if ok else 1
    if left["left_over"]:
        print(f"left running: {left['left_over']}")
        status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
