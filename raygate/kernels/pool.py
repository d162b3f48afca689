"""Warm kernel pools: kernels started ahead of demand, handed out on ``POST /api/kernels``.

``--prewarm python3=2,py-gpu=1`` keeps that many ready kernels of each kernelspec, started
with the kernelspec's own resources (no per-request ``KERNEL_*`` overrides) through the
same launcher and the same :meth:`KernelHost.launch` as any kernel, admitted by the same
:meth:`~.admission.Admission.pool_request` rules, so they are placed like any other. A start request that fits a warm kernel (same kernelspec, same resource
shape, an env that can still reach the kernel) gets it in tens of milliseconds instead of
a launch; the pool then starts a replacement in the background.

With ``--prewarm-max M`` a shelf follows demand: its target is the number of starts it
was asked for in the last :data:`DEMAND_WINDOW` seconds, between its ``--prewarm`` size
and ``M``, so a class starting together finds the next burst warm; once the starts stop,
the target falls back and the ready kernels above it are shut down. Growth only fills
room that ``--max-kernels`` leaves, and a shelf whose kernels cannot start (the cluster is
full: their starts answer 503) backs off like any failing shelf.

Pool kernels belong to no user until handed out: they are not in the registry's kernel
table, so ``GET /api/kernels`` does not list them, culling never sees them and per-user
limits do not count them. They do count against ``--max-kernels``: the pool only fills
room that users leave, and gives up ready kernels when a cold start needs the room.

A warm kernel keeps the id it was launched with (a fresh uuid nobody has seen; launchers
name actors and files by it). At hand-out it takes on the request's user, env and working
directory: for Python kernels a silent ``execute_request`` sets ``os.environ`` and
``os.chdir`` (silent execution leaves the execution count alone, so the user's first cell
is still ``[1]``); kernels of other languages are only handed out to requests whose env
would not reach the kernel anyway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from raygate.config import GatewayConfig
from raygate.errors import APIError
from raygate.launchers import Launcher, LaunchRequest
from raygate.launchers.kernelside.env import kernel_env
from raygate.logs import kernel_id_var

from .admission import Admission
from .kernel import Kernel, RegistryObserver

log = logging.getLogger("raygate.pool")

GATEWAY_ONLY_ENV = frozenset({"KERNEL_LAUNCH_TIMEOUT"})
"""Request variables the gateway itself consumes: a warm kernel need not have them."""
APPLY_TIMEOUT = 10.0
"""Seconds a warm kernel has to take on a request's env before a cold start is made instead."""
DEMAND_WINDOW = 120.0
"""Seconds of starts a growing shelf (``--prewarm-max``) sizes itself by."""
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
"""Back-off, in seconds, after a pool kernel failed to start (doubling up to the maximum)."""

_PER_REQUEST = frozenset(
    {"version", "kernel_id", "spec", "env", "username", "cwd", "launch_timeout", "pooled"}
)
"""LaunchRequest fields a hand-out sets on a warm kernel; every other field (resources,
encryption, ...) is fixed at launch and must match the request's."""


def _shape(request: LaunchRequest) -> dict[str, Any]:
    """What a kernel is launched as and cannot change afterwards."""
    shape = {k: v for k, v in request.to_record().items() if k not in _PER_REQUEST}
    shape["spec"] = request.spec.name
    return shape


def _kernel_env(request: LaunchRequest) -> dict[str, str]:
    """The variables a cold start would have given the kernel that a warm one (started
    with no request env and no user) lacks: the one composition, compared both ways."""
    warm = kernel_env(request.kernel_id, host={})
    cold = kernel_env(request.kernel_id, host={}, request=request.env, username=request.username)
    return {k: v for k, v in cold.items() if warm.get(k) != v}


def _setup_code(env: dict[str, str], cwd: str | None) -> str:
    """Python that gives a running kernel what a cold start gives it (names kept private)."""
    lines = ["import os as __raygate_os", f"__raygate_os.environ.update({env!r})"]
    if cwd:  # like the launchers: a directory that does not exist there is ignored
        lines.append(f"if __raygate_os.path.isdir({cwd!r}): __raygate_os.chdir({cwd!r})")
    lines.append("del __raygate_os")
    return "\n".join(lines)


