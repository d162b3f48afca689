#!/usr/bin/env python
"""Bridge benchmark: raygate's WebSocket bridge against straight ZMQ, on one kernel.

Starts ``raygate serve --default-launcher local`` as its own process on a free loopback
port, starts a kernel through its API, and measures on that kernel:

* the execute round trip: an ``execute_request`` of a trivial statement until both its
  ``execute_reply`` and its ``idle`` status arrived (p50 / p99 over ``--rounds``);
* the throughput of a cell that prints ``--mb`` MB: MB/s from the request to the idle
  status, with every byte of the output compared to what the cell printed.

Three ways in, measured alternately in short blocks so that machine noise hits them alike:

* ``zmq``: jupyter_client's ``AsyncKernelClient`` straight on the kernel's ZMQ sockets,
  connected through the connection file raygate's local launcher wrote for that very
  kernel (``<tmp>/raygate-local-*/kernel-<id>.json``; the API never shows the key).
  ``--baseline separate`` uses a kernel of the same kernelspec started by jupyter_client's
  ``AsyncKernelManager`` instead, which raygate does not listen to.
* ``legacy``: a WebSocket to raygate with no subprotocol (JSON text frames), the framing
  jupyter_server's gateway client uses;
* ``v1``: a WebSocket with the ``v1.kernel.websocket.jupyter.org`` binary subprotocol.

Goals (issue 2): raygate's round trip within 1.25x of ZMQ's (compared at p50), its
throughput at least half of ZMQ's, every byte delivered. Exits 1 when a goal is missed.

    python benchmarks/bridge.py [--rounds 200] [--mb 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import itertools
import json
import os
import platform
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import websockets
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager

try:  # parse JSON with the library jupyter_client's Session uses, so clients compare fairly
    from orjson import loads
except ImportError:
    from json import loads

V1 = "v1.kernel.websocket.jupyter.org"
MODES = ("zmq", "legacy", "v1")
LABELS = {"zmq": "ZMQ (jupyter_client)", "legacy": "raygate legacy JSON", "v1": "raygate v1 binary"}
RTT_GOAL = 1.25
THROUGHPUT_GOAL = 0.5
TRIVIAL = "pass"
TIMEOUT = 120.0

T = TypeVar("T")


async def bounded(aw: Awaitable[T], seconds: float) -> T:
    """``aw`` within ``seconds``, with no extra task where asyncio allows it."""
    if hasattr(asyncio, "timeout"):  # Python 3.11+
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)


async def answered(probe: Callable[[], Awaitable[Any]], where: str) -> None:
    """Repeat ``probe`` (a kernel_info request) until the kernel answers one within 1 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            await bounded(probe(), 1.0)
            return
        except TimeoutError:
            continue
    raise RuntimeError(f"the kernel did not answer {where}")


# -- the printed text ----------------------------------------------------------------

# Run here to know what to expect and in the kernel to print it: 100-byte lines, numbered,
# with quotes and backslashes so the JSON framing has something to escape.
MAKE_TEXT = r"""
def _rg_make_text(nbytes):
    filler = '"raygate" \\ bridge benchmark ' * 8
    lines = [f"{i:010d} {filler[i % 64:i % 64 + 88]}\n" for i in range(nbytes // 100)]
    return "".join(lines) + "x" * (nbytes % 100)
"""


def make_text(nbytes: int) -> str:
    scope: dict[str, Any] = {}
    exec(MAKE_TEXT, scope)
    return scope["_rg_make_text"](nbytes)


def print_cell(chunk: int) -> str:
    """The timed cell: print ``_rg_text``, whole or in flushed pieces of ``chunk`` bytes."""
    if chunk <= 0:
        return "print(_rg_text, end='')"
    return (
        "import sys as _rg_sys\n"
        f"for _rg_i in range(0, len(_rg_text), {chunk}):\n"
        f"    _rg_sys.stdout.write(_rg_text[_rg_i:_rg_i + {chunk}])\n"
        "    _rg_sys.stdout.flush()\n"
    )


def execute_content(code: str) -> dict[str, Any]:
    return {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }


# -- the three clients ------------------------------------------------------------------


@dataclass
class Outcome:
    status: str = ""
    stdout: list[str] = field(default_factory=list)


