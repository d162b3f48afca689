"""``/metrics`` and structured logs, against real ``raygate serve`` processes."""

from __future__ import annotations

import json
import time

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families

from conftest import TOKEN
from kgclient import Gateway, KernelWS


def scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    response = gateway.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_kernels_and_traffic(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/metrics").status_code == 401  # the token, like the API

    before = scrape(gateway)
    assert value(before, "process_resident_memory_bytes") > 10e6  # the gateway's own
    kernel = gateway.start_kernel(env={"KERNEL_USERNAME": "grace", "KERNEL_GPUS": "1"})
    assert gateway.post("/api/kernels", json={"name": "no-such-spec"}).status_code == 404
    assert gateway.post("/api/kernels", json={"env": {"KERNEL_CPUS": "lots"}}).status_code == 400

    after_start = scrape(gateway)
    assert value(after_start, "raygate_kernels", state="idle", launcher="local", user="grace") == 1
    started = "raygate_kernel_start_seconds_count"
    labels = {"launcher": "local", "kernelspec": "python3"}
    assert value(after_start, started, **labels) == value(before, started, **labels) + 1
    gpus = "raygate_gpus_held"
    assert value(after_start, gpus, launcher="local") == value(before, gpus, launcher="local") + 1
    failures = "raygate_kernel_start_failures_total"
    for code, reason in (("404", "unknown_kernelspec"), ("400", "bad_request")):
        assert value(after_start, failures, code=code, reason=reason) == (
            value(before, failures, code=code, reason=reason) + 1
        )

    ws = await gateway.connect(kernel["id"])
    try:
        result = await ws.execute("print('x' * 20000)")
        assert result.stdout.strip() == "x" * 20000
        during = scrape(gateway)
        connections = "raygate_websocket_connections"
        assert value(during, connections) == value(before, connections) + 1
    finally:
        await ws.close()
    opened = "raygate_websocket_connections_opened_total"
    assert value(during, opened) == value(before, opened) + 1
    iopub_out = {"direction": "from_kernel", "channel": "iopub"}
    shell_in = {"direction": "to_kernel", "channel": "shell"}
    bytes_total = "raygate_bridge_bytes_total"
    assert (
        value(during, bytes_total, **iopub_out) >= value(before, bytes_total, **iopub_out) + 20000
    )
    messages = "raygate_bridge_messages_total"
    assert value(during, messages, **shell_in) >= value(before, messages, **shell_in) + 1

    gateway.shutdown_kernel(kernel["id"])
    gone = scrape(gateway)
    assert value(gone, "raygate_kernels", state="idle", launcher="local", user="grace") == 0
    # The kernel's traffic stays counted after it is gone: counters never go down.
    assert value(gone, bytes_total, **iopub_out) >= value(during, bytes_total, **iopub_out)
    assert value(gone, opened) >= value(during, opened)


async def test_public_metrics_and_json_logs(start_server) -> None:
    server = start_server("--default-launcher", "local", "--metrics-public", "--log-format", "json")
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert httpx.get(server.url + "/api/kernels").status_code == 401  # only /metrics opens

    kernel = server.client.start_kernel(env={"KERNEL_USERNAME": "ada"})
    # A client that authenticates its WebSocket with ?token= (the token must not be logged).
    url = server.url.replace("http", "ws", 1) + f"/api/kernels/{kernel['id']}/channels"
    ws = KernelWS(await websockets.connect(f"{url}?token={TOKEN}"), False, "s1")
    try:
        assert (await ws.execute("1 + 1")).result == "2"
    finally:
        await ws.close()
    server.client.shutdown_kernel(kernel["id"])

    deadline = time.monotonic() + 10
    while "shut down" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    output = server.output()
    assert TOKEN not in output
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    for record in records:
        assert {"time", "level", "logger", "message", "kernel_id"} <= set(record)
    about_kernel = [r for r in records if kernel["id"] in r["message"]]
    assert len(about_kernel) >= 3  # started, the WebSocket, shut down
    assert all(r["kernel_id"] == kernel["id"] for r in about_kernel)
    assert not any(r["kernel_id"] for r in records if "Application startup" in r["message"])


def test_ray_capacity_and_gpus_held(ray_cluster, start_server) -> None:
    from ray_cluster import GPU_NODE_GPUS

    server = start_server(
        "--ray-address", ray_cluster.address, "--ray-namespace", "rg-ops", env=ray_cluster.env()
    )
    # GPU kernels of earlier tests on the shared cluster give their GPUs back within moments.
    deadline = time.monotonic() + 30
    while True:
        ray = server.client.get("/api/status").json()["capacity"]["ray"]
        if ray["total"]["gpus"]["available"] == GPU_NODE_GPUS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(ray["nodes"]) == 2
    assert ray["total"]["gpus"] == {"total": GPU_NODE_GPUS, "available": GPU_NODE_GPUS}
    assert all(node["cpus"]["total"] > 0 and node["memory"]["total"] > 0 for node in ray["nodes"])

    kernel = server.client.start_kernel(env={"KERNEL_GPUS": "1", "KERNEL_USERNAME": "ada"})
    try:
        samples = scrape(server.client)
        assert value(samples, "raygate_gpus_held", launcher="ray") == 1
        assert value(samples, "raygate_kernels", state="idle", launcher="ray", user="ada") == 1
        status = server.client.get("/api/status").json()
        (row,) = status["kernels"]
        gpu_node = next(n for n in status["capacity"]["ray"]["nodes"] if n["gpus"]["total"])
        assert row["gpus"] == 1 and row["host"] == gpu_node["ip"] == kernel["placement"]["node_ip"]
        # Ray's free-resource view follows within a moment.
        deadline = time.monotonic() + 20
        while status["capacity"]["ray"]["total"]["gpus"]["available"] != GPU_NODE_GPUS - 1:
            assert time.monotonic() < deadline, status["capacity"]
            time.sleep(0.5)
            status = server.client.get("/api/status").json()
    finally:
        server.client.shutdown_kernel(kernel["id"])
