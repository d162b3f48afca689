"""Prometheus metrics of one gateway, served at ``/metrics``.

Everything about the kernels that are running now (how many, in which state, their GPUs,
the traffic their bridges carried, their WebSocket clients) is read from the registry
when Prometheus scrapes: a custom collector walks the kernels, so there is no per-kernel
bookkeeping to keep in step and no metric call on the bridge's hot path (the bridge keeps
plain integer counters per kernel). Counts of kernels that have gone are folded into
running totals, so the counters never go down.

Only what happens once per kernel start is observed as it happens: start latency and
start failures, through the registry's :class:`~raygate.registry.RegistryObserver` hooks.

Each app has its own :class:`prometheus_client.CollectorRegistry`, so several apps in one
process (tests) do not collide, and the process-wide default registry is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from raygate import __version__

from .kernels.kernel import RegistryObserver

if TYPE_CHECKING:
    from .bridge.channels import KernelChannels
    from .kernels.registry import Kernel, KernelRegistry

START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FOLD_AFTER = 30.0
"""Seconds a removed kernel's bridge counters are still read live (its last replies and
close frames) before they are folded into the totals of kernels gone."""

FAILURE_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "limit",
    404: "unknown_kernelspec",
    413: "bad_request",
    500: "kernel_failed",
    503: "no_capacity",
    504: "timeout",
}


def failure_reason(status: int) -> str:
    """A short, low-cardinality label for why a start failed, from its HTTP status."""
    return FAILURE_REASONS.get(status) or ("client_error" if status < 500 else "server_error")


def kernel_state(kernel: Kernel) -> str:
    """What the kernel is doing: the registry's own work on it, else its execution state."""
    return kernel.busy_with.replace(" ", "_") or kernel.channels.execution_state


def kernel_gpus(kernel: Kernel) -> float:
    return float(kernel.handle.request.resources.gpus or 0.0)


_NO_SUCH_FLOW = ("to_kernel", "iopub")
"""Clients never send on iopub; the series would only ever read 0."""


class _Traffic:
    """Bridge counters summed over many kernels' channels."""

    __slots__ = ("bytes", "messages", "opened")

    def __init__(self) -> None:
        self.messages: dict[tuple[str, str], int] = {}
        self.bytes: dict[tuple[str, str], int] = {}
        self.opened = 0

    def add(self, channels: KernelChannels) -> None:
        for direction, messages, size in (
            ("to_kernel", channels.channel_messages_in, channels.bytes_in),
            ("from_kernel", channels.channel_messages_out, channels.bytes_out),
        ):
            for channel, n in messages.items():
                key = (direction, channel)
                if key != _NO_SUCH_FLOW:
                    self.messages[key] = self.messages.get(key, 0) + n
            for channel, n in size.items():
                key = (direction, channel)
                if key != _NO_SUCH_FLOW:
                    self.bytes[key] = self.bytes.get(key, 0) + n
        self.opened += channels.clients_opened

    def merged(self, other: _Traffic) -> _Traffic:
        out = _Traffic()
        for source in (self, other):
            for key, n in source.messages.items():
                out.messages[key] = out.messages.get(key, 0) + n
            for key, n in source.bytes.items():
                out.bytes[key] = out.bytes.get(key, 0) + n
            out.opened += source.opened
        return out