class ZmqClient:
    """Straight to the kernel's sockets with jupyter_client."""

    mode = "zmq"

    def __init__(self, connection_file: str) -> None:
        self.connection_file = connection_file
        self.kc: AsyncKernelClient | None = None

    async def open(self) -> None:
        kc = AsyncKernelClient()
        kc.load_connection_file(self.connection_file)
        kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        self.kc = kc
        # Ready once kernel_info is answered and its status reached the iopub subscription.
        await answered(lambda: self._until(kc.kernel_info(), need_reply=True), "over ZMQ")

    async def close(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None

    async def execute(self, code: str) -> Outcome:
        assert self.kc is not None
        msg_id = self.kc.execute(code, silent=False, store_history=False, allow_stdin=False)
        return await self._until(msg_id, need_reply=True)

    async def _until(self, msg_id: str, need_reply: bool) -> Outcome:
        """Read the reply to ``msg_id`` on shell, then its iopub until idle."""
        assert self.kc is not None
        out = Outcome()
        while need_reply:
            reply = await self.kc.get_shell_msg()
            if reply["parent_header"].get("msg_id") == msg_id:
                out.status = reply["content"].get("status", "")
                break
        while True:
            msg = await self.kc.get_iopub_msg()
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                out.stdout.append(msg["content"]["text"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return out


def encode_v1(msg: dict[str, Any]) -> bytes:
    chunks = [msg["channel"].encode()] + [
        json.dumps(msg[key]).encode() for key in ("header", "parent_header", "metadata", "content")
    ]
    offsets = [8 * (len(chunks) + 2)]
    for chunk in chunks:
        offsets.append(offsets[-1] + len(chunk))
    return struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(chunks)


def decode_v1(data: bytes) -> dict[str, Any]:
    (count,) = struct.unpack_from("<Q", data)
    offsets = struct.unpack_from(f"<{count}Q", data, 8)
    chunks = [data[offsets[i] : offsets[i + 1]] for i in range(count - 1)]
    msg: dict[str, Any] = {"channel": chunks[0].decode()}
    for key, chunk in zip(("header", "parent_header", "metadata", "content"), chunks[1:5]):
        msg[key] = loads(chunk)
    return msg


def decode_legacy_binary(data: bytes) -> dict[str, Any]:
    (count,) = struct.unpack_from("!I", data)
    offsets = list(struct.unpack_from(f"!{count}I", data, 4)) + [len(data)]
    return loads(data[offsets[0] : offsets[1]])


class WebSocketClient:
    """Through raygate: one WebSocket on the kernel's channels, in either framing."""

    def __init__(self, base_url: str, token: str, kernel_id: str, binary: bool) -> None:
        self.mode = "v1" if binary else "legacy"
        self.url = base_url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        self.token = token
        self.binary = binary
        self.ws: Any = None
        self.session = ""

    async def open(self) -> None:
        self.session = uuid.uuid4().hex
        # No compression: jupyter_server's gateway client (tornado) asks for none either.
        self.ws = await websockets.connect(
            f"{self.url}?session_id={self.session}",
            additional_headers={"Authorization": f"token {self.token}"},
            subprotocols=[V1] if self.binary else None,
            compression=None,
            max_size=None,
            ping_interval=None,
        )
        await answered(lambda: self._request("kernel_info_request", {}), "through raygate")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def execute(self, code: str) -> Outcome:
        return await self._request("execute_request", execute_content(code))

    async def _request(self, msg_type: str, content: dict[str, Any]) -> Outcome:
        msg_id = uuid.uuid4().hex
        msg = {
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "username": "bench",
                "session": self.session,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": "shell",
        }
        await self.ws.send(encode_v1(msg) if self.binary else json.dumps(msg))
        out = Outcome()
        replied = idle = False
        while not (replied and idle):
            data = await self.ws.recv()
            if isinstance(data, str):
                reply = loads(data)
            else:
                reply = decode_v1(data) if self.binary else decode_legacy_binary(data)
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            kind = reply["header"]["msg_type"]
            if reply["channel"] == "shell":
                out.status = reply["content"].get("status", "")
                replied = True
            elif kind == "stream" and reply["content"]["name"] == "stdout":
                out.stdout.append(reply["content"]["text"])
            elif kind == "status" and reply["content"]["execution_state"] == "idle":
                idle = True
        return out


Client = ZmqClient | WebSocketClient


# -- the gateway ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """``raygate serve`` in its own process, as deployed."""

    def __init__(self) -> None:
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="raygate-bench-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "raygate", "serve", "--default-launcher", "local"]
        cmd += ["--ip", "127.0.0.1", "--port", str(self.port), "--auth-token", self.token]
        cmd += ["--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=120
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"raygate exited early; see {self.log.name}")
            try:
                if self.http.get("/api").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"raygate did not come up; see {self.log.name}")

    def start_kernel(self, name: str) -> str:
        r = self.http.post("/api/kernels", json={"name": name})
        if r.status_code != 201:
            raise RuntimeError(f"kernel start failed: {r.status_code} {r.text}")
        return r.json()["id"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        self.log.close()


def raygate_connection_file(kernel_id: str) -> str | None:
    pattern = os.path.join(tempfile.gettempdir(), "raygate-local-*", f"kernel-{kernel_id}.json")
    found = glob.glob(pattern)
    return found[0] if found else None


# -- measuring ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def orders(count: int) -> list[tuple[str, ...]]:
    """``count`` orders of the modes, cycling through every permutation."""
    cycle = itertools.cycle(itertools.permutations(MODES))
    return [next(cycle) for _ in range(count)]


def process_cpu(pid: int) -> float:
    """CPU seconds a process used so far, all threads (Linux; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    """What one way in measured, and the gateway CPU time spent while it did."""

    rtts: list[float] = field(default_factory=list)
    prints: list[dict[str, Any]] = field(default_factory=list)
    rtt_gateway_cpu: float = 0.0
    print_gateway_cpu: float = 0.0


async def round_trips(
    clients: dict[str, Client], measured: dict[str, Measured], rounds: int, block: int, pid: int
) -> None:
    blocks = [min(block, rounds - start) for start in range(0, rounds, block)]
    for size, order in zip(blocks, orders(len(blocks))):
        for mode in order:
            client = clients[mode]
            await client.open()
            try:
                for _ in range(3):  # settle the fresh connection
                    await bounded(client.execute(TRIVIAL), TIMEOUT)
                cpu = process_cpu(pid)
                for _ in range(size):
                    start = time.perf_counter()
                    out = await bounded(client.execute(TRIVIAL), TIMEOUT)
                    measured[mode].rtts.append(time.perf_counter() - start)
                    if out.status != "ok":
                        raise RuntimeError(f"{mode}: execute_reply status {out.status!r}")
                measured[mode].rtt_gateway_cpu += process_cpu(pid) - cpu
            finally:
                await client.close()


async def throughputs(
    clients: dict[str, Client],
    measured: dict[str, Measured],
    rounds: int,
    cell: str,
    expected: str,
    pid: int,
) -> None:
    expected_bytes = len(expected.encode())
    for order in orders(rounds):
        for mode in order:
            client = clients[mode]
            await client.open()
            try:
                await bounded(client.execute(TRIVIAL), TIMEOUT)
                cpu = process_cpu(pid)
                start = time.perf_counter()
                out = await bounded(client.execute(cell), TIMEOUT)
                elapsed = time.perf_counter() - start
                measured[mode].print_gateway_cpu += process_cpu(pid) - cpu
            finally:
                await client.close()
            text = "".join(out.stdout)
            measured[mode].prints.append(
                {
                    "seconds": elapsed,
                    "mb_per_s": expected_bytes / 1e6 / elapsed,
                    "bytes_delivered": len(text.encode()),
                    "bytes_expected": expected_bytes,
                    "messages": len(out.stdout),
                    "identical": text == expected,
                    "status": out.status,
                }
            )


def summarize(measured: dict[str, Measured]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        m = measured[mode]
        ms = [s * 1000 for s in m.rtts]
        runs = m.prints or [
            {"mb_per_s": float("nan"), "bytes_delivered": 0, "bytes_expected": 0}
            | {"identical": True, "status": "ok", "messages": 0}
        ]
        summary[mode] = {
            "rtt_ms": {
                "p50": percentile(ms, 50),
                "p99": percentile(ms, 99),
                "mean": statistics.fmean(ms),
                "min": min(ms),
                "n": len(ms),
            },
            "gateway_cpu_us_per_rtt": m.rtt_gateway_cpu / len(ms) * 1e6,
            "throughput": {
                "mb_per_s": statistics.median(r["mb_per_s"] for r in runs),
                "bytes_delivered": sum(r["bytes_delivered"] for r in runs),
                "bytes_expected": sum(r["bytes_expected"] for r in runs),
                "all_identical": all(r["identical"] and r["status"] == "ok" for r in runs),
                "messages_per_print": [r["messages"] for r in runs],
                "runs": runs,
                "gateway_cpu_ms_per_print": m.print_gateway_cpu / max(1, len(m.prints)) * 1e3,
            },
        }
    base = summary["zmq"]
    for mode in MODES:
        s = summary[mode]
        s["rtt_ratio_p50"] = s["rtt_ms"]["p50"] / base["rtt_ms"]["p50"]
        s["rtt_ratio_p99"] = s["rtt_ms"]["p99"] / base["rtt_ms"]["p99"]
        s["throughput_ratio"] = s["throughput"]["mb_per_s"] / base["throughput"]["mb_per_s"]
        checks = {"all_bytes": s["throughput"]["all_identical"]}
        if mode != "zmq":
            checks["rtt"] = s["rtt_ratio_p50"] <= RTT_GOAL
            if m.prints:
                checks["throughput"] = s["throughput_ratio"] >= THROUGHPUT_GOAL
        s["checks"] = checks
        s["pass"] = all(checks.values())
    return summary


def table(summary: dict[str, dict[str, Any]], mb: float) -> str:
    """The figures, one row per way in; ratios are against the ZMQ row."""
    columns = [  # (title, unit, width)
        ("RTT p50", "ms", 8),
        ("RTT p99", "ms", 8),
        ("p50", "vs ZMQ", 7),
        ("p99", "vs ZMQ", 7),
        ("gw CPU", "us/RTT", 8),
        (f"{mb:g} MB print", "MB/s", 12),
        ("", "vs ZMQ", 7),
        ("gw CPU", "ms/print", 9),
        ("bytes delivered", "of expected", 23),
    ]
    rows = [
        " ".join([f"{'':22}"] + [f"{title:>{width}}" for title, _, width in columns] + [" goals"]),
        " ".join([f"{'':22}"] + [f"{unit:>{width}}" for _, unit, width in columns]),
    ]
    for mode in MODES:
        s = summary[mode]
        tp = s["throughput"]
        delivered = f"{tp['bytes_delivered']}/{tp['bytes_expected']}"
        if not tp["all_identical"]:
            delivered += " DIFFERS"
        if mode == "zmq":
            verdict = "baseline" if s["pass"] else "FAIL (bytes)"
        else:
            verdict = (
                "PASS"
                if s["pass"]
                else "FAIL: " + ", ".join(name for name, ok in s["checks"].items() if not ok)
            )
        values = [
            f"{s['rtt_ms']['p50']:.3f}",
            f"{s['rtt_ms']['p99']:.3f}",
            f"{s['rtt_ratio_p50']:.2f}x",
            f"{s['rtt_ratio_p99']:.2f}x",
            f"{s['gateway_cpu_us_per_rtt']:.0f}",
            f"{tp['mb_per_s']:.1f}",
            f"{s['throughput_ratio']:.2f}x",
            f"{tp['gateway_cpu_ms_per_print']:.0f}",
            delivered,
        ]
        cells = [f"{v:>{width}}" for v, (_, _, width) in zip(values, columns)]
        rows.append(" ".join([f"{LABELS[mode]:22}", *cells, f" {verdict}"]))
    rows.append(
        f"goals: RTT p50 <= {RTT_GOAL}x ZMQ's, print throughput >= {THROUGHPUT_GOAL}x ZMQ's,"
        " every byte delivered. gw CPU: CPU time of the raygate process meanwhile"
        " (10 ms clock ticks, summed over all rounds)."
    )
    return "\n".join(rows)


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
    import jupyter_client
    import uvicorn
    import zmq

    info["versions"] = {
        "websockets": websockets.__version__,
        "uvicorn": uvicorn.__version__,
        "pyzmq": zmq.__version__,
        "jupyter_client": jupyter_client.__version__,
    }
    return info


async def run(args: argparse.Namespace) -> int:
    nbytes = int(args.mb * 1_000_000)
    expected = make_text(nbytes)
    gateway = Gateway()
    manager: AsyncKernelManager | None = None
    try:
        gateway.wait_ready()
        kernel_id = gateway.start_kernel(args.kernel)
        connection_file = (
            None if args.baseline == "separate" else raygate_connection_file(kernel_id)
        )
        if connection_file is not None:
            baseline = (
                f"the same kernel: jupyter_client connected with the connection file "
                f"raygate's local launcher wrote ({connection_file})"
            )
        else:
            manager = AsyncKernelManager(kernel_name=args.kernel)
            await manager.start_kernel()
            connection_file = manager.connection_file
            baseline = (
                f"a second kernel of kernelspec {args.kernel!r} started by jupyter_client's "
                "AsyncKernelManager (raygate not subscribed to it)"
            )
        print(f"raygate pid {gateway.proc.pid} on {gateway.url}, kernel {kernel_id}")
        print(f"ZMQ baseline: {baseline}")
        clients: dict[str, Client] = {
            "zmq": ZmqClient(connection_file),
            "legacy": WebSocketClient(gateway.url, gateway.token, kernel_id, binary=False),
            "v1": WebSocketClient(gateway.url, gateway.token, kernel_id, binary=True),
        }
        setup = MAKE_TEXT + f"\n_rg_text = _rg_make_text({nbytes})\n"
        for mode in ("legacy", "zmq") if manager else ("legacy",):
            client = clients[mode]
            await client.open()
            try:
                if (await bounded(client.execute(setup), TIMEOUT)).status != "ok":
                    raise RuntimeError("the setup cell failed")
            finally:
                await client.close()
        pid = gateway.proc.pid
        print(f"warming up, then {args.rounds} round trips per way in, blocks of {args.block}")
        await round_trips(clients, {mode: Measured() for mode in MODES}, 20 * len(MODES), 20, pid)
        measured = {mode: Measured() for mode in MODES}
        await round_trips(clients, measured, args.rounds, args.block, pid)
        print(f"{args.tp_rounds} prints of {args.mb:g} MB per way in")
        cell = print_cell(args.chunk_kb * 1024)
        await throughputs(clients, measured, args.tp_rounds, cell, expected, pid)
    finally:
        if manager is not None:
            await manager.shutdown_kernel(now=True)
        gateway.stop()
    summary = summarize(measured)
    print()
    print(table(summary, args.mb))
    chunking = (
        f"in flushed pieces of {args.chunk_kb} KiB" if args.chunk_kb > 0 else "with one print()"
    )
    print(f"(the {args.mb:g} MB cell prints {chunking}; messages per print:", end=" ")
    print(", ".join(f"{m} {summary[m]['throughput']['messages_per_print']}" for m in MODES) + ")")
    ok = all(summary[mode]["pass"] for mode in MODES)
    if args.json:
        report = {
            "machine": machine(),
            "settings": {
                "rounds": args.rounds,
                "block": args.block,
                "mb": args.mb,
                "chunk_kb": args.chunk_kb,
                "throughput_rounds": args.tp_rounds,
                "kernel": args.kernel,
                "trivial_statement": TRIVIAL,
                "client_json": loads.__module__,
            },
            "baseline": baseline,
            "goals": {"rtt_p50_ratio_max": RTT_GOAL, "throughput_ratio_min": THROUGHPUT_GOAL},
            "results": summary,
            "rtt_samples_ms": {mode: [s * 1000 for s in measured[mode].rtts] for mode in MODES},
            "pass": ok,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="timed round trips per way in")
    parser.add_argument("--block", type=int, default=20, help="round trips per alternation block")
    parser.add_argument("--mb", type=float, default=20, help="MB (10^6 bytes) the cell prints")
    parser.add_argument(
        "--chunk-kb",
        type=int,
        default=64,
        help="print in flushed pieces of this many KiB (0: one print of the whole text)",
    )
    parser.add_argument("--tp-rounds", type=int, default=3, help="timed prints per way in")
    parser.add_argument("--kernel", default="python3", help="kernelspec to benchmark")
    parser.add_argument(
        "--baseline",
        choices=("same", "separate"),
        default="same",
        help="ZMQ on raygate's own kernel (same) or on a second kernel (separate)",
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
