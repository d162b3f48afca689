"""A newcomer's first kernel: raygate installed in a virtualenv and run without activating
it (a systemd unit, pipx, a container entrypoint), with a PATH that lacks the venv's
``bin/``. The stock ipykernel kernelspec says ``python``; the kernel supervisor must take
that for its own interpreter (as jupyter_client does), for local and for Ray kernels,
instead of looking it up on PATH (where there is none, or another Python)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import TOKEN, free_port
from kgclient import Gateway

PATH = "/usr/bin:/bin"
STOCK_PYTHON3 = {  # ipykernel's own share/jupyter/kernels/python3/kernel.json
    "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
    "metadata": {"debugger": True},
}
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.ray  # an embedded Ray


def make_venv(root: Path) -> Path:
    """A fresh venv over this interpreter's packages, with raygate installed editable."""
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run(
        [base, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
        + ["-q", "--no-deps", "-e", str(REPO)],
        check=True,
    )
    return venv


def write_specs(root: Path) -> Path:
    specs = root / "kernels"
    for name, launcher in (("python3", "ray"), ("python3-local", "local")):
        spec = {**STOCK_PYTHON3, "metadata": {**STOCK_PYTHON3["metadata"]}}
        spec["metadata"]["raygate"] = {"launcher": launcher}
        (specs / name).mkdir(parents=True)
        (specs / name / "kernel.json").write_text(json.dumps(spec))
    return specs


async def test_stock_kernelspec_runs_from_a_venv_that_is_not_activated(tmp_path: Path) -> None:
    assert shutil.which("python", path=PATH) is None, "this PATH must have no `python`"
    venv = make_venv(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = PATH
    log_path = tmp_path / "raygate.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "raygate"), "serve", "--port", str(port)]
            + ["--auth-token", TOKEN, "--kernelspec-dirs", str(write_specs(tmp_path))],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        gw = Gateway(url, TOKEN)
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if gw.get("/api", timeout=1).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for name, launcher in (("python3-local", "local"), ("python3", "ray")):
            kernel = gw.start_kernel(name)
            assert kernel["launcher"] == launcher
            result = await gw.run(kernel["id"], "import sys; print(sys.executable)", timeout=90)
            assert result.stdout == f"{venv / 'bin' / 'python'}\n", (launcher, result)
            gw.shutdown_kernel(kernel["id"])
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
