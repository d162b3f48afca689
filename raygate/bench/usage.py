"""What the gateway process itself uses: CPU seconds and resident memory.

From the process when the server runs on this machine (``--server-pid``, with psutil), else
from the ``process_*`` series of prometheus_client's process collector where the server's
``/metrics`` has them, else nothing ("n/a").
"""

from __future__ import annotations

from .client import BenchError, GatewayClient

CPU_METRIC = "process_cpu_seconds_total"
RSS_METRIC = "process_resident_memory_bytes"


def metric_value(text: str, name: str) -> float | None:
    """The value of the unlabelled series ``name`` in Prometheus text, if there."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


class UsageProbe:
    """No way to see the gateway's usage: every reading is None."""

    source = "n/a"
    available = False

    async def cpu_seconds(self) -> float | None:
        return None

    async def rss_bytes(self) -> int | None:
        return None


class PidProbe(UsageProbe):
    """The gateway process on this machine; its own usage, not its children's (kernels)."""

    def __init__(self, pid: int) -> None:
        try:
            import psutil
        except ImportError:
            raise BenchError("--server-pid needs psutil (pip install psutil)") from None
        try:
            self.process = psutil.Process(pid)
            self.process.cpu_times()
        except psutil.Error as exc:
            raise BenchError(f"--server-pid {pid}: {exc}") from None
        self.available = True
        self.source = f"pid {pid} (psutil)"

    async def cpu_seconds(self) -> float | None:
        times = self.process.cpu_times()
        return times.user + times.system

    async def rss_bytes(self) -> int | None:
        return self.process.memory_info().rss


class MetricsProbe(UsageProbe):
    """The ``process_*`` series of the server's ``/metrics``."""

    source = "/metrics"
    available = True

    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    async def _read(self, name: str) -> float | None:
        text = await self.client.metrics()
        return metric_value(text, name) if text else None

    async def cpu_seconds(self) -> float | None:
        return await self._read(CPU_METRIC)

    async def rss_bytes(self) -> int | None:
        value = await self._read(RSS_METRIC)
        return None if value is None else int(value)


async def usage_probe(client: GatewayClient, pid: int | None) -> UsageProbe:
    """The best probe there is for the server behind ``client``."""
    if pid:
        return PidProbe(pid)
    text = await client.metrics()
    if text and None not in (metric_value(text, CPU_METRIC), metric_value(text, RSS_METRIC)):
        return MetricsProbe(client)
    return UsageProbe()
