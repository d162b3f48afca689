"""notebook-http on the Ray test cluster: the endpoint kernels are Ray kernel actors, placed
by their kernelspec's resources (here spread over the cluster's two nodes), and the
gateway shuts them down when it stops."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from conftest import TOKEN, ServerProcess
from kernelspecs import ipykernel_argv, write_kernelspec
from nbhttp import write_notebook

AUTH = {"Authorization": f"token {TOKEN}"}
NAMESPACE = "rg-nbhttp"


def test_endpoint_kernels_spread_over_the_cluster(ray_cluster, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    resources = {"cpus": 1, "scheduling_strategy": "spread"}
    write_kernelspec(
        str(specs), "nb-spread", ipykernel_argv(), metadata={"raygate": {"resources": resources}}
    )
    seed = write_notebook(
        tmp_path / "where.ipynb",
        [
            "import os, time",
            "# GET /where\ntime.sleep(0.3)\nprint(os.getpid())",
        ],
        kernel="nb-spread",
    )
    server = ServerProcess(
        [
            "--api",
            "notebook-http",
            "--seed-uri",
            seed,
            "--prespawn-count",
            "2",
            "--ray-address",
            ray_cluster.address,
            "--ray-namespace",
            NAMESPACE,
            "--kernelspec-dirs",
            str(specs),
        ],
        env=ray_cluster.env(),
    )
    try:
        server.wait_ready(180)
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
            status = http.get("/api/status").json()
            endpoint_ids = {k["id"] for k in status["notebook_http"]["kernels"]}
            placed = {k["id"]: k["placement"] for k in status["kernels"] if k["id"] in endpoint_ids}
            assert {k["launcher"] for k in status["kernels"] if k["id"] in endpoint_ids} == {"ray"}
            nodes = {p["node_id"] for p in placed.values()}
            assert nodes == {ray_cluster.head_node_id, ray_cluster.gpu_node_id}, placed

            async def both() -> set[str]:
                async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c:
                    answers = await asyncio.gather(c.get("/where"), c.get("/where"))
                assert [a.status_code for a in answers] == [200, 200]
                return {a.text for a in answers}

            assert len(asyncio.run(both())) == 2  # at once: one on each kernel, so each node
        assert len(ray_cluster.actors(NAMESPACE)) == 2
    finally:
        server.stop()
    deadline = time.monotonic() + 30  # shut down with the gateway, though Ray kernels outlive it
    while ray_cluster.actors(NAMESPACE) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_cluster.actors(NAMESPACE)
