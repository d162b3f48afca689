"""One function per measurement, each over one or more servers, returning plain dicts.

Where several servers (or a ZMQ baseline) are measured, they take turns: sequential starts
alternate, round trips go in blocks whose order cycles through every permutation, and so
do output rounds and interrupts. Machine noise then hits every server alike.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .cells import SLEEP, TRIVIAL, flood_cell, flood_text, make_text, print_cell, setup_cell
from .client import BenchError, GatewayClient, KernelSocket, Outcome
from .usage import UsageProbe

T = TypeVar("T")


class Progress(Protocol):
    """Where measurements report how far they got (a rich progress bar in the CLI)."""

    def phase(self, description: str, total: int) -> None: ...

    def advance(self, steps: int = 1) -> None: ...


class NoProgress:
    def phase(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass


class Channel(Protocol):
    """A way to run cells on one kernel: through a gateway's WebSocket, or straight ZMQ."""

    label: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def execute(self, code: str) -> Outcome: ...


@dataclass
class Target:
    """One server under test."""

    label: str
    client: GatewayClient
    kernelspec: str
    probe: UsageProbe = field(default_factory=UsageProbe)


class WebSocketChannel:
    """A gateway's channels WebSocket to one kernel, opened fresh for each turn."""

    def __init__(self, target: Target, kernel_id: str) -> None:
        self.label = target.label
        self.target = target
        self.kernel_id = kernel_id
        self.socket: KernelSocket | None = None

    async def open(self) -> None:
        self.socket = await self.target.client.connect(self.kernel_id)
        await bounded(self.socket.kernel_info(), self.target.client.timeout, "kernel_info")

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
            self.socket = None

    async def execute(self, code: str) -> Outcome:
        assert self.socket is not None
        return await self.socket.execute(code)


async def bounded(aw: Awaitable[T], seconds: float, what: str) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await aw
    except TimeoutError:
        raise BenchError(f"{what}: no answer within {seconds:g} s") from None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def orders(count: int, size: int) -> list[tuple[int, ...]]:
    """``count`` orders of ``size`` participants, cycling through every permutation."""
    cycle = itertools.cycle(itertools.permutations(range(size)))
    return [next(cycle) for _ in range(count)]


def spread(samples: list[float], unit: str, scale: float = 1.0) -> dict[str, Any]:
    """p50, p95, p99, mean, min, max of ``samples`` (scaled to ``unit``), and the samples."""
    if not samples:
        return {"n": 0}
    values = [s * scale for s in samples]
    return {
        "n": len(values),
        f"p50_{unit}": percentile(values, 50),
        f"p95_{unit}": percentile(values, 95),
        f"p99_{unit}": percentile(values, 99),
        f"mean_{unit}": statistics.fmean(values),
        f"min_{unit}": min(values),
        f"max_{unit}": max(values),
        f"samples_{unit}": values,
    }


