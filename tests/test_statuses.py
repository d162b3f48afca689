"""The statuses a kernel's clients see, as jupyter_server shows them for its own kernels.

Each case was recorded against jupyter_server 2.21's local kernels with the same client
(``kgclient``): a restart a client asked for shows the old kernel's answer to the
``shutdown_request`` and the new kernel's ``starting`` (never ``restarting``, which JupyterLab
reads as "the kernel died" and shows a modal error for); a kernel that died shows
``restarting`` then ``starting``; one that cannot be restarted shows ``dead`` and is gone
(404); an interrupt and a reconnect show nothing of their own. Statuses answering a
``kernel_info_request`` (a gateway's readiness probe, a notebook's reconnect) are left out of
the sequences compared: their number varies, and jupyter_server and JupyterLab leave them
out of the kernel's state too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest
import websockets

from conftest import wait_gone
from kernelspecs import write_kernelspec
from kgclient import Gateway, KernelWS, message
from raygate.bridge.status import UNTRACKED, next_execution_state, shown_to_clients
from raygate.kernels.kernel import STABLE_START, consecutive_restarts

RUN = "import time\nprint('running', flush=True)\ntime.sleep(60)"


def statuses(received: list[dict]) -> list[tuple[str, str]]:
    """``(execution_state, parent msg_type)`` of each status, but those of kernel_info."""
    seen = []
    for m in received:
        if m["header"]["msg_type"] != "status":
            continue
        parent = m["parent_header"].get("msg_type", "")
        if parent != "kernel_info_request":
            seen.append((m["content"]["execution_state"], parent))
    return seen


def execute(code: str) -> dict:
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}}
    return message("execute_request", {**content, "allow_stdin": False, "stop_on_error": True})


async def until(ws: KernelWS, msg_type: str, state: str = "", timeout: float = 60) -> None:
    """Read until a ``msg_type`` (a status: of ``state``) arrives; ``ws.received`` keeps
    everything read."""
    while True:
        m = await ws.recv(timeout)
        if m["header"]["msg_type"] == msg_type and m["content"].get("execution_state", "") == state:
            return


async def kill_while_running(gateway: Gateway, ws: KernelWS, kernel_id: str) -> None:
    """Kill the kernel process (as the OOM killer would) while a cell runs."""
    await ws.send(execute(RUN))
    await until(ws, "stream")
    os.kill(gateway.get(f"/api/kernels/{kernel_id}").json()["placement"]["pid"], signal.SIGKILL)


# -- the rules (pure) -------------------------------------------------------------------


def test_execution_state_follows_what_users_do_not_probes() -> None:
    assert next_execution_state("idle", "busy", "execute_request") == "busy"
    assert next_execution_state("busy", "idle", "execute_request") == "idle"
    # an interrupt or kernel_info answered on control while a cell runs: still busy
    assert next_execution_state("busy", "idle", "interrupt_request") == "busy"
    assert next_execution_state("busy", "idle", "kernel_info_request") == "busy"
    # ... but any answer ends `starting`; the kernel's own `starting` (no parent) counts
    assert next_execution_state("starting", "busy", "kernel_info_request") == "idle"
    assert next_execution_state("idle", "starting", "") == "starting"
    assert {"kernel_info_request", "shutdown_request", "interrupt_request"} <= UNTRACKED
    assert "execute_request" not in UNTRACKED


def test_what_clients_are_shown() -> None:
    assert not shown_to_clients("iopub_welcome", "", "", False)
    assert not shown_to_clients("status", "starting", "", restarting=True)
    assert shown_to_clients("status", "starting", "", restarting=False)
    assert shown_to_clients("status", "busy", "kernel_info_request", restarting=True)
    assert shown_to_clients("stream", "", "execute_request", restarting=True)


def test_restarts_in_a_row_start_again_once_a_kernel_stayed_up() -> None:
    assert consecutive_restarts(0, 0.0, 100.0) == 0  # its first death
    assert consecutive_restarts(3, 100.0, 100.0 + STABLE_START - 1) == 3
    assert consecutive_restarts(3, 100.0, 100.0 + STABLE_START) == 0


# -- through the gateway ---------------------------------------------------------------------


async def test_requested_restart_shows_shutdown_then_starting(gateway: Gateway) -> None:
    kernel = gateway.start_kernel()
    ws = await gateway.connect(kernel["id"])
    await ws.execute("gone = 1")
    ws.received.clear()
    r = gateway.post(f"/api/kernels/{kernel['id']}/restart", json={})
    assert r.status_code == 200
    assert r.json()["id"] == kernel["id"] and r.json()["execution_state"] == "idle"
    out = await ws.execute("'gone' in globals()")
    assert out.result == "False"
    before = ws.received[: ws.received.index(out.messages[0])]
    assert statuses(before) == [
        ("busy", "shutdown_request"),
        ("idle", "shutdown_request"),
        ("starting", ""),
    ]
    replies = [m for m in before if m["header"]["msg_type"] == "shutdown_reply"]
    assert [(m["channel"], m["content"]["restart"]) for m in replies] == [("iopub", True)]
    assert [m["header"]["msg_type"] for m in before if m["channel"] != "iopub"] == []
    await ws.close()


async def test_died_kernel_shows_restarting_then_starting_then_dead(start_server) -> None:
    """One automatic restart allowed: the first death is restarted, the second (soon after)
    is final. Before a restart's ``starting``, raygate tells why on stderr."""
    server = start_server("--default-launcher", "local", "--restart-limit", "1")
    gateway = server.client
    kernel_id = gateway.start_kernel()["id"]
    ws = await gateway.connect(kernel_id)
    await ws.execute("state = 1")
    ws.received.clear()
    await kill_while_running(gateway, ws, kernel_id)
    await until(ws, "status", "starting")
    assert statuses(ws.received) == [
        ("busy", "execute_request"),
        ("restarting", ""),
        ("starting", ""),
    ]
    restarting = next(m for m in ws.received if m["content"].get("execution_state") == "restarting")
    assert "kernel died" in restarting["content"]["reason"]
    died = [m["content"]["text"] for m in ws.received if m["header"]["msg_type"] == "stream"]
    assert died[0] == "running\n" and died[1].startswith("raygate: the kernel died: killed")
    out = await ws.execute("'state' in globals()")
    assert out.result == "False"
    assert gateway.get(f"/api/kernels/{kernel_id}").json()["execution_state"] == "idle"

    ws.received.clear()
    await kill_while_running(gateway, ws, kernel_id)
    await until(ws, "status", "dead")
    assert statuses(ws.received) == [("busy", "execute_request"), ("dead", "")]
    # Then the kernel is gone, as jupyter_server removes a kernel that stays dead; raygate
    # also ends its WebSockets (1000: JupyterLab has disposed of the kernel on `dead`).
    with pytest.raises(websockets.ConnectionClosedOK) as closed:
        await ws.recv(30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    for r in (
        gateway.get(f"/api/kernels/{kernel_id}"),
        gateway.post(f"/api/kernels/{kernel_id}/restart", json={}),
        gateway.post(f"/api/kernels/{kernel_id}/interrupt", json={}),
    ):
        assert r.status_code == 404
        assert r.json() == {
            "reason": "Not Found",
            "message": f"Kernel does not exist: {kernel_id}",
        }
    assert kernel_id not in [k["id"] for k in gateway.get("/api/kernels").json()]


HANGS_ON_RESTART = """\
import os, sys, time
marker = sys.argv[2]
if os.path.exists(marker):
    time.sleep(600)  # a restart: alive, never answering
open(marker, "w").close()
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", sys.argv[1]])
"""


async def test_a_restart_that_hangs_holds_up_no_other_kernel(start_server, tmp_path) -> None:
    """Each dead kernel is restarted on its own: while one kernel's restart waits for a
    kernel that never answers, another kernel that dies is restarted all the same."""
    specs = str(tmp_path / "specs")
    marker = str(tmp_path / "started")
    argv = [sys.executable, "-c", HANGS_ON_RESTART, "{connection_file}", marker]
    write_kernelspec(specs, "hangs-on-restart", argv)
    server = start_server(
        "--default-launcher", "local", "--kernelspec-dirs", specs, "--kernel-launch-timeout", "300"
    )
    gateway = server.client
    stuck_id = gateway.start_kernel("hangs-on-restart")["id"]
    stuck = await gateway.connect(stuck_id)
    await kill_while_running(gateway, stuck, stuck_id)
    await until(stuck, "status", "restarting")  # and it waits, up to 300 s, for an answer

    other_id = gateway.start_kernel()["id"]
    other = await gateway.connect(other_id)
    await other.execute("state = 1")
    await kill_while_running(gateway, other, other_id)
    await until(other, "status", "starting", timeout=60)
    assert (await other.execute("'state' in globals()")).result == "False"
    assert gateway.get(f"/api/kernels/{stuck_id}").json()["execution_state"] == "restarting"

    # the one still restarting can be shut down; its hanging process goes with it
    pid = gateway.get(f"/api/kernels/{stuck_id}").json()["placement"]["pid"]
    assert gateway.delete(f"/api/kernels/{stuck_id}").status_code == 204
    assert wait_gone([pid]) == []
    await stuck.close()
    await other.close()


async def test_interrupt_shows_only_the_cells_statuses(gateway: Gateway) -> None:
    """While a cell runs the kernel is busy, also for a kernel_info asked on control
    meanwhile (statuses answering it do not count); the interrupt adds no status."""
    kernel_id = gateway.start_kernel()["id"]
    ws = await gateway.connect(kernel_id)
    await ws.execute("1")
    ws.received.clear()
    printed = asyncio.Event()
    task = asyncio.create_task(
        ws.execute("import time\nprint('go', flush=True)\ntime.sleep(60)", printed=printed)
    )
    await asyncio.wait_for(printed.wait(), 30)
    control = await gateway.connect(kernel_id)
    info = await control.request("kernel_info_request", {}, channel="control")
    assert info["content"]["status"] == "ok"
    asked = info["parent_header"]["msg_id"]
    while not any(  # its idle reached the gateway (it comes on iopub, apart from the reply)
        m["header"]["msg_type"] == "status"
        and m["content"]["execution_state"] == "idle"
        and m["parent_header"].get("msg_id") == asked
        for m in control.received
    ):
        await control.recv(30)
    assert gateway.get(f"/api/kernels/{kernel_id}").json()["execution_state"] == "busy"
    assert gateway.post(f"/api/kernels/{kernel_id}/interrupt").status_code == 204
    out = await asyncio.wait_for(task, 30)
    assert out.status == "error" and out.ename == "KeyboardInterrupt"
    assert statuses(ws.received) == [("busy", "execute_request"), ("idle", "execute_request")]
    assert gateway.get(f"/api/kernels/{kernel_id}").json()["execution_state"] == "idle"
    await control.close()
    await ws.close()


async def test_reconnect_to_a_live_kernel_shows_nothing_of_its_own(gateway: Gateway) -> None:
    """A notebook that reconnects (same session) asks for kernel_info, as JupyterLab does;
    what it gets first answers that, and the kernel keeps its state."""
    kernel_id = gateway.start_kernel()["id"]
    ws = await gateway.connect(kernel_id)
    await ws.execute("kept = 2")
    await ws.close()
    again = await gateway.connect(kernel_id, session=ws.session)
    info = message("kernel_info_request", {})
    await again.send(info)
    while not any(m["header"]["msg_type"] == "kernel_info_reply" for m in again.received):
        await again.recv(30)
    parents = {m["parent_header"].get("msg_id") for m in again.received}
    assert parents == {info["header"]["msg_id"]}, again.received
    assert (await again.execute("kept")).result == "2"
    await again.close()