@dataclass
class _Shelf:
    """One kernelspec's warm kernels."""

    name: str
    size: int
    launcher: Launcher
    most: int = 0
    """The most it grows to with demand (``--prewarm-max``; at most ``size``: fixed)."""
    ready: list[Kernel] = field(default_factory=list)
    starting: int = 0
    failures: int = 0
    retry_at: float = 0.0
    asked: deque[float] = field(default_factory=deque)
    """When starts of this kernelspec were asked for, the last DEMAND_WINDOW seconds."""

    def target(self, now: float) -> int:
        """Ready kernels wanted now: ``size``, or the recent starts, up to ``most``."""
        while self.asked and now - self.asked[0] > DEMAND_WINDOW:
            self.asked.popleft()
        return max(self.size, min(self.most, len(self.asked)))


class KernelHost(Protocol):
    """What the pool needs of the gateway's kernel table; :class:`~.registry.KernelRegistry`
    implements it. The pool's kernels are not in the table until handed out."""

    config: GatewayConfig
    admission: Admission
    observer: RegistryObserver

    def in_use(self) -> int:
        """Kernels in the table plus starts in flight (they count against --max-kernels)."""
        ...

    async def launch(self, launcher: Launcher, request: LaunchRequest, observe: bool) -> Kernel:
        """Start a kernel and wait until it answers (raises APIError); ``observe=False``:
        no user's start, not counted in the start metrics. Not put in the table."""
        ...

    def hold(self, kernel_id: str) -> None:
        """Keep discovery from adopting ``kernel_id`` (a kernel this gateway is starting,
        or keeps in its pool) until :meth:`unhold`."""
        ...

    def unhold(self, kernel_id: str) -> None:
        """Undo :meth:`hold`: the kernel is in the table now, or never started."""
        ...

    def retire(self, kernel: Kernel) -> asyncio.Future[None]:
        """Shut down a kernel that is not in the table, in the background, and never adopt
        its id; the future is done when it is stopped."""
        ...


