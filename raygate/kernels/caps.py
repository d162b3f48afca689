"""Per-user caps (``--max-kernels-per-user``, ``--max-gpus-per-user``,
``--max-memory-per-user``): where what each user holds is counted.

Admission asks a :class:`Reservations` store to reserve a start's resources before the
launch, and tells it when the kernel runs and when it ends. :class:`LocalReservations`
counts one gateway's kernels; :class:`SharedReservations` keeps each user's holdings in a
ledger that every gateway replica of the deployment reads and changes atomically
(:mod:`.ledger`), in a store a launcher offers (:meth:`Launcher.ledger_store
<raygate.launchers.Launcher.ledger_store>`; Ray's KV store on a joined cluster).
:func:`reservations_for` chooses.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from raygate.config import GatewayConfig
from raygate.errors import APIError
from raygate.resources import ResourceRequest
from raygate.users import Usage, UserCaps, caps_for, check_user_limits

from .ledger import Entry, Ledger, Liveness

log = logging.getLogger("raygate.caps")

CAS_ATTEMPTS = 50
"""Tries of one ledger change against the writes of other replicas before a 503."""
SETTLE_MARGIN = 60.0
"""Seconds past the longest launch timeout after which a start still in flight on another
(live) replica no longer holds anything."""


@dataclass(frozen=True)
class Claim:
    """What one kernel holds against its user's caps."""

    kernel_id: str
    username: str | None
    resources: ResourceRequest
    caps: UserCaps | None = None
    """The user's caps (:func:`raygate.users.caps_for`); None: the ``--max-*-per-user``
    ones."""

    def user_caps(self, config: GatewayConfig) -> UserCaps:
        return self.caps if self.caps is not None else caps_for(config)


class Reservations(abc.ABC):
    """Where per-user caps are counted; called by :class:`~.admission.Admission` only."""

    @abc.abstractmethod
    async def reserve(self, claim: Claim) -> None:
        """Hold ``claim`` if the user's caps allow one more such kernel, else raise
        :class:`~raygate.errors.APIError` 403 (nothing held). Concurrent reservations of
        one user never exceed a cap together."""

    @abc.abstractmethod
    async def started(self, claim_id: str, kernel_id: str) -> None:
        """The claim ``claim_id`` made runs as kernel ``kernel_id`` (the same id, or a warm
        kernel's own); it is in the gateway's kernel table now, and :meth:`ended` will name
        it by ``kernel_id``."""

    @abc.abstractmethod
    async def ended(self, kernel_id: str, username: str | None = None) -> None:
        """The claim's start failed or its kernel (of ``username``, where known) is gone:
        release it. Unknown ids are ignored (a kernel found running after a restart was
        never reserved here)."""

    @abc.abstractmethod
    def usage(self, username: str | None) -> Usage:
        """What ``username``'s kernels (running and starting) hold."""


class LocalReservations(Reservations):
    """One gateway's count: its running kernels (``running``, read from its kernel table)
    plus the starts in flight held here. ``reserve`` does not suspend, so a check and its
    hold happen in one step of the event loop."""

    def __init__(
        self,
        config: GatewayConfig,
        running: Callable[[str | None], Iterable[ResourceRequest]],
    ) -> None:
        self.config = config
        self.running = running
        self.in_flight: dict[str, Claim] = {}

    def usage(self, username: str | None) -> Usage:
        held = list(self.running(username))
        held += [c.resources for c in self.in_flight.values() if c.username == username]
        return Usage.of(held)

    async def reserve(self, claim: Claim) -> None:
        caps = claim.user_caps(self.config)
        check_user_limits(caps, claim.username, self.usage(claim.username), claim.resources)
        self.in_flight[claim.kernel_id] = claim

    async def started(self, claim_id: str, kernel_id: str) -> None:
        # From now on the kernel table counts it.
        self.in_flight.pop(claim_id, None)

    async def ended(self, kernel_id: str, username: str | None = None) -> None:
        self.in_flight.pop(kernel_id, None)


