"""A whole benchmark run: every measurement on one or more servers, as one JSON-ready dict."""

from __future__ import annotations

import os
import platform
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

from raygate import __version__

from .client import FRAMINGS, BenchError, GatewayClient
from .measure import (
    Channel,
    NoProgress,
    Progress,
    Target,
    WebSocketChannel,
    bounded,
    measure_concurrent,
    measure_flood,
    measure_interrupts,
    measure_output,
    measure_restarts,
    measure_round_trips,
    measure_starts,
)
from .report import add_ratios
from .usage import UsageProbe, usage_probe
from .zmq_baseline import ZmqChannel, local_kernel


@dataclass
class BenchOptions:
    """What to measure and how much; a count of 0 skips that measurement."""

    kernelspec: str = "python3"
    starts: int = 10
    """Sequential kernel starts (start to ready, p50/p95)."""
    concurrent: int = 5
    """Kernels started at once."""
    rounds: int = 200
    """Execute round trips."""
    block: int = 20
    """Round trips per turn when servers take turns."""
    output_mb: float = 20.0
    """MB (10^6 bytes) the output cell prints."""
    output_rounds: int = 3
    chunk_kb: int = 64
    """The output cell prints in flushed pieces of this many KiB (0: one print)."""
    flood_lines: int = 20000
    """Lines the flood cell prints, one flushed print() each (many small messages)."""
    flood_rounds: int = 2
    interrupts: int = 3
    restarts: int = 3
    framing: str = "legacy"
    """WebSocket framing: ``legacy`` (JSON, as KG/EG and jupyter_server speak) or ``v1``."""
    zmq_baseline: bool = False
    """Also measure round trips and output straight over ZMQ, on a kernel of the same
    kernelspec started here with jupyter_client."""
    timeout: float = 120.0
    """Seconds any one step may take."""


@dataclass
class Server:
    """A server to measure."""

    url: str
    token: str = ""
    pid: int | None = None
    """The gateway's process id, when it runs on this machine (for its CPU and memory)."""
    kernelspec: str = ""
    """Kernelspec on this server (default: the options' kernelspec)."""


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


