"""What notebook-http shows of itself: Prometheus metrics and the status page's section.

:class:`NotebookHttpMetrics` is registered in the gateway's metrics registry (served at
``/metrics``); the handlers call :meth:`NotebookHttpMetrics.observe` for each answer.
:func:`pool_status` is the ``notebook_http`` part of ``GET /api/status``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .notebook import NotebookApi
from .pool import LATENCY_WINDOW, EndpointPool

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STATES = ("idle", "busy", "starting", "reviving", "failed")


class NotebookHttpMetrics(Collector):
    def __init__(self, pool: EndpointPool, registry: CollectorRegistry) -> None:
        self.pool = pool
        self.requests = Counter(
            "raygate_notebook_http_requests",
            "notebook-http requests answered, by method, endpoint (the notebook's path) and "
            "HTTP status.",
            ["method", "endpoint", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "raygate_notebook_http_request_seconds",
            "Seconds from a notebook-http request to its answer (queueing included), by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        registry.register(self)

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(method, endpoint, str(status)).inc()
        self.seconds.labels(endpoint).observe(seconds)
        self.pool.record(method, endpoint, status, seconds)

    def collect(self) -> Iterator[Metric]:
        pool = self.pool
        kernels = GaugeMetricFamily(
            "raygate_notebook_http_kernels",
            "Kernels serving the notebook's endpoints, by state.",
            labels=["state"],
        )
        for state in STATES:
            kernels.add_metric([state], sum(1 for s in pool.slots if s.state == state))
        yield kernels
        queue = GaugeMetricFamily(
            "raygate_notebook_http_queue_length",
            "notebook-http requests waiting for a free kernel.",
        )
        queue.add_metric([], pool.waiting)
        yield queue
        for name, text, value in (
            ("rejected", "Requests refused (503) because the queue was full.", pool.stats.rejected),
            (
                "timeouts",
                "Requests answered 504: no kernel free, or the code ran too long.",
                pool.stats.timeouts,
            ),
            (
                "kernels_replaced",
                "Endpoint kernels brought back after they died or hung.",
                pool.stats.replaced,
            ),
        ):
            family = CounterMetricFamily(f"raygate_notebook_http_{name}", text)
            family.add_metric([], value)
            yield family


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pool_status(api: NotebookApi, kernel_name: str, pool: EndpointPool) -> dict[str, Any]:
    now = time.monotonic()
    recent = [f for f in pool.stats.recent if f.at >= now - LATENCY_WINDOW]
    span = min(LATENCY_WINDOW, max(now - recent[0].at, 1.0)) if recent else LATENCY_WINDOW
    seconds = [f.seconds for f in recent]
    return {
        "seed_uri": api.uri,
        "kernelspec": kernel_name,
        "endpoints": [{"path": e.path, "methods": sorted(e.sources)} for e in api.endpoints],
        "kernels": [
            {
                "index": slot.index,
                "id": slot.kernel.id if slot.kernel else None,
                "state": slot.state,
                "requests": slot.requests,
                "host": _host(slot.kernel.handle.placement) if slot.kernel else "",
            }
            for slot in pool.slots
        ],
        "queue_length": pool.waiting,
        "queue_limit": pool.queue_limit,
        "requests_per_second": len(recent) / span if recent else 0.0,
        "latency_p50": _percentile(seconds, 0.5),
        "latency_p95": _percentile(seconds, 0.95),
        "requests": sum(pool.stats.requests.values()),
        "rejected": pool.stats.rejected,
        "timeouts": pool.stats.timeouts,
        "replaced": pool.stats.replaced,
    }


def _host(placement: dict[str, Any]) -> str:
    from raygate.handlers.status import host_of

    return host_of(placement)
