"""``raygate bench URL``: the benchmark as a click command, with rich progress."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

# rich, httpx and websockets are imported when the command runs, not when ``raygate serve``
# builds its command group.


class RichProgress:
    """One progress bar per measurement, on stderr (stdout may carry the JSON)."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: Any = None

    def phase(self, description: str, total: int) -> None:
        if self.task is not None:
            task = self.progress.tasks[self.task]
            self.progress.update(self.task, completed=task.total)
        self.task = self.progress.add_task(description, total=max(total, 1))

    def advance(self, steps: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, steps)


def _count(help: str, default: int) -> Any:
    return click.option(
        help.split()[0],
        type=click.IntRange(min=0),
        default=default,
        show_default=True,
        help=" ".join(help.split()[1:]),
    )


@click.command()
@click.argument("url")
@click.option(
    "--token",
    default="",
    envvar="RAYGATE_BENCH_TOKEN",
    show_envvar=True,
    help="Token for the server (sent as Authorization: token T).",
)
@click.option(
    "--kernelspec",
    default="python3",
    show_default=True,
    help="Kernelspec to start on the server(s).",
)
@_count("--starts Sequential kernel starts: start to ready, p50/p95 (0: skip).", 10)
@_count("--concurrent Kernels started at once: wall time until all are ready (0: skip).", 5)
@_count("--rounds Execute round trips of a trivial cell (0: skip).", 200)
@click.option(
    "--block",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Round trips per turn when servers take turns.",
)
@click.option(
    "--output-mb",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="MB (10^6 bytes) one cell prints, for throughput (0: skip).",
)
@_count("--output-rounds Timed prints of --output-mb per server.", 3)
@_count("--chunk-kb The cell prints in flushed pieces of this many KiB (0: one print).", 64)
@_count("--flood-lines Lines one cell prints with a flushed print() each (0: skip).", 20000)
@_count("--flood-rounds Timed floods of --flood-lines per server.", 2)
@_count("--interrupts Interrupts of a running time.sleep(60) (0: skip).", 3)
@_count("--restarts Kernel restarts, until ready (0: skip).", 3)
@click.option(
    "--subprotocol",
    type=click.Choice(["legacy", "v1"]),
    default="legacy",
    show_default=True,
    help="WebSocket framing: legacy JSON (what KG/EG speak) or the "
    "v1.kernel.websocket.jupyter.org binary subprotocol.",
)
@click.option(
    "--server-pid",
    type=int,
    default=None,
    help="Process id of the server when it runs on this machine: its CPU seconds "
    "and RSS (else read from its /metrics where served).",
)
@click.option(
    "--compare",
    "compare_url",
    default="",
    help="A second server measured in the same run, taking turns with the first; "
    "ratios are second / first.",
)
@click.option(
    "--compare-token",
    default="",
    envvar="RAYGATE_BENCH_COMPARE_TOKEN",
    show_envvar=True,
    help="Token for the --compare server.",
)
@click.option(
    "--compare-server-pid",
    type=int,
    default=None,
    help="Process id of the --compare server on this machine.",
)
@click.option(
    "--compare-kernelspec",
    default="",
    help="Kernelspec on the --compare server (default: --kernelspec).",
)
@click.option(
    "--zmq-baseline/--no-zmq-baseline",
    default=False,
    show_default=True,
    help="Also measure round trips and output straight over ZMQ (jupyter_client) "
    "on a kernel of --kernelspec started on this machine.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds any one step may take.",
)
@click.option(
    "--json",
    "json_path",
    default="",
    help="Write every figure as JSON to this file ('-': to stdout, the table to stderr).",
)
def bench(
    url: str,
    token: str,
    server_pid: int | None,
    compare_url: str,
    compare_token: str,
    compare_server_pid: int | None,
    compare_kernelspec: str,
    json_path: str,
    subprotocol: str,
    **counts: Any,
) -> None:
    """Benchmark a Kernel Gateway API server (raygate, Jupyter Kernel Gateway, Enterprise
    Gateway) at URL: kernel starts, execute round trips, output throughput, interrupts and
    restarts, and the gateway's CPU and memory, all with the same client."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from .client import BenchError
    from .report import table, to_json, warnings
    from .runner import BenchOptions, Server, run_servers

    options = BenchOptions(framing=subprotocol, **counts)
    servers = [Server(url, token, server_pid)]
    if compare_url:
        servers.append(Server(compare_url, compare_token, compare_server_pid, compare_kernelspec))
    # Not on a terminal (a log, a pipe): wide enough that the table keeps one line per row.
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    out = err if json_path == "-" else Console(width=None if sys.stdout.isatty() else 140)
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=False) as progress:
            document = asyncio.run(run_servers(servers, options, RichProgress(progress)))
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    out.print(table(document))
    for line in warnings(document):
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
    if json_path == "-":
        sys.stdout.write(to_json(document) + "\n")
    elif json_path:
        with open(json_path, "w") as f:
            f.write(to_json(document) + "\n")
        err.print(f"wrote {json_path}")
