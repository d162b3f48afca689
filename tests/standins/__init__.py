"""Stand-ins for cluster servers that cannot run on a test machine.

Each speaks the real REST API of the server it stands in for (the paths, bodies and
status codes the official clients use) and really runs what it is asked to run as a local
process, so raygate's launchers are exercised end to end. What they leave out is said in
each module's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ticking_lifespan(tick: Callable[[], None], shutdown: Callable[[], None]) -> Any:
    """A Starlette lifespan that runs ``tick`` (the stand-in's scheduler and node) every
    0.1 s while the server runs, and ``shutdown`` when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    tick()
                except Exception as exc:  # keep serving; the test reads the log
                    print("stand-in tick failed:", repr(exc), flush=True)
                await asyncio.sleep(0.1)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            shutdown()

    return lifespan


async def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """Stop a container's or pod's process group as a NodeManager or kubelet does: SIGTERM,
    then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start(
    module: str,
    port: int,
    args: list[str],
    log_path: str,
    probe: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Run ``python -m standins.<module> --port <port> ...`` (with ``env`` added to its
    environment) and wait until ``probe`` answers over HTTP."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"standins.{module}", "--port", str(port), *args],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        cwd=HERE,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=1)
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"the stand-in {module} did not come up") from None
            time.sleep(0.1)