async def run_servers(
    servers: list[Server], options: BenchOptions, progress: Progress | None = None
) -> dict[str, Any]:
    """Measure every server (taking turns where it matters); see the package docstring."""
    if not servers:
        raise ValueError("no server to measure")
    if options.framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}")
    progress = progress or NoProgress()
    began = time.time()
    async with AsyncExitStack() as stack:
        targets: list[Target] = []
        about: list[dict[str, Any]] = []
        for i, server in enumerate(servers):
            client = GatewayClient(server.url, server.token, options.framing, options.timeout)
            stack.push_async_callback(client.close)
            label = "first" if i == 0 else "second" if i == 1 else f"server {i + 1}"
            target = Target(label, client, server.kernelspec or options.kernelspec)
            about.append(await client.describe(target.kernelspec))
            target.probe = await usage_probe(client, server.pid)
            targets.append(target)
        results: list[dict[str, Any]] = [
            {
                "label": target.label,
                "url": target.client.url,
                "about": info,
                "kernelspec": target.kernelspec,
                "gateway_usage_source": target.probe.source,
                "gateway_rss_idle_bytes": await target.probe.rss_bytes(),
            }
            for target, info in zip(targets, about)
        ]

        async def phase(name: str, run: Any) -> None:
            """Run one measurement; note each gateway's CPU seconds during it."""
            before = [await t.probe.cpu_seconds() for t in targets]
            measured = await run
            for target, result, row, cpu in zip(targets, results, measured, before):
                after = await target.probe.cpu_seconds()
                row["gateway_cpu_s_total"] = None if cpu is None or after is None else after - cpu
                result[name] = row

        if options.starts:
            await phase("start", measure_starts(targets, options.starts, progress))
        if options.concurrent:
            await phase("concurrent", measure_concurrent(targets, options.concurrent, progress))

        zmq_result: dict[str, Any] | None = None
        floods = options.flood_rounds and options.flood_lines > 0
        needs_kernel = options.rounds or options.output_rounds or floods or options.interrupts
        if needs_kernel or options.restarts:
            progress.phase("starting a kernel per server for the next measurements", 1)
            kernel_ids = []
            for target in targets:
                kernel_id = await target.client.start_kernel(target.kernelspec)
                stack.push_async_callback(target.client.delete_kernel, kernel_id)
                kernel_ids.append(kernel_id)
            for target, kernel_id, result in zip(targets, kernel_ids, results):
                socket = await target.client.connect(kernel_id)  # the framing agreed on
                result["framing"] = socket.framing
                await socket.close()
            channels: list[Channel] = [WebSocketChannel(t, k) for t, k in zip(targets, kernel_ids)]
            probes: list[UsageProbe | None] = [
                t.probe if t.probe.available else None for t in targets
            ]
            if options.zmq_baseline and (options.rounds or options.output_rounds or floods):
                connection_file = await bounded(
                    stack.enter_async_context(local_kernel(options.kernelspec)),
                    options.timeout,
                    "--zmq-baseline: starting a local kernel",
                )
                channels.append(ZmqChannel(connection_file))
                probes.append(None)
                zmq_result = {"kernelspec": options.kernelspec, "client": "jupyter_client"}
            progress.advance()
            if options.rounds:
                rtts = await measure_round_trips(
                    channels, options.rounds, options.block, options.timeout, progress, probes
                )
                for result, rtt in zip(results, rtts):
                    result["round_trip"] = rtt
                if zmq_result is not None:
                    zmq_result["round_trip"] = rtts[-1]
            if options.output_rounds and options.output_mb > 0:
                outputs = await measure_output(
                    channels,
                    options.output_mb,
                    options.output_rounds,
                    options.chunk_kb,
                    options.timeout,
                    progress,
                    probes,
                )
                for result, output in zip(results, outputs):
                    result["output"] = output
                if zmq_result is not None:
                    zmq_result["output"] = outputs[-1]
            if floods:
                flooded = await measure_flood(
                    channels,
                    options.flood_lines,
                    options.flood_rounds,
                    options.timeout,
                    progress,
                    probes,
                )
                for result, flood in zip(results, flooded):
                    result["flood"] = flood
                if zmq_result is not None:
                    zmq_result["flood"] = flooded[-1]
            if options.interrupts:
                await phase(
                    "interrupt",
                    measure_interrupts(targets, kernel_ids, options.interrupts, progress),
                )
            if options.restarts:
                await phase(
                    "restart", measure_restarts(targets, kernel_ids, options.restarts, progress)
                )
        progress.phase("deleting kernels", 1)
    progress.advance()
    document = {
        "tool": f"raygate bench {__version__}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)),
        "seconds": time.time() - began,
        "machine": machine(),
        "options": asdict(options),
        "servers": results,
        "zmq_baseline": zmq_result,
    }
    add_ratios(document)
    return document


async def run_bench(
    url: str,
    token: str = "",
    options: BenchOptions | None = None,
    *,
    server_pid: int | None = None,
    compare: Server | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure the server at ``url`` (and ``compare``, taking turns with it)."""
    servers = [Server(url, token, server_pid)]
    if compare is not None:
        servers.append(compare)
    return await run_servers(servers, options or BenchOptions(), progress)


async def run_zmq_baseline(
    options: BenchOptions | None = None,
    progress: Progress | None = None,
    connection_file: str = "",
) -> dict[str, Any]:
    """Round trips and output straight over ZMQ only: on the kernel of ``connection_file``,
    or on a kernel of ``options.kernelspec`` started here with jupyter_client."""
    options = options or BenchOptions()
    progress = progress or NoProgress()
    async with AsyncExitStack() as stack:
        if not connection_file:
            connection_file = await stack.enter_async_context(local_kernel(options.kernelspec))
        channel = ZmqChannel(connection_file)
        result: dict[str, Any] = {"kernelspec": options.kernelspec, "client": "jupyter_client"}
        if options.rounds:
            (result["round_trip"],) = await measure_round_trips(
                [channel], options.rounds, options.block, options.timeout, progress
            )
        if options.output_rounds and options.output_mb > 0:
            (result["output"],) = await measure_output(
                [channel],
                options.output_mb,
                options.output_rounds,
                options.chunk_kb,
                options.timeout,
                progress,
            )
        if options.flood_rounds and options.flood_lines > 0:
            (result["flood"],) = await measure_flood(
                [channel], options.flood_lines, options.flood_rounds, options.timeout, progress
            )
    return result


__all__ = ["BenchError", "BenchOptions", "Server", "run_bench", "run_servers", "run_zmq_baseline"]