class WarmPool:
    """The warm kernels of one gateway; owned by its :class:`~.registry.KernelRegistry`."""

    def __init__(self, host: KernelHost, sizes: dict[str, int]) -> None:
        """Raises ValueError, for ``raygate serve`` to report, when a kernelspec is unknown
        or cannot be started by this gateway."""
        self.host = host
        self.shelves: dict[str, _Shelf] = {}
        most = host.config.prewarm_max
        for name, size in sizes.items():
            launcher = host.admission.pool_request(name).launcher  # and its resources are valid
            self.shelves[name] = _Shelf(name, size, launcher, most=most)
        self.closed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._fills: set[asyncio.Task] = set()
        self._stops: set[asyncio.Future] = set()

    # -- what the gateway shows ------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """Per kernelspec: target size, ready and starting counts, the ready kernels' ids."""
        return {
            name: {
                "size": shelf.size,
                "target": shelf.target(time.monotonic()),
                "ready": len(shelf.ready),
                "starting": shelf.starting,
                "launcher": shelf.launcher.kind,
                "kernels": [k.id for k in shelf.ready],
            }
            for name, shelf in sorted(self.shelves.items())
        }

    def total(self) -> int:
        """Pool kernels running or being started (they count against --max-kernels)."""
        return sum(len(s.ready) + s.starting for s in self.shelves.values())

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        if self.shelves:
            self._task = asyncio.create_task(self._run(), name="warm-pool")

    async def close(self) -> None:
        """Stop refilling and shut every pool kernel down, whatever its launcher: a pool
        kernel belongs to nobody, so none is left for a later gateway to adopt."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Launches in flight are awaited, not cancelled (a cancelled launch could leave its
        # kernel running); each shuts its kernel down as it finishes, the pool being closed.
        await asyncio.gather(*self._fills, return_exceptions=True)
        for shelf in self.shelves.values():
            while shelf.ready:
                self._discard(shelf.ready.pop())
        await asyncio.gather(*self._stops, return_exceptions=True)

    # -- hand-out ----------------------------------------------------------------------

    async def take(self, request: LaunchRequest) -> Kernel | None:
        """A warm kernel that now serves ``request``, or None for a cold start; before
        answering None, ready kernels are given up where the cold start needs their room
        under --max-kernels."""
        kernel = self._pick(request)
        if kernel is None:
            self._make_room()
            return None
        self._wake.set()  # refill
        started = time.monotonic()
        try:
            if not await kernel.handle.is_alive():
                raise RuntimeError("it died while in the pool")
            await self._apply(kernel, request)
        except Exception as exc:
            log.warning("kernel %s: warm kernel not used (%s); starting a new one", kernel.id, exc)
            self._discard(kernel)
            self._make_room()
            return None
        # Only the id stays the pool's (launchers named things by it); the rest is the
        # request's, so that restarts and the kernel model see the user's settings.
        await kernel.handle.assign(replace(request, kernel_id=kernel.id))
        kernel.username = request.username
        kernel.warm = True
        kernel.channels.last_activity = datetime.now(UTC)  # idle from now, for culling
        self.host.unhold(kernel.id)  # the registry serves it from here on
        kernel_id_var.set(kernel.id)
        log.info(
            "kernel %s: %s served from the warm pool in %.3fs",
            kernel.id,
            kernel.name,
            time.monotonic() - started,
        )
        self.host.observer.kernel_started(kernel, time.monotonic() - started)
        return kernel

    def _pick(self, request: LaunchRequest) -> Kernel | None:
        """Takes a fitting ready kernel off its shelf; synchronous, so that concurrent
        starts never get the same one."""
        shelf = self.shelves.get(request.spec.name)
        if shelf is None or self.closed:
            return None
        if shelf.most > shelf.size:
            shelf.asked.append(time.monotonic())
            self._wake.set()  # grow, even when this start finds nothing
        if not self._can_apply(request, request.spec.language):
            return None
        wanted = _shape(request)
        for kernel in shelf.ready:
            if _shape(kernel.handle.request) == wanted:
                shelf.ready.remove(kernel)
                return kernel
        return None

    @staticmethod
    def _can_apply(request: LaunchRequest, language: str) -> bool:
        if language.lower() == "python":
            return True
        # Other kernels cannot be told: only requests that would give them nothing fit.
        extra = set(_kernel_env(request)) - GATEWAY_ONLY_ENV
        return not extra and not request.cwd

    async def _apply(self, kernel: Kernel, request: LaunchRequest) -> None:
        """Gives a running Python kernel the request's env and working directory."""
        env, cwd = _kernel_env(request), request.cwd
        if not env and not cwd:
            return
        content = {
            "code": _setup_code(env, cwd),
            "silent": True,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        timeout = min(APPLY_TIMEOUT, request.launch_timeout)
        reply = await kernel.channels.request("shell", "execute_request", content, timeout)
        answer = reply.content()
        if answer.get("status") != "ok":
            raise RuntimeError(
                f"setting its env failed: {answer.get('ename', '')} {answer.get('evalue', '')}"
            )
        kernel.channels.execution_state = "idle"  # the busy/idle of this execution

    async def _warm_up(self, kernel: Kernel) -> None:
        """Run the hand-out's code once with nothing to set: a kernel's first execution
        costs more than later ones, and that cost belongs to the pool, not to a user."""
        if kernel.handle.request.spec.language.lower() != "python":
            return
        content = {"code": _setup_code({}, None), "silent": True, "store_history": False}
        try:
            await kernel.channels.request("shell", "execute_request", content, APPLY_TIMEOUT)
        except Exception as exc:  # only an optimisation
            log.debug("kernel %s: warm-up execution failed: %s", kernel.id, exc)
        kernel.channels.execution_state = "idle"

    async def reapply(self, kernel: Kernel) -> None:
        """After a restart of a warm-served kernel: its launcher may restart it with the
        pool's (empty) env, so the request's is set again."""
        if kernel.handle.request.spec.language.lower() != "python":
            return
        try:
            await self._apply(kernel, kernel.handle.request)
        except Exception as exc:
            log.warning("kernel %s: could not set its env again after restart: %s", kernel.id, exc)

    # -- keeping the pool full ----------------------------------------------------------

    def _room(self) -> float:
        """How many more kernels --max-kernels allows (infinite without a limit)."""
        limit = self.host.config.max_kernels
        if not limit:
            return math.inf
        return limit - self.host.in_use() - self.total()

    def _make_room(self) -> None:
        """Give up ready kernels while users' kernels and pool kernels exceed the limit."""
        while self._room() < 0:
            fullest = max(self.shelves.values(), key=lambda s: len(s.ready), default=None)
            if fullest is None or not fullest.ready:
                return  # launches in flight give up their kernels when they finish
            kernel = fullest.ready.pop()
            log.info("kernel %s: warm kernel shut down to make room for a start", kernel.id)
            self._discard(kernel)

    def _top_up(self) -> None:
        now = time.monotonic()
        # Growth past --prewarm waits for users' starts in flight: it would take their CPU.
        busy = self.host.admission.starting > 0
        for shelf in self.shelves.values():
            target = shelf.target(now)
            if busy:
                target = max(shelf.size, min(target, len(shelf.ready) + shelf.starting))
            while len(shelf.ready) > target:  # demand fell: the newest go first
                kernel = shelf.ready.pop()
                log.info("kernel %s: warm kernel shut down, fewer starts now", kernel.id)
                self._discard(kernel)
            while (
                not self.closed
                and len(shelf.ready) + shelf.starting < target
                and self._room() >= 1
                and now >= shelf.retry_at
            ):
                shelf.starting += 1
                task = asyncio.create_task(self._fill(shelf), name=f"warm-{shelf.name}")
                self._fills.add(task)
                task.add_done_callback(self._fills.discard)

    async def _fill(self, shelf: _Shelf) -> None:
        try:
            request = self.host.admission.pool_request(shelf.name).request
        except ValueError as exc:
            shelf.starting -= 1
            self._failed(shelf, str(exc))
            return
        # Held like a start in flight: discovery must not take it for another
        # replica's kernel, nor adopt it while it is in the pool.
        self.host.hold(request.kernel_id)
        try:
            kernel = await self.host.launch(shelf.launcher, request, observe=False)
        except APIError as exc:
            self.host.unhold(request.kernel_id)
            self._failed(shelf, exc.message)
            return
        else:
            await self._warm_up(kernel)
        finally:
            shelf.starting -= 1
        shelf.failures = 0
        wanted = shelf.target(time.monotonic())
        if self.closed or len(shelf.ready) >= wanted or self._room() < 1:
            self._discard(kernel)  # no longer wanted, or its room went to a user's kernel
            return
        shelf.ready.append(kernel)
        log.info("kernel %s: %s warm and ready in the pool", kernel.id, shelf.name)

    def _failed(self, shelf: _Shelf, message: str) -> None:
        shelf.failures += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (shelf.failures - 1))
        shelf.retry_at = time.monotonic() + delay
        log.warning(
            "warm pool %s: a kernel failed to start (retrying in %.0fs): %s",
            shelf.name,
            delay,
            message,
        )
        self._wake.set()  # so that the retry is made when its time comes

    async def _run(self) -> None:
        interval = self.host.config.monitor_interval
        while True:
            try:
                await self._check_liveness()
                self._top_up()
            except Exception:
                log.exception("warm pool upkeep failed; carrying on")
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _check_liveness(self) -> None:
        """Pool kernels that died are shut down (releasing what they hold) and replaced."""
        by_launcher: dict[Launcher, list[Kernel]] = {}
        for shelf in self.shelves.values():
            for kernel in shelf.ready:
                by_launcher.setdefault(kernel.launcher, []).append(kernel)
        for launcher, kernels in by_launcher.items():
            alive = await launcher.check_alive([k.handle for k in kernels])
            for kernel in kernels:
                shelf = self.shelves[kernel.name]
                if not alive.get(kernel.id, True) and kernel in shelf.ready:
                    shelf.ready.remove(kernel)
                    reason = await kernel.handle.failure_reason() or "the kernel process exited"
                    log.warning("kernel %s: warm kernel died (%s); replacing it", kernel.id, reason)
                    self._discard(kernel)

    def _discard(self, kernel: Kernel) -> None:
        """Shut a pool kernel down in the background (close() waits for it)."""
        task = self.host.retire(kernel)  # never to be adopted as someone's kernel
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)