class GatewayMetrics(RegistryObserver, Collector):
    """The gateway's metrics: registry hooks plus the scrape-time collector."""

    def __init__(self, kernels: KernelRegistry) -> None:
        self.kernels = kernels
        self.started_at = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        # The gateway's own CPU, memory and open files (process_*), as Prometheus expects.
        ProcessCollector(registry=self.registry)
        self.start_seconds = Histogram(
            "raygate_kernel_start_seconds",
            "Seconds from a start request to a kernel that answers, by launcher and kernelspec.",
            ["launcher", "kernelspec"],
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.start_failures = Counter(
            "raygate_kernel_start_failures",
            "Kernel start requests that failed, by HTTP status and a short reason.",
            ["code", "reason"],
            registry=self.registry,
        )
        self._gone = _Traffic()
        self._retiring: list[tuple[float, KernelChannels]] = []
        self.registry.register(self)

    # -- registry hooks ----------------------------------------------------------------

    def kernel_started(self, kernel: Kernel, seconds: float) -> None:
        self.start_seconds.labels(kernel.launcher.kind, kernel.name).observe(seconds)

    def start_failed(self, status: int) -> None:
        self.start_failures.labels(str(status), failure_reason(status)).inc()

    def kernel_removed(self, kernel: Kernel) -> None:
        self._retiring.append((time.monotonic(), kernel.channels))

    # -- scrape ------------------------------------------------------------------------

    def traffic(self) -> _Traffic:
        """Bridge counters of every kernel this gateway has served, gone ones included."""
        now = time.monotonic()
        keep = []
        for removed, channels in self._retiring:
            if now - removed >= FOLD_AFTER:
                self._gone.add(channels)
            else:
                keep.append((removed, channels))
        self._retiring = keep
        live = _Traffic()
        for kernel in list(self.kernels.kernels.values()):
            live.add(kernel.channels)
        for _, channels in self._retiring:
            live.add(channels)
        return live.merged(self._gone)

    def collect(self) -> Iterator[Metric]:
        kernels = list(self.kernels.kernels.values())

        by_state = GaugeMetricFamily(
            "raygate_kernels",
            "Kernels this gateway serves, by state, launcher and user.",
            labels=["state", "launcher", "user"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        gpus: dict[str, float] = {}
        connections = 0
        for kernel in kernels:
            key = (kernel_state(kernel), kernel.launcher.kind, kernel.username or "")
            counts[key] = counts.get(key, 0) + 1
            gpus[kernel.launcher.kind] = gpus.get(kernel.launcher.kind, 0.0) + kernel_gpus(kernel)
            connections += len(kernel.channels.clients)
        for key, n in sorted(counts.items()):
            by_state.add_metric(list(key), n)
        yield by_state

        warm = GaugeMetricFamily(
            "raygate_warm_kernels",
            "Kernels of the warm pool (--prewarm), not yet anyone's, by kernelspec and state "
            "(ready, starting).",
            labels=["kernelspec", "state"],
        )
        for name, shelf in self.kernels.pool.status().items():
            warm.add_metric([name, "ready"], shelf["ready"])
            warm.add_metric([name, "starting"], shelf["starting"])
        yield warm

        starting = GaugeMetricFamily(
            "raygate_kernel_starts_in_flight", "Kernel starts not finished yet."
        )
        starting.add_metric([], getattr(self.kernels, "_starting", 0))
        yield starting

        held = GaugeMetricFamily(
            "raygate_gpus_held",
            "GPUs that live kernels asked for (their resource request), by launcher.",
            labels=["launcher"],
        )
        for kind in sorted(set(gpus) | set(self.kernels.launchers)):
            held.add_metric([kind], gpus.get(kind, 0.0))
        yield held

        traffic = self.traffic()
        for name, what, carried in (
            ("raygate_bridge_messages", "Jupyter messages", traffic.messages),
            ("raygate_bridge_bytes", "Bytes of Jupyter messages (all ZMQ frames)", traffic.bytes),
        ):
            family = CounterMetricFamily(
                name,
                f"{what} the bridge carried, by direction (to_kernel, from_kernel) and channel.",
                labels=["direction", "channel"],
            )
            for direction_channel, n in sorted(carried.items()):
                family.add_metric(list(direction_channel), n)
            yield family

        current = GaugeMetricFamily(
            "raygate_websocket_connections", "WebSocket clients connected to kernels now."
        )
        current.add_metric([], connections)
        yield current
        opened = CounterMetricFamily(
            "raygate_websocket_connections_opened",
            "WebSocket clients that have connected to kernels.",
        )
        opened.add_metric([], traffic.opened)
        yield opened

        info = GaugeMetricFamily(
            "raygate_build_info", "raygate's version (the value is always 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        uptime = GaugeMetricFamily("raygate_uptime_seconds", "Seconds since the gateway started.")
        uptime.add_metric([], time.time() - self.started_at)
        yield uptime
