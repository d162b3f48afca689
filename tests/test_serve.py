"""``raygate serve`` as operators run it: options, signals, culling, no orphans."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import httpx

from conftest import ServerProcess, wait_gone
from raygate.cli import serve_settings


def help_entries(out: str) -> dict[str, str]:
    """``--help``'s text per option (click wraps an option's text over lines)."""
    entries: dict[str, str] = {}
    current = ""
    for line in out.split("Options:", 1)[1].splitlines():
        match = re.match(r"  (--[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line[match.end() :]
        elif current:
            entries[current] += " " + line
    return {option: " ".join(text.split()) for option, text in entries.items()}


def test_help_documents_every_setting_its_variable_and_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raygate", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    entries = help_entries(out)
    settings = [setting for _, setting in serve_settings()]
    assert len(settings) >= 75
    for setting in settings:
        text = entries[setting.option]
        assert setting.envvar in text, setting.name
        if setting.show_default:
            assert "default: " in text, setting.name
    assert "RAYGATE_CONFIG" in entries["--config"]
    assert "default: python3" in entries["--default-kernel-name"]
    assert "default: 0" in entries["--max-kernel-memory"]
    assert "RAY_ADDRESS" in entries["--ray-address"].replace("RAYGATE_RAY_ADDRESS", "")


def test_sigterm_stops_kernels(start_server) -> None:
    server: ServerProcess = start_server("--default-launcher", "local")
    for _ in range(2):
        server.client.start_kernel()
    pids = server.kernel_pids()
    assert len(pids) >= 2
    # uvicorn re-raises the signal once shut down, so the exit is "by SIGTERM"
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert wait_gone(pids) == []
    assert "shut down" in server.output()
    assert "Application shutdown complete" in server.output()


def test_sigint_stops_kernels(start_server) -> None:
    server: ServerProcess = start_server("--default-launcher", "local")
    server.client.start_kernel()
    pids = server.kernel_pids()
    assert pids
    server.stop(signal.SIGINT)
    assert wait_gone(pids) == []


def test_sigkill_leaves_no_orphans(start_server) -> None:
    server: ServerProcess = start_server("--default-launcher", "local")
    server.client.start_kernel()
    server.client.start_kernel()
    pids = server.kernel_pids()
    assert pids
    server.stop(signal.SIGKILL)
    assert wait_gone(pids) == []


def test_env_vars_and_config_file(start_server, tmp_path) -> None:
    config = tmp_path / "raygate.toml"
    config.write_text('base_url = "/gw"\nmax_kernels = 1\n')
    server: ServerProcess = start_server(
        "--default-launcher",
        "local",
        env={"RAYGATE_CONFIG": str(config), "RAYGATE_MAX_KERNELS": "3"},
    )
    gw = server.client
    assert gw.get("/api").status_code == 404
    assert gw.get("/gw/api").status_code == 200
    r = gw.post("/gw/api/kernels", json={"name": "python3"})
    assert r.status_code == 201
    assert r.headers["location"].startswith("/gw/api/kernels/")
    # the variable outranks the file: a second kernel fits under 3
    assert gw.post("/gw/api/kernels", json={}).status_code == 201
    logo = gw.get("/gw/api/kernelspecs").json()["kernelspecs"]["python3"]["resources"]["logo-64x64"]
    assert logo.startswith("/gw/kernelspecs/")
    assert gw.get(logo).status_code == 200


def test_bad_config_is_a_clear_error(tmp_path, refused_serve) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("no_such_setting = 1\n")
    r = refused_serve("--config", str(config))
    assert r.exit_code == 2, r.output
    assert "no_such_setting" in r.stderr
    r = refused_serve("--default-launcher", "nowhere")
    assert r.exit_code == 2, r.output
    assert "nowhere" in r.stderr
    assert "local" in r.stderr and "ray" in r.stderr  # the known kinds


def test_cors(start_server) -> None:
    server: ServerProcess = start_server(
        "--default-launcher", "local", "--allow-origin", "https://lab.example"
    )
    r = httpx.options(
        server.url + "/api/kernels",
        headers={
            "Origin": "https://lab.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://lab.example"
    r = server.client.get("/api", headers={"Origin": "https://lab.example"})
    assert r.headers["access-control-allow-origin"] == "https://lab.example"


async def test_culling(start_server) -> None:
    server: ServerProcess = start_server(
        "--default-launcher", "local", "--cull-idle-timeout", "2", "--cull-interval", "0.5"
    )
    gw = server.client
    idle = gw.start_kernel()
    connected = gw.start_kernel()
    ws = await gw.connect(connected["id"])
    await ws.execute("1")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ids = {k["id"] for k in gw.get("/api/kernels").json()}
        if idle["id"] not in ids:
            break
        await asyncio.sleep(0.2)
    assert idle["id"] not in ids
    # a connected kernel stays unless --cull-connected
    await asyncio.sleep(2.5)
    assert gw.get(f"/api/kernels/{connected['id']}").status_code == 200
    await ws.close()


def test_kernel_processes_are_own_session(start_server) -> None:
    """Ctrl-C at the gateway's terminal must not interrupt every kernel."""
    server: ServerProcess = start_server("--default-launcher", "local")
    server.client.start_kernel()
    (pid,) = server.kernel_pids()[:1]
    assert os.getsid(pid) == pid


def test_a_local_gateway_does_not_import_what_other_launchers_need(start_server) -> None:
    """Every test and every operator's restart pays a gateway's start: the libraries of the
    launchers it does not use (distributed, asyncssh) and IPython (which jupyter_client
    imports only to find ``~/.ipython/kernels``) stay unimported until used."""
    server: ServerProcess = start_server(
        "--default-launcher", "local", env={"PYTHONPROFILEIMPORTTIME": "1"}
    )
    assert server.client.get("/api/kernelspecs").json()["default"] == "python3"
    started = server.output().split("raygate ready", 1)[0]
    imported = set(re.findall(r"^import time:.*\|\s+([\w.]+)$", started, re.MULTILINE))
    assert "raygate.app" in imported  # the log is the import profile asked for
    assert not imported & {"distributed", "asyncssh", "IPython", "ray"}
