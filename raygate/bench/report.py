"""The figures of a run: ratios between servers, a rich table, the JSON document."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.table import Table


@dataclass(frozen=True)
class Metric:
    """One figure of a server's results, found by its path in the result dict."""

    key: str
    path: tuple[str, ...]
    title: str
    unit: str
    lower_is_better: bool = True

    def value(self, result: dict[str, Any] | None) -> float | None:
        node: Any = result
        for part in self.path:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node if isinstance(node, int | float) and not isinstance(node, bool) else None


METRICS = (
    Metric("start_p50_s", ("start", "p50_s"), "start to ready, p50", "s"),
    Metric("start_p95_s", ("start", "p95_s"), "start to ready, p95", "s"),
    Metric("start_failures", ("start", "failures"), "start failures", "count"),
    Metric("concurrent_wall_s", ("concurrent", "wall_s"), "N at once: all ready", "s"),
    Metric("concurrent_failures", ("concurrent", "failures"), "N at once: failures", "count"),
    Metric("round_trip_p50_ms", ("round_trip", "p50_ms"), "execute round trip, p50", "ms"),
    Metric("round_trip_p99_ms", ("round_trip", "p99_ms"), "execute round trip, p99", "ms"),
    Metric(
        "output_mb_per_s",
        ("output", "mb_per_s"),
        "output throughput",
        "MB/s",
        lower_is_better=False,
    ),
    Metric(
        "output_delivered_pct",
        ("output", "delivered_pct"),
        "output delivered",
        "%",
        lower_is_better=False,
    ),
    Metric(
        "flood_lines_per_s",
        ("flood", "lines_per_s"),
        "small-output flood: lines/s",
        "lines/s",
        lower_is_better=False,
    ),
    Metric(
        "flood_delivered_pct",
        ("flood", "delivered_pct"),
        "small-output flood: delivered",
        "%",
        lower_is_better=False,
    ),
    Metric("interrupt_p50_s", ("interrupt", "p50_s"), "interrupt latency, p50", "s"),
    Metric("restart_p50_s", ("restart", "p50_s"), "restart to ready, p50", "s"),
    Metric(
        "gateway_cpu_us_per_round_trip",
        ("round_trip", "gateway_cpu_us_per_round_trip"),
        "gateway CPU per round trip",
        "us",
    ),
    Metric(
        "gateway_cpu_ms_per_output_mb",
        ("output", "gateway_cpu_ms_per_mb"),
        "gateway CPU per output MB",
        "ms",
    ),
    Metric("gateway_rss_idle_bytes", ("gateway_rss_idle_bytes",), "gateway RSS at start", "bytes"),
    Metric(
        "gateway_rss_per_kernel_bytes",
        ("concurrent", "gateway_rss_per_kernel_bytes"),
        "gateway RSS per kernel",
        "bytes",
    ),
)

ZMQ_METRICS = ("round_trip_p50_ms", "round_trip_p99_ms", "output_mb_per_s", "flood_lines_per_s")


def ratio(first: float | None, second: float | None) -> float | None:
    if first is None or second is None or first == 0:
        return None
    return second / first


def add_ratios(document: dict[str, Any]) -> None:
    """Add ``ratios`` (second server / first, per metric) and ``vs_zmq`` (each server / the
    ZMQ baseline) to a run's document."""
    servers = document["servers"]
    document["ratios"] = None
    if len(servers) >= 2:
        first, second = servers[0], servers[1]
        document["ratios"] = {
            "definition": "second / first: below 1 the second server is faster or smaller, "
            "except for output throughput and output delivered, where above 1 is better",
            "first": first["url"],
            "second": second["url"],
            "values": {
                m.key: ratio(m.value(first), m.value(second)) for m in METRICS if m.unit != "count"
            },
        }
    zmq = document.get("zmq_baseline")
    document["vs_zmq"] = None
    if zmq:
        by_key = {m.key: m for m in METRICS}
        document["vs_zmq"] = {
            "definition": "server / ZMQ: round trips above 1 are slower than straight ZMQ; "
            "throughput below 1 is slower",
            "values": {
                server["url"]: {
                    key: ratio(by_key[key].value(zmq), by_key[key].value(server))
                    for key in ZMQ_METRICS
                }
                for server in servers
            },
        }


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit in ("ms", "us"):
        return f"{value:.{3 if value < 10 else 1}f} {unit}"
    if unit == "lines/s":
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}"


def _count_of(result: dict[str, Any], metric: Metric) -> str:
    """``failures / attempts`` for the failure rows."""
    section = result.get(metric.path[0]) or {}
    if not section:
        return "n/a"
    return f"{section.get('failures', 0)} of {section.get('attempts', section.get('n', 0))}"


def table(document: dict[str, Any]) -> Table:
    """One row per figure, one column per server (and the ZMQ baseline), then the ratios."""
    servers = document["servers"]
    zmq = document.get("zmq_baseline")
    options = document["options"]
    result = Table(title=f"raygate bench ({options['framing']} WebSocket framing)")
    result.add_column("measurement", no_wrap=True)
    for server in servers:
        result.add_column(f"{server['label']}\n{server['url']}", justify="right")
    if zmq:
        result.add_column("ZMQ baseline\n(jupyter_client)", justify="right")
    ratios = (document.get("ratios") or {}).get("values")
    if ratios is not None:
        result.add_column("second ÷ first", justify="right")
    vs_zmq = (document.get("vs_zmq") or {}).get("values")
    if vs_zmq is not None:
        for server in servers:
            result.add_column(f"{server['label']} ÷ ZMQ", justify="right")
    for metric in METRICS:
        values = [metric.value(server) for server in servers]
        if all(v is None for v in values) and metric.unit != "bytes":
            continue  # not measured in this run
        title = metric.title.replace("N at once", f"{options['concurrent']} at once")
        if metric.key.startswith("output_"):
            title += f" ({options['output_mb']:g} MB)"
        if metric.unit == "count":
            cells = [_count_of(server, metric) for server in servers]
        else:
            cells = [_format(v, metric.unit) for v in values]
        if zmq:
            cells.append(
                _format(metric.value(zmq), metric.unit) if metric.key in ZMQ_METRICS else ""
            )
        if ratios is not None:
            r = ratios.get(metric.key)
            cells.append("" if metric.unit == "count" else "n/a" if r is None else f"{r:.2f}x")
        if vs_zmq is not None:
            for server in servers:
                r = vs_zmq[server["url"]].get(metric.key) if metric.key in ZMQ_METRICS else None
                cells.append(f"{r:.2f}x" if r is not None else "")
        result.add_row(title, *cells)
    sources = ", ".join(f"{s['label']}: {s['gateway_usage_source']}" for s in servers)
    result.caption = (
        f"gateway CPU and RSS from {sources}. Ratios: below 1 is faster or smaller, except "
        "throughput and delivered, where above 1 is better."
    )
    return result


def warnings(document: dict[str, Any]) -> list[str]:
    """What the operator should not miss: failures and lost output."""
    lines = []
    for server in document["servers"]:
        for name in ("start", "concurrent", "interrupt", "restart"):
            section = server.get(name) or {}
            for error in section.get("errors", []):
                lines.append(f"{server['url']}: {name}: {error}")
        output = server.get("output") or {}
        if output and not output.get("all_identical"):
            lines.append(
                f"{server['url']}: output: {output['bytes_delivered']} of "
                f"{output['bytes_expected']} bytes delivered intact"
            )
    return lines


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2)
