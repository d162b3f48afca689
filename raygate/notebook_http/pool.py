"""The kernels that serve a notebook's endpoints: one request at a time on each, FIFO.

:class:`EndpointPool` starts ``--prespawn-count`` kernels through the gateway's
:class:`~raygate.kernels.registry.KernelRegistry` (admission, launchers and placement are
the kernel API's: on Ray each is a kernel actor placed by the kernelspec's resources), runs
the notebook's seed cells on each, and lends them to requests (:meth:`EndpointPool.run`).
Requests beyond the free kernels wait in a bounded queue; beyond it they are refused (503).

A kernel that dies mid-request fails that request (500) and is replaced: the registry
restarts a dead kernel (``--restart-limit``), after which the pool seeds it again, or the
pool starts a new one where the registry gave it up. A request that runs past the timeout
interrupts its kernel and is answered 504; a kernel that does not come back from the
interrupt is restarted and seeded again. Nothing else restarts.

With a ``most`` above ``size`` the pool grows while requests wait (one kernel started per
waiting request, up to ``most``) and stops kernels beyond ``size`` that stayed idle for
``idle_stop`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from raygate.errors import APIError
from raygate.kernels.kernel import Kernel
from raygate.kernels.registry import KernelRegistry

from .execute import Execution, ExecutionTimeout, KernelGone, Outcome
from .notebook import NotebookApi

log = logging.getLogger("raygate.notebook_http")

KERNEL_ENV = {"KERNEL_GATEWAY": "1"}
"""Set in every endpoint kernel, as Kernel Gateway does: notebooks test it to skip cells
meant for interactive use (``if "KERNEL_GATEWAY" not in os.environ``)."""
INTERRUPT_GRACE = 5.0
"""Seconds a timed-out request's kernel has to become idle after the interrupt."""
SEED_TIMEOUT = 600.0
REVIVE_PAUSE = (1.0, 60.0)
"""First and longest pause between attempts to bring a failed kernel back."""
LATENCY_WINDOW = 60.0
"""Seconds of finished requests kept for the status page's requests/s and latency."""


class PoolError(Exception):
    """The pool could not be started (a kernel did not start, or a seed cell failed)."""


class SeedError(Exception):
    """A seed cell raised on a kernel."""


@dataclass
class Slot:
    """One endpoint kernel, and what the pool knows of it."""

    index: int
    kernel: Kernel | None = None
    state: str = "starting"
    """starting, idle, busy, reviving, or failed."""
    restarts_seen: int = 0
    """The registry's restart count when it was last seeded: a higher one is a new process."""
    requests: int = 0
    errors: int = 0
    idle_since: float = 0.0
    extra: bool = False
    """Started because requests waited (beyond --prespawn-count): stopped when idle."""


@dataclass
class Finished:
    at: float
    seconds: float
    status: int


@dataclass
class PoolStats:
    """Counts for /metrics and the status page (the pool keeps them, the readers read)."""

    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)
    """(method, endpoint path, status) -> requests answered."""
    rejected: int = 0
    """Requests refused because the queue was full."""
    timeouts: int = 0
    replaced: int = 0
    recent: deque[Finished] = field(default_factory=deque)
    latency_sum: float = 0.0
    latency_count: int = 0


