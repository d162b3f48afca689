"""``raygate bench``: measure any Kernel Gateway API server with one client.

The same client (``httpx`` for HTTP, ``websockets`` for the channels WebSocket, legacy
JSON framing or the ``v1.kernel.websocket.jupyter.org`` subprotocol) measures raygate,
Jupyter Kernel Gateway and Jupyter Enterprise Gateway alike:

* ``start``: sequential kernel starts, from ``POST /api/kernels`` until a
  ``kernel_info_reply`` arrives on the kernel's channels WebSocket (p50/p95);
* ``concurrent``: N kernels started at once, the wall time until all are ready, failures,
  and the gateway's RSS per kernel;
* ``round_trip``: execute round trips of ``pass`` until execute_reply and idle (p50/p99);
* ``output``: one cell printing N MB, MB/s and bytes delivered against expected;
* ``interrupt`` and ``restart``: ``POST .../interrupt`` of a ``time.sleep(60)`` until its
  KeyboardInterrupt reply; ``POST .../restart`` until ready;
* gateway CPU seconds (per measurement) and RSS, from the server's pid (psutil) or its
  ``/metrics`` (prometheus_client's ``process_*`` series), else ``None``.

For programs (e.g. a report against KG or EG)::

    from raygate.bench import BenchOptions, Server, run_bench, run_servers, run_zmq_baseline

    doc = await run_bench("http://gw:8888", "TOKEN", BenchOptions(starts=5, rounds=100))
    doc = await run_servers([Server(url_a, token_a, pid_a), Server(url_b, token_b)], options)
    zmq = await run_zmq_baseline(BenchOptions(rounds=100))   # straight ZMQ, local kernel

``run_bench``/``run_servers`` return one JSON-ready dict: ``servers`` (one result per server,
keyed by measurement as above; latencies in ``*_s``/``*_ms`` with their ``samples_*``),
``zmq_baseline`` (with ``BenchOptions(zmq_baseline=True)``), ``ratios`` (second server /
first, per metric) and ``vs_zmq``, plus ``options`` and ``machine``. A server that cannot be
reached, refuses the token or lacks the kernelspec raises :class:`BenchError`. Several
servers take turns (alternating starts, round trips in blocks of ``block``), so machine
noise hits them alike. Pass a :class:`~raygate.bench.measure.Progress` to follow along.

The pieces are importable on their own: ``client`` (the API client), ``measure`` (one
async function per measurement), ``zmq_baseline``, ``usage`` (gateway CPU/RSS), ``report``
(ratios, the rich table) and ``cells`` (the code run in kernels).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BenchError", "BenchOptions", "Server", "run_bench", "run_servers", "run_zmq_baseline"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: ``raygate serve`` imports the CLI (and so ``bench.command``) but
    # should not pay for httpx, websockets and rich.
    if name == "BenchError":
        from .client import BenchError

        return BenchError
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