def _error(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# -- kernel starts -----------------------------------------------------------------------


async def _answers_kernel_info(client: GatewayClient, kernel_id: str) -> None:
    """Returns once the kernel answers kernel_info on a fresh channels WebSocket."""
    socket = await client.connect(kernel_id)
    try:
        await socket.kernel_info()
    finally:
        await socket.close()


async def ready_kernel(target: Target, kernel_ids: list[str]) -> float:
    """Seconds from ``POST /api/kernels`` until a kernel_info_reply arrives on the kernel's
    channels WebSocket (servers differ in when the POST returns; this does not). The new
    kernel's id is added to ``kernel_ids`` as soon as the server gives it."""
    client = target.client
    started = time.perf_counter()
    try:
        async with asyncio.timeout(client.timeout):
            kernel_id = await client.start_kernel(target.kernelspec)
            kernel_ids.append(kernel_id)
            await _answers_kernel_info(client, kernel_id)
    except TimeoutError:
        raise BenchError(f"kernel not ready within {client.timeout:g} s") from None
    return time.perf_counter() - started


async def start_to_ready(target: Target) -> float:
    """:func:`ready_kernel`, then the kernel is deleted (not timed)."""
    kernel_ids: list[str] = []
    try:
        return await ready_kernel(target, kernel_ids)
    finally:
        for kernel_id in kernel_ids:
            await target.client.delete_kernel(kernel_id)


async def _counted(aw: Awaitable[T], progress: Progress) -> T:
    try:
        return await aw
    finally:
        progress.advance()


async def measure_starts(targets: list[Target], count: int, progress: Progress) -> list[dict]:
    """``count`` sequential starts per server, alternating between servers."""
    progress.phase(f"{count} sequential kernel starts", count * len(targets))
    samples: list[list[float]] = [[] for _ in targets]
    errors: list[list[str]] = [[] for _ in targets]
    for order in orders(count, len(targets)):
        for i in order:
            try:
                samples[i].append(await start_to_ready(targets[i]))
            except BenchError as exc:
                errors[i].append(_error(exc))
            progress.advance()
    return [
        {"attempts": count, "failures": len(errs), "errors": errs[:5], **spread(s, "s")}
        for s, errs in zip(samples, errors)
    ]


async def measure_concurrent(targets: list[Target], count: int, progress: Progress) -> list[dict]:
    """``count`` kernels started at once on each server in turn: the wall time until all are
    ready, failures counted, and the gateway's resident memory with them all running."""
    progress.phase(f"{count} kernels started at once", count * len(targets))
    results = []
    for target in targets:
        client = target.client
        rss_before = await target.probe.rss_bytes()
        kernel_ids: list[str] = []
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(_counted(ready_kernel(target, kernel_ids), progress) for _ in range(count)),
            return_exceptions=True,
        )
        wall = time.perf_counter() - started
        rss_after = await target.probe.rss_bytes()
        await asyncio.gather(*(client.delete_kernel(k) for k in kernel_ids), return_exceptions=True)
        ready = [o for o in outcomes if isinstance(o, float)]
        errors = [_error(o) for o in outcomes if isinstance(o, BaseException)]
        per_kernel = None
        if rss_before is not None and rss_after is not None and ready:
            per_kernel = (rss_after - rss_before) / len(ready)
        results.append(
            {
                "n": count,
                "ready": len(ready),
                "failures": len(errors),
                "errors": errors[:5],
                "wall_s": wall,
                "slowest_ready_s": max(ready) if ready else None,
                "gateway_rss_before_bytes": rss_before,
                "gateway_rss_with_kernels_bytes": rss_after,
                "gateway_rss_per_kernel_bytes": per_kernel,
            }
        )
    return results


# -- on a running kernel ---------------------------------------------------------------------


async def _cpu(probe: UsageProbe | None) -> float | None:
    return None if probe is None else await probe.cpu_seconds()


def _cpu_delta(before: float | None, after: float | None) -> float:
    return 0.0 if before is None or after is None else after - before


async def measure_round_trips(
    channels: list[Channel],
    rounds: int,
    block: int,
    timeout: float,
    progress: Progress,
    probes: list[UsageProbe | None] | None = None,
    warmup: int = 3,
) -> list[dict]:
    """Execute round trips of a trivial cell, until its execute_reply and idle status.

    Channels take turns in blocks of ``block`` rounds, each on a fresh connection (so no
    idle client's traffic competes), after ``warmup`` untimed rounds. With ``probes``, the
    CPU a channel's gateway used during its timed rounds is summed for it.
    """
    probes = probes or [None] * len(channels)
    progress.phase(f"{rounds} execute round trips", rounds * len(channels))
    samples: list[list[float]] = [[] for _ in channels]
    cpu = [0.0] * len(channels)
    sizes = [min(block, rounds - start) for start in range(0, rounds, block)]
    for size, order in zip(sizes, orders(len(sizes), len(channels))):
        for i in order:
            channel = channels[i]
            await channel.open()
            try:
                for _ in range(warmup):
                    await bounded(channel.execute(TRIVIAL), timeout, f"{channel.label}: execute")
                before = await _cpu(probes[i])
                for _ in range(size):
                    started = time.perf_counter()
                    out = await bounded(
                        channel.execute(TRIVIAL), timeout, f"{channel.label}: execute"
                    )
                    samples[i].append(time.perf_counter() - started)
                    if out.status != "ok":
                        raise BenchError(f"{channel.label}: execute_reply status {out.status!r}")
                    progress.advance()
                cpu[i] += _cpu_delta(before, await _cpu(probes[i]))
            finally:
                await channel.close()
    return [
        {
            **spread(s, "ms", 1000.0),
            "gateway_cpu_s": cpu[i] if probes[i] is not None else None,
            "gateway_cpu_us_per_round_trip": cpu[i] / len(s) * 1e6
            if probes[i] is not None and s
            else None,
        }
        for i, s in enumerate(samples)
    ]


