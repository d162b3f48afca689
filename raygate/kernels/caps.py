"""Per-user caps (``--max-kernels-per-user``, ``--max-gpus-per-user``,
``--max-memory-per-user``): where what each user holds is counted.

Admission asks a :class:`Reservations` store to reserve a start's resources before the
launch, and tells it when the kernel runs and when it ends. :class:`LocalReservations`
counts one gateway's kernels; a store shared by gateway replicas (with a put-if-absent in
the cluster's key-value store) implements the same three methods.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from raygate.config import GatewayConfig
from raygate.resources import ResourceRequest
from raygate.users import Usage, check_user_limits


@dataclass(frozen=True)
class Claim:
    """What one kernel holds against its user's caps."""

    kernel_id: str
    username: str | None
    resources: ResourceRequest


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
    async def ended(self, kernel_id: str) -> None:
        """The claim's start failed or its kernel is gone: release it. Unknown ids are
        ignored (a kernel found running after a restart was never reserved here)."""

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
        check_user_limits(self.config, claim.username, self.usage(claim.username), claim.resources)
        self.in_flight[claim.kernel_id] = claim

    async def started(self, claim_id: str, kernel_id: str) -> None:
        # From now on the kernel table counts it.
        self.in_flight.pop(claim_id, None)

    async def ended(self, kernel_id: str) -> None:
        self.in_flight.pop(kernel_id, None)
