"""``raygate bench URL`` run as operators run it, against real local-launcher gateways."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from conftest import ServerProcess, free_port, wait_gone
from kgclient import Gateway

TINY = ["--starts", "2", "--concurrent", "2", "--rounds", "10", "--output-mb", "1"]
TINY += ["--output-rounds", "1", "--interrupts", "1", "--restarts", "1"]
TINY += ["--flood-lines", "300", "--flood-rounds", "1"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raygate", "bench", *args],
        capture_output=True,
        text=True,
        timeout=280,
    )


def local_gateway(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server("--default-launcher", "local")


def assert_left_nothing(server: ServerProcess, pids_before: set[int]) -> None:
    """Every kernel the bench started is gone: from the API and as a process."""
    assert server.client.get("/api/kernels").json() == []
    assert wait_gone([p for p in server.kernel_pids() if p not in pids_before]) == []


def assert_sane(result: dict, url: str, mb: float = 1, rounds: int = 1) -> None:
    assert result["url"] == url
    assert result["kernelspec"] == "python3"
    start = result["start"]
    assert start["failures"] == 0, start["errors"]
    assert start["n"] == start["attempts"] == 2
    assert 0 < start["p50_s"] <= start["p95_s"]
    concurrent = result["concurrent"]
    assert (concurrent["ready"], concurrent["failures"]) == (2, 0), concurrent["errors"]
    assert concurrent["wall_s"] >= concurrent["slowest_ready_s"] > 0
    rtt = result["round_trip"]
    assert rtt["n"] == 10 and len(rtt["samples_ms"]) == 10
    assert 0 < rtt["min_ms"] <= rtt["p50_ms"] <= rtt["p99_ms"]
    output = result["output"]
    assert output["bytes_expected"] == int(mb * 1_000_000) * rounds
    assert output["bytes_delivered"] == output["bytes_expected"]
    assert output["delivered_pct"] == 100.0 and output["all_identical"]
    assert output["mb_per_s"] > 0
    flood = result["flood"]
    assert flood["lines_delivered"] == 300 and flood["all_identical"], flood
    for name in ("interrupt", "restart"):
        assert result[name]["failures"] == 0, result[name]["errors"]
        assert result[name]["n"] == 1 and result[name]["p50_s"] > 0


def test_bench_one_gateway(start_server: Callable[..., ServerProcess]) -> None:
    server = local_gateway(start_server)
    before = set(server.kernel_pids())
    run = bench(
        server.url, "--token", server.token, "--server-pid", str(server.proc.pid),
        "--json", "-", *TINY,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    (result,) = doc["servers"]
    assert_sane(result, server.url)
    assert result["framing"] == "legacy"
    # the gateway's own usage, from its process
    assert result["gateway_usage_source"].startswith(f"pid {server.proc.pid}")
    assert result["gateway_rss_idle_bytes"] > 0
    assert result["concurrent"]["gateway_rss_with_kernels_bytes"] > 0
    assert result["round_trip"]["gateway_cpu_s"] >= 0
    assert doc["ratios"] is None and doc["zmq_baseline"] is None
    # the table went to stderr, beside the progress, since stdout carries the JSON
    assert "execute round trip, p50" in run.stderr
    assert_left_nothing(server, before)


def test_bench_compare_with_zmq_baseline(
    start_server: Callable[..., ServerProcess], tmp_path
) -> None:
    first = local_gateway(start_server)
    second = start_server("--default-launcher", "local", token="other-token")
    before = {id(s): set(s.kernel_pids()) for s in (first, second)}
    out = tmp_path / "bench.json"
    run = bench(
        first.url, "--token", first.token,
        "--compare", second.url, "--compare-token", second.token,
        "--subprotocol", "v1", "--zmq-baseline", "--json", str(out), *TINY,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    assert [s["label"] for s in doc["servers"]] == ["first", "second"]
    for result, server in zip(doc["servers"], (first, second)):
        assert_sane(result, server.url)
        assert result["framing"] == "v1"
        # no pid was given: the gateway's usage comes from the process_* series of /metrics
        assert result["gateway_usage_source"] == "/metrics"
        assert result["round_trip"]["gateway_cpu_s"] >= 0
    zmq = doc["zmq_baseline"]
    assert zmq["round_trip"]["n"] == 10 and zmq["round_trip"]["p50_ms"] > 0
    assert zmq["output"]["bytes_delivered"] == zmq["output"]["bytes_expected"] == 1_000_000
    ratios = doc["ratios"]
    assert (ratios["first"], ratios["second"]) == (first.url, second.url)
    assert ratios["definition"].startswith("second / first")
    values = ratios["values"]
    rtt = [s["round_trip"]["p50_ms"] for s in doc["servers"]]
    assert values["round_trip_p50_ms"] == rtt[1] / rtt[0]
    assert values["output_delivered_pct"] == 1.0
    assert values["start_p50_s"] > 0 and values["restart_p50_s"] > 0
    for url in (first.url, second.url):
        assert doc["vs_zmq"]["values"][url]["round_trip_p50_ms"] > 0
    # the table (stdout) shows the ratios and says which way they go
    assert "second ÷ first" in run.stdout
    assert "first ÷ ZMQ" in run.stdout and "second ÷ ZMQ" in run.stdout
    assert f"wrote {out}" in run.stderr
    for server in (first, second):
        assert_left_nothing(server, before[id(server)])


def one_line_error(words: str, *args: str) -> None:
    """``raygate bench ARGS`` fails with one line on stderr that says ``words``, and
    nothing on stdout. Run in this process (click's runner: no interpreter to start), as it
    fails before it benchmarks anything."""
    import click.testing

    from raygate.cli import main

    run = click.testing.CliRunner().invoke(main, ["bench", *args])
    assert run.exit_code != 0
    assert isinstance(run.exception, SystemExit), run.exception  # no traceback
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("Error: ") and words in lines[0], lines


def test_bench_unreachable_or_bad_url() -> None:
    one_line_error("cannot reach http://127.0.0.1:", f"http://127.0.0.1:{free_port()}")
    one_line_error("bad URL '127.0.0.1:8888'", "127.0.0.1:8888")


def test_bench_bad_token_or_kernelspec(gateway_server: ServerProcess, gateway: Gateway) -> None:
    """Against the session's shared gateway: the bench starts no kernel there."""
    before = gateway.get("/api/kernels").json()
    one_line_error("refused the token", gateway_server.url, "--token", "wrong")
    one_line_error("refused the token", gateway_server.url)
    one_line_error(
        "has no kernelspec 'nope'",
        gateway_server.url, "--token", gateway_server.token, "--kernelspec", "nope",
    )  # fmt: skip
    assert gateway.get("/api/kernels").json() == before