async def measure_output(
    channels: list[Channel],
    mb: float,
    rounds: int,
    chunk_kb: int,
    timeout: float,
    progress: Progress,
    probes: list[UsageProbe | None] | None = None,
) -> list[dict]:
    """A cell printing ``mb`` MB: MB/s from the request to idle, and every stream byte counted
    against what the cell printed (a server that drops output shows less than 100%)."""
    probes = probes or [None] * len(channels)
    nbytes = int(mb * 1_000_000)
    expected = make_text(nbytes)
    expected_bytes = len(expected.encode())
    cell = print_cell(chunk_kb * 1024)
    progress.phase(f"{mb:g} MB of output x {rounds}", rounds * len(channels))
    for channel in channels:  # the text is built in each kernel before anything is timed
        await channel.open()
        try:
            out = await bounded(channel.execute(setup_cell(nbytes)), timeout, channel.label)
            if out.status != "ok":
                raise BenchError(f"{channel.label}: the setup cell failed: {out.reply}")
        finally:
            await channel.close()
    runs: list[list[dict]] = [[] for _ in channels]
    cpu = [0.0] * len(channels)
    for order in orders(rounds, len(channels)):
        for i in order:
            channel = channels[i]
            await channel.open()
            try:
                await bounded(channel.execute(TRIVIAL), timeout, f"{channel.label}: execute")
                before = await _cpu(probes[i])
                started = time.perf_counter()
                out = await bounded(channel.execute(cell), timeout, f"{channel.label}: print")
                elapsed = time.perf_counter() - started
                cpu[i] += _cpu_delta(before, await _cpu(probes[i]))
            finally:
                await channel.close()
            text = "".join(out.stdout)
            runs[i].append(
                {
                    "seconds": elapsed,
                    "mb_per_s": expected_bytes / 1e6 / elapsed,
                    "stdout_bytes": len(text.encode()),
                    "stream_bytes": out.stream_bytes,
                    "stream_messages": out.stream_messages,
                    "identical": text == expected,
                    "status": out.status,
                }
            )
            progress.advance()
    results = []
    for i, done in enumerate(runs):
        delivered = sum(r["stdout_bytes"] for r in done)
        wanted = expected_bytes * len(done)
        results.append(
            {
                "mb": mb,
                "rounds": len(done),
                "chunk_kb": chunk_kb,
                "mb_per_s": statistics.median(r["mb_per_s"] for r in done),
                "bytes_expected": wanted,
                "bytes_delivered": delivered,
                "stream_bytes": sum(r["stream_bytes"] for r in done),
                "delivered_pct": 100.0 * delivered / wanted if wanted else None,
                "all_identical": all(r["identical"] and r["status"] == "ok" for r in done),
                "gateway_cpu_s": cpu[i] if probes[i] is not None else None,
                "gateway_cpu_ms_per_mb": cpu[i] * 1e3 / (mb * len(done))
                if probes[i] is not None and done
                else None,
                "runs": done,
            }
        )
    return results


FLOOD_TIMEOUT = 180.0
"""Seconds a flood may take before its server is counted as never finishing it."""


async def measure_flood(
    channels: list[Channel],
    lines: int,
    rounds: int,
    timeout: float,
    progress: Progress,
    probes: list[UsageProbe | None] | None = None,
) -> list[dict]:
    """A cell printing ``lines`` numbered lines, one flushed print each: stream messages
    per second from the request to idle, and every line checked (in order, none lost)."""
    probes = probes or [None] * len(channels)
    expected = flood_text(lines)
    cell = flood_cell(lines)
    progress.phase(f"{lines:,} small outputs x {rounds}", rounds * len(channels))
    runs: list[list[dict]] = [[] for _ in channels]
    cpu = [0.0] * len(channels)
    stuck: set[int] = set()
    for order in orders(rounds, len(channels)):
        for i in order:
            channel = channels[i]
            if i in stuck:
                continue
            await channel.open()
            try:
                await bounded(channel.execute(TRIVIAL), timeout, f"{channel.label}: execute")
                before = await _cpu(probes[i])
                started = time.perf_counter()
                out = await bounded(
                    channel.execute(cell), min(timeout, FLOOD_TIMEOUT), f"{channel.label}: flood"
                )
                elapsed = time.perf_counter() - started
                cpu[i] += _cpu_delta(before, await _cpu(probes[i]))
            except BenchError:
                # A server whose flood never ends (its idle status lost with the output it
                # dropped) delivered nothing countable: say so, and measure the others on.
                stuck.add(i)
                runs[i].append(
                    {
                        "seconds": None,
                        "lines_delivered": 0,
                        "identical": False,
                        "status": "no idle",
                        "messages": 0,
                    }
                )
                progress.advance()
                continue
            finally:
                await channel.close()
            text = "".join(out.stdout)
            runs[i].append(
                {
                    "seconds": elapsed,
                    "messages": out.stream_messages,
                    "messages_per_s": out.stream_messages / elapsed,
                    "lines_per_s": lines / elapsed,
                    "lines_delivered": text.count("\n"),
                    "identical": text == expected,
                    "status": out.status,
                }
            )
            progress.advance()
    results = []
    for i, done in enumerate(runs):
        delivered = sum(r["lines_delivered"] for r in done)
        wanted = lines * len(done)
        results.append(
            {
                "lines": lines,
                "rounds": len(done),
                "lines_per_s": statistics.median(timed)
                if (timed := [r["lines_per_s"] for r in done if r["seconds"]])
                else None,
                "messages_per_s": statistics.median(sent)
                if (sent := [r["messages_per_s"] for r in done if r["seconds"]])
                else None,
                "never_idle": sum(1 for r in done if not r["seconds"]),
                "lines_delivered": delivered,
                "delivered_pct": 100.0 * delivered / wanted if wanted else None,
                "all_identical": all(r["identical"] and r["status"] == "ok" for r in done),
                "gateway_cpu_us_per_line": cpu[i] * 1e6 / wanted
                if probes[i] is not None and wanted
                else None,
                "runs": done,
            }
        )
    return results


