"""The kernel registry: the one place that owns kernel state.

It starts kernels through launchers, keeps each kernel's bridge, activity and
connections, enforces limits, restarts kernels that die and culls idle ones. It knows
nothing of where kernels run; that is the launchers' business.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import itertools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from datetime import UTC, datetime
from typing import Any

import zmq.asyncio

from raygate.bridge.channels import KernelChannels, KernelNotReady
from raygate.bridge.messages import new_message
from raygate.bridge.watermarks import Watermarks
from raygate.config import GatewayConfig
from raygate.errors import APIError
from raygate.kernelspecs import KernelSpecs
from raygate.launchers import KernelHandle, KernelStartError, Launcher, LaunchRequest
from raygate.launchers.remote import default_state_dir
from raygate.limits import allow_sockets, check_room, out_of_files
from raygate.logs import kernel_id_var, kernel_scoped
from raygate.resources import ResourceRequest

from .admission import Admission
from .caps import Reservations, reservations_for
from .kernel import Kernel, RegistryObserver, consecutive_restarts, iso
from .pool import WarmPool

__all__ = ["Kernel", "KernelRegistry", "RegistryObserver", "iso"]

log = logging.getLogger("raygate.registry")

LAUNCH_GRACE = 5.0
"""Seconds past the launch timeout before the registry cuts a launcher off, so that the
launcher's own timeout, with its better message (what it waited for), comes first."""
LOOKUP_DISCOVERY_INTERVAL = 0.5
NO_FDS = "the gateway ran out of file descriptors"
PORT_TAKEN = "Address already in use"
PORT_ATTEMPTS = 3
SLOW_LIVENESS_CHECK = 10.0
"""Seconds after which a launcher's liveness check is logged as slow."""


class _Ids(Collection[str]):
    """Several collections of kernel ids seen as one, without copying them."""

    def __init__(self, *groups: Collection[str]) -> None:
        self.groups = groups

    def __contains__(self, kernel_id: object) -> bool:
        return any(kernel_id in group for group in self.groups)

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self.groups)

    def __len__(self) -> int:
        return sum(map(len, self.groups))


def _serving(handle: KernelHandle) -> Callable[[], Awaitable[bool]]:
    """Liveness of a starting kernel for the readiness wait: alive, and not stuck on a port
    another process took first. ipykernel that fails to bind keeps running without serving
    (its started threads hold the process up), so its death cannot be waited for; its
    output is read at most once a second."""
    checked = time.monotonic()

    async def serving() -> bool:
        nonlocal checked
        if not await handle.is_alive():
            return False
        if time.monotonic() - checked < 1.0:
            return True
        checked = time.monotonic()
        return PORT_TAKEN not in await handle.failure_reason()

    return serving


def _observe_failures(start: Any) -> Any:
    @functools.wraps(start)
    async def observed(self: KernelRegistry, *args: Any, **kwargs: Any) -> Kernel:
        try:
            return await start(self, *args, **kwargs)
        except APIError as exc:
            self.observer.start_failed(exc.status)
            raise
        except Exception:
            self.observer.start_failed(500)
            raise

    return observed