class EndpointPool:
    """See the module docstring. The handlers call :meth:`run`; the app's lifespan calls
    :meth:`open` and :meth:`close`."""

    def __init__(
        self,
        registry: KernelRegistry,
        api: NotebookApi,
        kernel_name: str,
        size: int,
        queue_limit: int,
        timeout: float,
        most: int = 0,
        idle_stop: float = 60.0,
    ) -> None:
        self.registry = registry
        self.api = api
        self.kernel_name = kernel_name
        self.size = size
        self.queue_limit = queue_limit
        self.timeout = timeout
        self.most = max(most, size)
        self.idle_stop = idle_stop
        self.slots = [Slot(i) for i in range(size)]
        self._next_index = size
        self.free: asyncio.Queue[Slot] = asyncio.Queue()
        self.waiting = 0
        self.stats = PoolStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Start and seed every kernel; raises :class:`PoolError` (after shutting down
        those that started) when one cannot be."""
        results = await asyncio.gather(
            *(self._bring_up(slot) for slot in self.slots), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.close()
            first = failures[0]
            detail = first.message if isinstance(first, APIError) else str(first)
            raise PoolError(
                f"notebook-http: {len(failures)} of {self.size} endpoint kernel(s) for "
                f"{self.api.uri} did not start: {detail}"
            )
        for slot in self.slots:
            self._make_free(slot)
        if self.most > self.size:
            self._background(self._shrink_loop(), "notebook-http-shrink")
        log.info(
            "notebook-http: %d kernel(s) of %s serve %d endpoint(s) of %s",
            self.size,
            self.kernel_name,
            len(self.api.endpoints),
            self.api.uri,
        )

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self.slots:
            kernel, slot.kernel = slot.kernel, None
            if kernel is not None and kernel.id in self.registry.kernels:
                with contextlib.suppress(Exception):
                    await self.registry.shutdown(kernel.id)

    async def _bring_up(self, slot: Slot) -> None:
        """Give ``slot`` a seeded kernel: its own after an automatic restart, else a new one."""
        slot.state = "starting"
        kernel = slot.kernel
        if kernel is not None:
            await self._settle(kernel)
        if kernel is None or kernel.id not in self.registry.kernels:
            kernel = slot.kernel = await self.registry.start(self.kernel_name, dict(KERNEL_ENV))
            kernel.serves_gateway = True  # idle between requests, but not to be culled
        elif kernel.restarts == slot.restarts_seen:
            # Not restarted by the registry (a kernel stuck after an interrupt): restart it.
            await self.registry.restart(kernel.id)
        slot.restarts_seen = kernel.restarts
        await self._seed(kernel)

    async def _settle(self, kernel: Kernel) -> None:
        """Wait while the registry works on the kernel (an automatic restart in progress)."""
        deadline = time.monotonic() + kernel.handle.request.launch_timeout + 30
        while kernel.busy_with and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def _seed(self, kernel: Kernel) -> None:
        for index, code in enumerate(self.api.seed_cells):
            execution = Execution(kernel.channels, code)
            execution.start(SEED_TIMEOUT)
            try:
                outcome = await execution.wait(SEED_TIMEOUT, lambda: kernel.busy_with != "")
            except (ExecutionTimeout, KernelGone):
                raise SeedError(
                    f"seed cell {index + 1} did not finish on kernel {kernel.id}"
                ) from None
            finally:
                execution.close()
            if outcome.error:
                first_line = code.strip().splitlines()[0] if code.strip() else ""
                raise SeedError(
                    f"seed cell {index + 1} ({first_line[:60]!r}) failed on kernel "
                    f"{kernel.id}: {outcome.error.strip()}"
                )
        kernel.channels.execution_state = "idle"

    def _make_free(self, slot: Slot) -> None:
        slot.state = "idle"
        slot.idle_since = time.monotonic()
        self.free.put_nowait(slot)

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _revive(self, slot: Slot) -> None:
        """Bring a slot's kernel back in the background; it serves again once seeded."""
        if self._closing:
            return
        slot.state = "reviving"
        self.stats.replaced += 1
        self._background(self._revive_loop(slot), f"notebook-http-revive-{slot.index}")

    def _grow(self) -> None:
        """Start one more kernel for the requests that wait, if ``most`` allows; called by
        :meth:`_acquire` when no kernel is free."""
        starting = sum(1 for s in self.slots if s.state == "starting")
        if self._closing or len(self.slots) >= self.most or starting >= self.waiting:
            return
        slot = Slot(self._next_index, extra=True)
        self._next_index += 1
        self.slots.append(slot)
        log.info(
            "notebook-http: %d request(s) wait; starting endpoint kernel %d",
            self.waiting,
            slot.index,
        )
        self._background(self._revive_loop(slot), f"notebook-http-grow-{slot.index}")

    async def _shrink_loop(self) -> None:
        """Stop kernels beyond ``size`` once idle for ``idle_stop`` seconds."""
        while not self._closing:
            await asyncio.sleep(min(max(self.idle_stop / 4, 0.1), 5.0))
            now = time.monotonic()
            # Only the extra ones: the first ``size`` (seeded at start) stay, also when one of
            # them has been idle longer than an extra that is idle too.
            idle = [
                s
                for s in self.slots
                if s.extra and s.state == "idle" and now - s.idle_since >= self.idle_stop
            ]
            if len(self.slots) <= self.size or not idle:
                continue
            # Free kernels are taken out of the queue (no await since the check, so no
            # request takes one meanwhile).
            slot = idle[0]
            queued = [self.free.get_nowait() for _ in range(self.free.qsize())]
            for other in queued:
                if other is not slot:
                    self.free.put_nowait(other)
            if slot not in queued:  # a request has just taken it (its state not yet set)
                continue
            self.slots.remove(slot)
            slot.state = "stopping"
            log.info(
                "notebook-http: endpoint kernel %d idle for %g s; stopping it",
                slot.index,
                self.idle_stop,
            )
            kernel, slot.kernel = slot.kernel, None
            if kernel is not None and kernel.id in self.registry.kernels:
                with contextlib.suppress(Exception):
                    await self.registry.shutdown(kernel.id)

    async def _revive_loop(self, slot: Slot) -> None:
        pause = REVIVE_PAUSE[0]
        while not self._closing:
            try:
                await self._bring_up(slot)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                detail = exc.message if isinstance(exc, APIError) else str(exc)
                if slot.extra and slot.kernel is None:  # a kernel to grow with: no matter
                    log.warning("notebook-http: no extra endpoint kernel: %s", detail)
                    self.slots.remove(slot)
                    return
                slot.state = "failed"
                log.error(
                    "notebook-http: endpoint kernel %d could not be brought back (again in "
                    "%g s): %s",
                    slot.index,
                    pause,
                    detail,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, REVIVE_PAUSE[1])
                continue
            log.info("notebook-http: endpoint kernel %d serves again", slot.index)
            self._make_free(slot)
            return

    # -- serving ------------------------------------------------------------------------

    def gone(self, slot: Slot) -> bool:
        """Whether the slot's kernel is no longer the process that was seeded: the registry
        restarts it, restarted it, or let it go (shut down, culled, or dead for good)."""
        k = slot.kernel
        return (
            k is None
            or k.busy_with != ""
            or k.restarts != slot.restarts_seen
            or k.id not in self.registry.kernels
        )

    async def _acquire(self, deadline: float) -> Slot:
        if self.free.empty() and self.waiting >= self.queue_limit:
            self.stats.rejected += 1
            raise APIError(
                503,
                f"All {len(self.slots)} endpoint kernel(s) are busy and {self.waiting} request(s) "
                "wait already; try again later",
            )
        self.waiting += 1
        try:
            if self.free.empty():
                self._grow()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                slot = await asyncio.wait_for(self.free.get(), remaining)
                if self.gone(slot):  # died (and maybe restarted) while it was free
                    self._revive(slot)
                    continue
                slot.state = "busy"
                return slot
        except TimeoutError:
            self.stats.timeouts += 1
            raise APIError(
                504, f"No endpoint kernel became free within {self.timeout:g} s"
            ) from None
        finally:
            self.waiting -= 1

    async def run(self, codes: list[str]) -> list[Outcome]:
        """Run ``codes`` in order on one kernel, stopping after one that raised; returns
        their outcomes. Raises :class:`APIError`: 503 when the queue is full, 504 after
        the timeout (the kernel is interrupted), 500 when the kernel died meanwhile."""
        deadline = time.monotonic() + self.timeout if self.timeout else float("inf")
        slot = await self._acquire(deadline)
        assert slot.kernel is not None
        kernel = slot.kernel
        slot.requests += 1
        outcomes: list[Outcome] = []
        healthy = True
        try:
            for code in codes:
                execution = Execution(kernel.channels, code)
                execution.start(self.timeout or SEED_TIMEOUT)
                try:
                    remaining = deadline - time.monotonic() if self.timeout else 0.0
                    if self.timeout and remaining <= 0:
                        raise ExecutionTimeout()
                    outcome = await execution.wait(remaining, lambda: self.gone(slot))
                except ExecutionTimeout:
                    healthy = await self._interrupt(slot, execution)
                    self.stats.timeouts += 1
                    raise APIError(
                        504,
                        f"The endpoint's code did not finish within {self.timeout:g} s; "
                        "its kernel was interrupted",
                    ) from None
                finally:
                    execution.close()
                outcomes.append(outcome)
                if outcome.error:
                    break
        except KernelGone:
            healthy = False
            slot.errors += 1
            reason = await kernel.handle.failure_reason()
            log.warning(
                "notebook-http: endpoint kernel %d died during a request: %s",
                slot.index,
                reason.strip().splitlines()[-1] if reason.strip() else "no reason known",
            )
            raise APIError(
                500, "The endpoint's kernel died while it ran the request; it is being replaced"
            ) from None
        finally:
            if healthy and not self.gone(slot):
                self._make_free(slot)
            else:
                self._revive(slot)
        return outcomes

    async def _interrupt(self, slot: Slot, execution: Execution) -> bool:
        """Interrupt a kernel whose request timed out; True if it is idle again."""
        kernel = slot.kernel
        assert kernel is not None
        log.warning(
            "notebook-http: a request ran past %g s on endpoint kernel %d; interrupting it",
            self.timeout,
            slot.index,
        )
        try:
            await self.registry.interrupt(kernel.id)
            await execution.wait(INTERRUPT_GRACE, lambda: self.gone(slot))
        except Exception as exc:
            log.warning("notebook-http: endpoint kernel %d did not come back: %s", slot.index, exc)
            return False
        return True

    def record(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count an answered request (called by the handler, for every answer)."""
        key = (method, path, status)
        self.stats.requests[key] = self.stats.requests.get(key, 0) + 1
        self.stats.latency_sum += seconds
        self.stats.latency_count += 1
        now = time.monotonic()
        recent = self.stats.recent
        recent.append(Finished(now, seconds, status))
        while recent and recent[0].at < now - LATENCY_WINDOW:
            recent.popleft()