async def interrupt_latency(target: Target, kernel_id: str) -> float:
    """Seconds from ``POST .../interrupt`` of a running ``time.sleep(60)`` until its
    execute_reply with status error (KeyboardInterrupt)."""
    client = target.client
    socket = await client.connect(kernel_id)
    try:
        async with asyncio.timeout(client.timeout):
            await socket.kernel_info()
            msg_id = await socket.send(
                "execute_request", {"code": SLEEP, "silent": False, "store_history": False}
            )
            while True:  # the cell is running once the kernel announced its input
                msg = await socket.recv()
                if (
                    msg["parent_header"].get("msg_id") == msg_id
                    and msg["header"]["msg_type"] == "execute_input"
                ):
                    break
            await asyncio.sleep(0.3)  # into the sleep, past the kernel's own bookkeeping
            started = time.perf_counter()
            await client.interrupt(kernel_id)
            out = await socket.until_done(msg_id)
            elapsed = time.perf_counter() - started
    except TimeoutError:
        raise BenchError(f"no reply to the interrupted cell within {client.timeout:g} s") from None
    finally:
        await socket.close()
    if out.status != "error" or out.reply.get("ename") != "KeyboardInterrupt":
        raise BenchError(
            f"interrupted cell replied {out.status!r} {out.reply.get('ename', '')}".strip()
        )
    return elapsed


async def restart_latency(target: Target, kernel_id: str) -> float:
    """Seconds from ``POST .../restart`` until a kernel_info_reply on a fresh WebSocket."""
    client = target.client
    started = time.perf_counter()
    try:
        async with asyncio.timeout(client.timeout):
            await client.restart(kernel_id)
            await _answers_kernel_info(client, kernel_id)
    except TimeoutError:
        raise BenchError(f"restarted kernel not ready within {client.timeout:g} s") from None
    return time.perf_counter() - started


async def _repeated(
    targets: list[Target],
    kernel_ids: list[str],
    count: int,
    measure: Callable[[Target, str], Awaitable[float]],
    progress: Progress,
) -> list[dict]:
    samples: list[list[float]] = [[] for _ in targets]
    errors: list[list[str]] = [[] for _ in targets]
    for order in orders(count, len(targets)):
        for i in order:
            try:
                samples[i].append(await measure(targets[i], kernel_ids[i]))
            except BenchError as exc:
                errors[i].append(_error(exc))
            progress.advance()
    return [
        {"attempts": count, "failures": len(errs), "errors": errs[:5], **spread(s, "s")}
        for s, errs in zip(samples, errors)
    ]


async def measure_interrupts(
    targets: list[Target], kernel_ids: list[str], count: int, progress: Progress
) -> list[dict]:
    progress.phase(f"{count} interrupts", count * len(targets))
    return await _repeated(targets, kernel_ids, count, interrupt_latency, progress)


async def measure_restarts(
    targets: list[Target], kernel_ids: list[str], count: int, progress: Progress
) -> list[dict]:
    progress.phase(f"{count} restarts", count * len(targets))
    return await _repeated(targets, kernel_ids, count, restart_latency, progress)