class KernelRegistry:
    """The kernel table. Start requests are admitted by :attr:`admission`; the warm pool
    (:attr:`pool`) uses the public methods of :class:`~.pool.KernelHost` (``in_use``,
    ``launch``, ``hold``, ``unhold``, ``retire``) and nothing else of it."""

    def __init__(
        self,
        config: GatewayConfig,
        kernelspecs: KernelSpecs,
        launchers: dict[str, Launcher],
        reservations: Reservations | None = None,
    ) -> None:
        """``reservations``: where per-user caps are counted (default: this gateway's
        kernels only)."""
        self.config = config
        self.kernelspecs = kernelspecs
        self.launchers = launchers
        self.kernels: dict[str, Kernel] = {}
        self.zmq_context = zmq.asyncio.Context()
        allow_sockets(self.zmq_context)  # libzmq's default of 1023 sockets is 255 kernels
        if reservations is None:
            reservations = reservations_for(config, launchers, self._running_resources)
        self.admission = Admission(
            config, kernelspecs, launchers, reservations, running=lambda: len(self.kernels)
        )
        self._last_miss_discovery = 0.0
        self._stopping: set[asyncio.Future] = set()
        self._monitor: asyncio.Task | None = None
        self._launching: set[str] = set()
        """Ids of kernels this gateway is starting (not to be "discovered" meanwhile)."""
        self._gone: dict[str, None] = {}
        """Ids of kernels this gateway shut down, newest last (not to be adopted again)."""
        self._probes: set[asyncio.Task] = set()
        self._deaths: dict[str, asyncio.Task] = {}
        """Kernels found dead, each handled (restarted or dropped) by a task of its own, so
        that a restart that takes its time holds up no other kernel's."""
        self.observer = RegistryObserver()
        self.pool = WarmPool(self, config.prewarm)
        """Ready kernels for --prewarm; not in ``kernels`` until handed out."""

    # -- lifecycle of the registry ---------------------------------------------

    async def open(self) -> None:
        for launcher in self.launchers.values():
            await launcher.start()
            for handle in await launcher.find_running():
                await self._adopt(launcher, handle)
        self._monitor = asyncio.create_task(self._watch(), name="kernel-monitor")
        self.pool.open()

    async def close(self) -> None:
        """Stop watching and shut down every kernel this gateway owns; kernels of
        launchers whose kernels outlive the gateway are only let go."""
        if self._monitor is not None:
            self._monitor.cancel()
        await self.pool.close()
        await asyncio.gather(*self._stopping, return_exceptions=True)
        for task in [*self._probes, *self._deaths.values()]:
            task.cancel()
        kept = [k for k in self.kernels.values() if k.launcher.kernels_outlive_gateway]
        for kernel in kept:
            del self.kernels[kernel.id]
            await kernel.channels.close(1001, "gateway shutting down; the kernel keeps running")
        if kept:
            log.info("left %d kernel(s) running for the next gateway", len(kept))
        await asyncio.gather(
            *(self.shutdown(kernel_id) for kernel_id in list(self.kernels)),
            return_exceptions=True,
        )
        for launcher in self.launchers.values():
            await launcher.close()
        self.zmq_context.destroy(linger=0)

    @kernel_scoped
    async def _adopt(self, launcher: Launcher, handle: KernelHandle) -> None:
        channels = self._channels_for(handle, launcher)
        # Before the first message is read: sessions a killed gateway served get what
        # arrives from now on, and what the kernel kept, once the probe proves iopub.
        channels.begin_recovery()
        kernel = Kernel(
            handle.kernel_id,
            handle.request.spec.name,
            launcher,
            handle,
            channels,
            username=handle.request.username,
        )
        if handle.created is not None:
            kernel.created = handle.created
        self.kernels[kernel.id] = kernel
        log.info("kernel %s: found running (%s), serving it", kernel.id, launcher.kind)
        # Learn its execution state (and that its sockets answer) without holding up the caller.
        probe = asyncio.create_task(self._probe(kernel), name=f"probe-{kernel.id}")
        self._probes.add(probe)
        probe.add_done_callback(self._probes.discard)

    async def _probe(self, kernel: Kernel) -> None:
        try:
            await kernel.channels.wait_for_ready(10.0, kernel.handle.is_alive)
        except Exception as exc:
            log.warning("kernel %s: found, but it does not answer yet: %s", kernel.id, exc)
            return
        finally:
            await kernel.channels.recover(kernel.handle.kept_output)
        if kernel.channels.execution_state in ("starting", "busy"):
            kernel.channels.execution_state = "idle"

    async def discover(self) -> list[str]:
        """Adopt kernels that another gateway replica started; returns their ids."""
        found = []
        # A view, not a copy: up to 10,000 gone ids, every discovery round, per launcher.
        known = _Ids(self.kernels, self._launching, self._gone)
        for launcher in self.launchers.values():
            for handle in await launcher.find_new(known):
                if handle.kernel_id in self.kernels or handle.kernel_id in self._launching:
                    continue
                if handle.kernel_id in self._gone:
                    continue
                await self._adopt(launcher, handle)
                found.append(handle.kernel_id)
        return found

    def _channels_for(self, handle: KernelHandle, launcher: Launcher) -> KernelChannels:
        watermarks = None
        if launcher.kernels_outlive_gateway and self.config.replay_buffer_bytes > 0:
            # What each session was handed, for the gateway that serves the kernel next.
            root = self.config.state_dir or default_state_dir()
            watermarks = Watermarks(root, handle.kernel_id)
        channels = KernelChannels(
            handle.kernel_id,
            handle.connection,
            self.zmq_context,
            max_buffer_bytes=self.config.ws_buffer_bytes,
            replay_bytes=self.config.replay_buffer_bytes,
            watermarks=watermarks,
        )
        try:
            channels.open()
        except BaseException:
            channels.close_sockets()  # those it opened before it failed (out of fds)
            raise
        return channels

    # -- queries ----------------------------------------------------------------

    def get(self, kernel_id: str) -> Kernel:
        kernel = self.kernels.get(kernel_id)
        if kernel is None:
            raise APIError(404, f"Kernel does not exist: {kernel_id}")
        kernel_id_var.set(kernel_id)  # what the caller logs next is about this kernel
        return kernel

    async def lookup(self, kernel_id: str) -> Kernel:
        """Like :meth:`get`, but a miss asks the launchers first: another replica may have
        just started the kernel. Misses look at most every ``LOOKUP_DISCOVERY_INTERVAL``."""
        if kernel_id not in self.kernels and any(
            launcher.kernels_outlive_gateway for launcher in self.launchers.values()
        ):
            now = time.monotonic()
            if now - self._last_miss_discovery >= LOOKUP_DISCOVERY_INTERVAL:
                self._last_miss_discovery = now
                await self.discover()
        return self.get(kernel_id)

    def list(self) -> list[Kernel]:
        return list(self.kernels.values())

    def _running_resources(self, username: str | None) -> dict[str, ResourceRequest]:
        """What ``username``'s kernels in the table asked for, by id (per-user caps count it)."""
        return {
            k.id: k.handle.request.resources
            for k in self.kernels.values()
            if k.username == username
        }

    def in_use(self) -> int:
        """Kernels in the table plus starts in flight; the pool counts its own on top."""
        return len(self.kernels) + self.admission.starting

    # -- starting -----------------------------------------------------------------

    @_observe_failures
    async def start(
        self,
        name: str | None,
        env: Any,
        user: str | None = None,
        groups: frozenset[str] = frozenset(),
    ) -> Kernel:
        """Start a kernel of kernelspec ``name``. ``user``: the authenticated user (users
        file, JupyterHub or trusted header), who overrides the request's KERNEL_USERNAME;
        ``groups``: theirs."""
        admitted = await self.admission.admit(name, env, user, groups)
        request = admitted.request
        kernel_id_var.set(request.kernel_id)
        self.hold(request.kernel_id)
        try:
            kernel = await self.pool.take(request) or await self.launch(admitted.launcher, request)
        except BaseException:
            await self.admission.ended(request.kernel_id, request.username)
            raise
        finally:
            self.unhold(request.kernel_id)
        self.kernels[kernel.id] = kernel
        # A warm kernel keeps its own id: the claim made under the request's follows it.
        await self.admission.started(request.kernel_id, kernel.id)
        return kernel

    def hold(self, kernel_id: str) -> None:
        """Keep discovery from adopting ``kernel_id`` while this gateway starts it or keeps
        it in its pool; called by ``start`` and the pool."""
        self._launching.add(kernel_id)

    def unhold(self, kernel_id: str) -> None:
        """Undo :meth:`hold`: the kernel is in the table, or did not start."""
        self._launching.discard(kernel_id)

    async def launch(
        self, launcher: Launcher, request: LaunchRequest, observe: bool = True, attempt: int = 1
    ) -> Kernel:
        """Start a kernel and wait until it answers, without putting it in the table;
        ``observe=False`` for the warm pool's kernels, whose launch is no user's start.
        Called by ``start`` and the warm pool.

        Kernels are given free ports to bind, which another process may take first (any
        outgoing connection's source port): such a kernel is started again, with new ports.
        """
        started = time.monotonic()
        name = request.spec.name
        # Refused while the gateway can still answer: out of descriptors, it could not.
        full = check_room(len(self.kernels), self.admission.starting, self.zmq_context)
        if full:
            raise APIError(503, f"Kernel {name} not started: {full}")
        try:
            handle = await asyncio.wait_for(
                launcher.launch(request), request.launch_timeout + LAUNCH_GRACE
            )
        except KernelStartError as exc:
            raise APIError(exc.status, f"Kernel {name} failed to start: {exc}") from None
        except TimeoutError:
            raise APIError(
                504, f"Kernel {name} did not start within {request.launch_timeout:g}s"
            ) from None
        except OSError as exc:
            if not out_of_files(exc):
                raise
            raise APIError(503, f"Kernel {name} not started: {NO_FDS} ({exc})") from None
        try:
            channels = self._channels_for(handle, launcher)
        except (OSError, zmq.ZMQError) as exc:
            await handle.shutdown()  # no kernel without its bridge
            if not out_of_files(exc):
                raise
            raise APIError(503, f"Kernel {name} not started: {NO_FDS} ({exc})") from None
        remaining = request.launch_timeout - (time.monotonic() - started)
        try:
            await channels.wait_for_ready(max(remaining, 1.0), _serving(handle))
        except asyncio.CancelledError:
            # The client gave up (or the gateway stops): no kernel is left for nobody.
            channels.close_sockets()
            await handle.shutdown()
            raise
        except Exception as exc:
            log.warning("kernel %s: not ready: %s; stopping it", request.kernel_id, exc)
            # A kernel still running when time ran out was slow (504); one that died failed.
            status = 504 if await handle.is_alive() else 500
            reason = await handle.failure_reason()
            channels.close_sockets()
            await handle.shutdown()
            if PORT_TAKEN in reason and attempt < PORT_ATTEMPTS:
                log.warning("kernel %s: a port it was given was taken first; again", name)
                return await self.launch(launcher, request, observe, attempt + 1)
            detail = f"{exc}" + (f"\n{reason}" if reason else "")
            raise APIError(status, f"Kernel {name} failed to start: {detail}") from None
        if channels.execution_state in ("starting", "busy"):
            channels.execution_state = "idle"  # the busy/idle of our own probe
        log.info(
            "kernel %s: started %s with %s in %.2fs",
            request.kernel_id,
            name,
            launcher.kind,
            time.monotonic() - started,
        )
        kernel = Kernel(
            request.kernel_id, name, launcher, handle, channels, username=request.username
        )
        if handle.created is not None:  # as the launcher recorded it, for later gateways
            kernel.created = handle.created
        if observe:
            self.observer.kernel_started(kernel, time.monotonic() - started)
        return kernel

    # -- control ------------------------------------------------------------------

    @kernel_scoped
    async def interrupt(self, kernel_id: str) -> None:
        kernel = self.get(kernel_id)
        if kernel.interrupt_mode == "message":
            message = new_message("control", "interrupt_request", {}, kernel.channels.session)
            await kernel.channels.send(message)
        else:
            await kernel.handle.signal(signal.SIGINT)

    @kernel_scoped
    async def restart(self, kernel_id: str, reason: str = "") -> Kernel:
        """Restart the kernel: a client asked for it (``reason`` empty, from the restart
        handler) or it died and is restarted automatically (``reason`` says why, from the
        monitor)."""
        kernel = self.get(kernel_id)
        async with kernel.lock:
            kernel.busy_with = "restarting"
            try:
                await self._restart(kernel, reason)
            finally:
                kernel.busy_with = ""
        return kernel

    async def _restart(self, kernel: Kernel, reason: str) -> None:
        """The statuses clients see are those of jupyter_server's own kernels (its
        ``restarting`` callback, then the new kernel's ``starting``). JupyterLab reads
        `restarting` as "the kernel died and is being restarted automatically" and shows a
        modal error, so it is sent only for those; a restart a client asked for shows the
        old kernel's answer to its ``shutdown_request`` (the supervisor asks it to shut
        down), then ``starting``. That ``starting`` is raygate's: a subscriber reconnecting
        to the new kernel may miss the kernel's own, which is not shown instead."""
        channels = kernel.channels
        if reason:
            channels.broadcast_status("restarting", reason)
        channels.expect_restart()
        try:
            connection = await kernel.handle.restart()
        except KernelStartError as exc:
            raise APIError(exc.status, f"Kernel {kernel.id} failed to restart: {exc}") from None
        if connection != kernel.handle.connection:
            kernel.handle.connection = connection
            channels.reconnect(connection)
        timeout = kernel.handle.request.launch_timeout
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                await channels.wait_for_ready(timeout, _serving(kernel.handle))
                break
            except KernelNotReady as exc:
                detail = await kernel.handle.failure_reason()
                if PORT_TAKEN not in detail or attempt == PORT_ATTEMPTS:
                    log.warning("kernel %s: failed to restart: %s %s", kernel.id, exc, detail)
                    raise APIError(
                        500, f"Kernel {kernel.id} failed to restart: {exc}\n{detail}"
                    ) from None
            # A restart keeps the kernel's ports; one the old kernel (or a process that took
            # it meanwhile) still held: the same restart again, a moment later.
            log.warning("kernel %s: a port was still taken at restart; again", kernel.id)
            await asyncio.sleep(0.5)
            channels.expect_restart()
            try:
                connection = await kernel.handle.restart()
            except KernelStartError as exc:
                raise APIError(exc.status, f"Kernel {kernel.id} failed to restart: {exc}") from None
            if connection != kernel.handle.connection:
                kernel.handle.connection = connection
                channels.reconnect(connection)
        # Only once the new kernel answers: a restart that fails shows `dead` next, with no
        # `starting` between (a kernel that never came up sent none under jupyter_server).
        channels.broadcast_status("starting")
        channels.execution_state = "idle"  # ready: the restart's answer says so
        log.info("kernel %s: restarted", kernel.id)
        if kernel.warm:
            await self.pool.reapply(kernel)

    @kernel_scoped
    async def shutdown(self, kernel_id: str) -> None:
        kernel = self.kernels.pop(kernel_id, None)
        if kernel is None:
            raise APIError(404, f"Kernel does not exist: {kernel_id}")
        self.observer.kernel_removed(kernel)
        kernel.busy_with = "shutting down"
        stopped = self.retire(kernel)
        await self.admission.ended(kernel_id, kernel.username)
        await asyncio.shield(stopped)

    def retire(self, kernel: Kernel) -> asyncio.Future[None]:
        """Stop a kernel that is out of the table (shut down, or the pool's) in the
        background, and never adopt its id again. Tracked, so that a caller cancelled
        half-way (the monitor, at gateway exit) leaves no kernel running nor sockets open;
        close() waits for these. Called by ``shutdown`` and the pool."""
        self.unhold(kernel.id)
        self._gone[kernel.id] = None
        while len(self._gone) > 10_000:
            del self._gone[next(iter(self._gone))]
        task = asyncio.ensure_future(self._stop(kernel))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        return task

    async def _stop(self, kernel: Kernel) -> None:
        try:
            await kernel.channels.request(
                "control", "shutdown_request", {"restart": False}, timeout=1.0
            )
        except Exception:
            pass  # a kernel that does not answer is stopped the hard way below
        try:
            await kernel.handle.shutdown()
        finally:
            await kernel.channels.close(1000, "kernel shut down")
        log.info("kernel %s: shut down", kernel.id)

    # -- watching -----------------------------------------------------------------

    async def _watch(self) -> None:
        last_cull = last_discovery = time.monotonic()
        cull_every = self._cull_period()
        while True:
            # Woken often enough for the cull checks, so that a warning period is honoured.
            await asyncio.sleep(min(self.config.monitor_interval, cull_every or float("inf")))
            try:
                await self._check_liveness()
                interval = self.config.discovery_interval
                if interval > 0 and time.monotonic() - last_discovery >= interval:
                    last_discovery = time.monotonic()
                    await self.discover()
                if cull_every and time.monotonic() - last_cull >= cull_every:
                    last_cull = time.monotonic()
                    await self.cull()
            except Exception:
                log.exception("kernel monitor failed; carrying on")

    async def _check_liveness(self) -> None:
        by_launcher: dict[str, list[Kernel]] = {}
        for kernel in self.kernels.values():
            if not kernel.busy_with:
                by_launcher.setdefault(kernel.launcher.kind, []).append(kernel)
        for kind, kernels in by_launcher.items():
            asked = time.monotonic()
            alive = await self.launchers[kind].check_alive([k.handle for k in kernels])
            if time.monotonic() - asked > SLOW_LIVENESS_CHECK:
                log.warning(
                    "%s: checking %d kernels' liveness took %.1fs (deaths are noticed late)",
                    kind,
                    len(kernels),
                    time.monotonic() - asked,
                )
            for kernel in kernels:
                if alive.get(kernel.id, True) or kernel.busy_with or kernel.id in self._deaths:
                    continue
                task = asyncio.create_task(self._on_died(kernel), name=f"died-{kernel.id}")
                self._deaths[kernel.id] = task
                task.add_done_callback(functools.partial(self._death_handled, kernel.id))

    def _death_handled(self, kernel_id: str, _: asyncio.Task) -> None:
        self._deaths.pop(kernel_id, None)

    @kernel_scoped
    async def _on_died(self, kernel: Kernel) -> None:
        try:
            await self._restart_or_drop(kernel)
        except Exception:
            log.exception("kernel %s: handling its death failed", kernel.id)

    async def _restart_or_drop(self, kernel: Kernel) -> None:
        reason = await kernel.handle.failure_reason() or "the kernel process exited"
        log.warning("kernel %s died: %s", kernel.id, reason)
        # What a notebook shows under the cell that ran (e.g. a kernel stopped for its
        # memory limit: the reason names the limit); the status notices below carry it too.
        kernel.channels.notify_stderr(f"raygate: the kernel died: {reason}\n")
        now = time.monotonic()
        kernel.restarts_in_a_row = consecutive_restarts(
            kernel.restarts_in_a_row, kernel.died_at, now
        )
        kernel.died_at = now
        if kernel.restarts_in_a_row < self.config.restart_limit and kernel.id in self.kernels:
            kernel.restarts_in_a_row += 1
            kernel.restarts += 1
            try:
                await self.restart(kernel.id, reason=f"kernel died: {reason}")
                return
            except APIError as exc:
                reason = exc.message
        kernel.channels.broadcast_status("dead", reason)
        await asyncio.sleep(0.1)  # let the notice reach the clients before they are closed
        if kernel.id in self.kernels:
            await self.shutdown(kernel.id)

    # -- culling ------------------------------------------------------------------

    def _cull_timeouts(self) -> tuple[float, float]:
        """Seconds without a message before an idle and a busy kernel are culled (0: never).
        ``--cull-busy`` alone keeps its old meaning: busy kernels use the idle timeout."""
        idle = self.config.cull_idle_timeout
        busy = self.config.cull_busy_timeout or (idle if self.config.cull_busy else 0.0)
        return idle, busy

    def _cull_warning(self, timeout: float) -> float:
        return min(self.config.cull_warning, timeout)

    def _cull_period(self) -> float:
        """Seconds between cull checks (0: culling is off): the cull interval, but at least
        two checks per warning period, so that a kernel goes soon after its warning ran out."""
        timeouts = [t for t in self._cull_timeouts() if t > 0]
        if not timeouts:
            return 0.0
        period = self.config.cull_interval
        warning = self._cull_warning(min(timeouts))
        if warning > 0:
            period = min(period, warning / 2)
        return max(period, 0.1)

    # builtins.list: in this class, ``list`` is the method above
    async def cull(self) -> builtins.list[str]:
        """Warn the clients of kernels that went without a message for nearly their timeout
        (idle or busy), and shut them down once the warning period has passed with no
        activity; returns the ids of the kernels shut down."""
        idle_timeout, busy_timeout = self._cull_timeouts()
        now = datetime.now(UTC)
        culled = []
        for kernel in list(self.kernels.values()):
            if kernel.busy_with or kernel.serves_gateway:
                continue
            channels = kernel.channels
            kept_by_client = bool(channels.clients) and not self.config.cull_connected
            warned = kernel.cull_warned_at
            if warned is not None and (channels.last_activity > warned or kept_by_client):
                kernel.cull_warned_at = warned = None
                log.info("kernel %s: active again after the cull warning; kept", kernel.id)
            if kept_by_client:
                continue
            busy = channels.execution_state == "busy"
            timeout = busy_timeout if busy else idle_timeout
            if timeout <= 0:
                continue
            inactive = (now - channels.last_activity).total_seconds()
            warning = self._cull_warning(timeout)
            if warning > 0:
                # Culled only a full warning period after the warning, however late the
                # check that sent it came: clients always get that long to act.
                if warned is None:
                    if inactive >= timeout - warning:
                        self._warn_of_cull(kernel, warning, inactive, busy)
                        kernel.cull_warned_at = now
                    continue
                if (now - warned).total_seconds() < warning:
                    continue
            elif inactive < timeout:
                continue
            log.info(
                "kernel %s: culled after %.0fs %s",
                kernel.id,
                inactive,
                "busy without output" if busy else "idle",
            )
            culled.append(kernel.id)
            try:
                await self.shutdown(kernel.id)
            except APIError:
                pass
        return culled

    def _warn_of_cull(self, kernel: Kernel, seconds: float, inactive: float, busy: bool) -> None:
        """Tell every client, as the kernel's stderr on iopub, that the kernel is about to go.
        Queued without waiting for room: a stuck client must not hold up the monitor."""
        state = "busy without output" if busy else "idle"
        text = (
            f"raygate: this kernel will be shut down in {seconds:.0f} s because it has been "
            f"{state} for {inactive:.0f} s; any activity keeps it running.\n"
        )
        channels = kernel.channels
        message = new_message("iopub", "stream", {"name": "stderr", "text": text}, channels.session)
        cache: dict[bool, str | bytes] = {}
        clients = [c for c in channels.clients.values() if not c.closed]
        for client in clients:
            client.push_now(client.frame(message, cache), message)
        log.info(
            "kernel %s: to be culled in %.0fs unless active (%d client(s) warned)",
            kernel.id,
            seconds,
            len(clients),
        )