class LedgerStore(Protocol):
    """Per-user ledgers that all replicas of a deployment share, and what the cluster knows
    of its kernels and replicas; offered by a launcher (``Launcher.ledger_store``). Blocking
    calls: :class:`SharedReservations` runs them off the event loop."""

    def read(self, username: str) -> tuple[int, bytes | None]:
        """The latest version of ``username``'s ledger and its value (0, None: none yet)."""
        ...

    def write(self, username: str, version: int, value: bytes) -> bool:
        """Write version ``version + 1`` unless another replica wrote it first (False)."""
        ...

    def replica(self) -> str:
        """This replica's id, as the cluster knows it."""
        ...

    def live_kernels(self) -> Collection[str]:
        """Ids of the kernels that exist in the cluster."""
        ...

    def dead_replicas(self) -> Collection[str]:
        """Ids of replicas the cluster knows to be gone."""
        ...


class SharedReservations(Reservations):
    """Per-user caps over every replica of a deployment: each reservation is a change of
    the user's ledger in ``store``, made by compare-and-swap, so concurrent starts on any
    replicas never exceed a cap together. Before deciding, a reservation drops the entries
    that no longer hold anything (:meth:`Ledger.stale <.ledger.Ledger.stale>`): a replica
    killed mid-start, a release that never reached the store. Kernels in this gateway's
    table without an entry (``running``: id -> request) count too.

    Releases and renames that fail (the store unreachable) are logged, not raised: the
    kernel is gone or running either way, and the next reservation reconciles."""

    def __init__(
        self,
        config: GatewayConfig,
        store: LedgerStore,
        running: Callable[[str | None], Mapping[str, ResourceRequest]],
    ) -> None:
        self.config = config
        self.store = store
        self.running = running
        self.in_flight: dict[str, Claim] = {}
        self.seen: dict[str, Ledger] = {}
        """Each user's ledger as this replica last read or wrote it (for :meth:`usage`)."""
        self.settle_within = max(config.kernel_launch_timeout, config.max_kernel_launch_timeout)
        self.settle_within += SETTLE_MARGIN

    def usage(self, username: str | None) -> Usage:
        """The user's ledger as last seen here, with the kernels of this gateway's table
        that it lacks; a reservation reads the ledger afresh."""
        return self.seen.get(username or "", Ledger()).usage(self.running(username))

    async def _change(self, username: str, change: Callable[[Ledger], Ledger]) -> None:
        """Apply ``change`` to the newest ledger until no other replica wrote in between;
        ``change`` may raise (a cap reached): nothing is written then."""
        for attempt in range(CAS_ATTEMPTS):
            version, raw = await asyncio.to_thread(self.store.read, username)
            ledger = Ledger.from_bytes(raw)
            self.seen[username] = ledger
            new = change(ledger)
            if new == ledger:
                return
            if await asyncio.to_thread(self.store.write, username, version, new.to_bytes()):
                self.seen[username] = new
                return
            # Another replica wrote first: a little jitter, so that the same two do not
            # collide again and again.
            await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
        raise APIError(
            503,
            f"Per-user caps of user {username!r} could not be checked: too many concurrent "
            "changes by other gateway replicas; try again",
        )

    async def reserve(self, claim: Claim) -> None:
        username = claim.username
        if not username:
            return  # no user, no per-user caps (check_user_limits)
        try:
            kernels, dead, me = await asyncio.to_thread(
                lambda: (
                    self.store.live_kernels(),
                    self.store.dead_replicas(),
                    self.store.replica(),
                )
            )
        except Exception as exc:
            raise APIError(
                503, f"Per-user caps could not be checked: the cluster did not answer: {exc}"
            ) from None
        entry = Entry.of(claim.resources, me, time.time() + self.settle_within)

        def change(ledger: Ledger) -> Ledger:
            # What this replica holds is read now, not before: its own other starts may
            # have been written meanwhile and must not be taken for stale.
            mine = {*self.in_flight, *self.running(username)}
            live = Liveness(me=me, mine=mine, kernels=kernels, dead=dead, now=time.time())
            stale = ledger.stale(live)
            if stale:
                log.info(
                    "per-user caps: user %r: dropped %d claim(s) that hold nothing any more "
                    "(kernel gone, and its replica too or done with it): %s",
                    username,
                    len(stale),
                    ", ".join(sorted(stale)),
                )
                ledger = ledger.pruned(live)
            # Without this claim's own entry: a write judged lost may have counted after all
            # (its change is in the newest version), and a claim must not refuse itself.
            held = ledger.without(claim.kernel_id).usage(self.running(username))
            try:
                check_user_limits(claim.user_caps(self.config), username, held, claim.resources)
            except APIError:
                # What was counted, for the operator asked why a user was refused.
                log.info(
                    "per-user caps: user %r refused kernel %s; the ledger holds %s",
                    username,
                    claim.kernel_id,
                    ", ".join(
                        f"{kid} ({'starting' if e.starting else 'running'} on {e.replica})"
                        for kid, e in sorted(ledger.entries.items())
                    )
                    or "nothing",
                )
                raise
            return ledger.holding(claim.kernel_id, entry)

        # In flight from before the write: a concurrent start of this replica that reads
        # the ledger right after it must see this entry as held here, not as stale.
        self.in_flight[claim.kernel_id] = claim
        try:
            await self._change(username, change)
        except BaseException as exc:
            self.in_flight.pop(claim.kernel_id, None)
            if isinstance(exc, APIError) or not isinstance(exc, Exception):
                raise
            raise APIError(
                503, f"Per-user caps could not be checked: the cluster did not answer: {exc}"
            ) from None

    async def started(self, claim_id: str, kernel_id: str) -> None:
        claim = self.in_flight.get(claim_id)
        try:
            if claim is not None and claim.username:
                await self._change(
                    claim.username, lambda ledger: ledger.running(claim_id, kernel_id)
                )
        except Exception as exc:
            log.warning(
                "per-user caps: kernel %s runs, but the ledger says not: %s", kernel_id, exc
            )
        finally:
            self.in_flight.pop(claim_id, None)

    async def ended(self, kernel_id: str, username: str | None = None) -> None:
        claim = self.in_flight.get(kernel_id)
        username = username or (claim.username if claim else None)
        try:
            if username:
                await self._change(username, lambda ledger: ledger.without(kernel_id))
        except Exception as exc:
            log.warning("per-user caps: kernel %s ended, but its claim stays: %s", kernel_id, exc)
        finally:
            self.in_flight.pop(kernel_id, None)


class OffersLedger(Protocol):
    """What :func:`reservations_for` needs of a launcher (``Launcher.ledger_store``)."""

    # read-only, so that Launcher's ClassVar matches it
    @property
    def kind(self) -> str: ...

    def ledger_store(self) -> LedgerStore | None: ...


def reservations_for(
    config: GatewayConfig,
    launchers: Mapping[str, OffersLedger],
    running: Callable[[str | None], Mapping[str, ResourceRequest]],
) -> Reservations:
    """Where this gateway counts per-user caps: in the ledger store of the first launcher
    that offers one (its kernels are shared by replicas), when any per-user cap is set;
    else on its own. ``running``: the user's kernels in the gateway's table, by id. Called
    by the registry."""
    capped = caps_for(config).any or bool(config.group_caps)
    if capped:
        for launcher in launchers.values():
            store = launcher.ledger_store()
            if store is not None:
                log.info("per-user caps: shared by the replicas of %s kernels", launcher.kind)
                return SharedReservations(config, store, running)
    return LocalReservations(config, lambda username: running(username).values())
