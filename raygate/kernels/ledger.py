"""A user's ledger of held kernels, shared by gateway replicas (pure: no I/O).

Per-user caps hold across replicas when every replica decides a start against the same
ledger and records it there in one atomic step. A ledger is one value per user in a
store all replicas see (Ray's KV store, for a joined Ray cluster); it changes by
compare-and-swap: read the latest version ``n``, write version ``n + 1`` only if no
replica wrote it first. Stores without a native compare-and-swap build it from
put-if-absent on one key per version (:func:`version_key`, :func:`latest_version`,
:func:`obsolete_keys`).

An entry is kept while its kernel still holds something (:meth:`Ledger.pruned`), so a
replica that died mid-start, or lost a release, blocks its user only until the next
start is decided.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace

from raygate.resources import ResourceRequest
from raygate.users import Usage

VERSION_DIGITS = 12
KEEP_VERSIONS = 8
"""Versions a store keeps below the latest one (older ones are deleted)."""


@dataclass(frozen=True)
class Entry:
    """What one kernel (running, or still starting) holds against its user's caps."""

    gpus: float
    memory: int
    replica: str
    """The gateway replica that made the claim (for Ray: its driver's job id)."""
    starting: bool
    deadline: float
    """Wall-clock time by which a start settles; past it, a start of another replica that
    still claims to be in flight is stale."""

    @classmethod
    def of(cls, request: ResourceRequest, replica: str, deadline: float) -> Entry:
        return cls(request.gpus or 0.0, request.memory or 0, replica, True, deadline)


@dataclass(frozen=True)
class Liveness:
    """What a replica knows of the cluster when it decides a start."""

    me: str
    """This replica's id."""
    mine: Collection[str]
    """Kernel ids this replica holds: its starts in flight and its kernel table."""
    kernels: Collection[str]
    """Kernels that exist in the cluster (for Ray: named actors in the namespace)."""
    dead: Collection[str]
    """Replicas known to be gone (for Ray: drivers the cluster marked dead). A replica not
    known at all is taken to be alive: it may have started after the cluster was asked."""
    now: float


@dataclass(frozen=True)
class Ledger:
    """One user's entries, by kernel id (a start's claim id until it runs)."""

    entries: Mapping[str, Entry] = field(default_factory=dict)

    def usage(self, unclaimed: Mapping[str, ResourceRequest] | None = None) -> Usage:
        """What the entries hold, plus ``unclaimed``: kernels known to run (a replica's
        table) that have no entry, e.g. started before the ledger was kept."""
        unclaimed = unclaimed or {}
        usage = Usage.of(r for kid, r in unclaimed.items() if kid not in self.entries)
        for entry in self.entries.values():
            usage.kernels += 1
            usage.gpus += entry.gpus
            usage.memory += entry.memory
        return usage

    def holding(self, kernel_id: str, entry: Entry) -> Ledger:
        return Ledger({**self.entries, kernel_id: entry})

    def without(self, kernel_id: str) -> Ledger:
        return Ledger({k: e for k, e in self.entries.items() if k != kernel_id})

    def running(self, claim_id: str, kernel_id: str) -> Ledger:
        """The start claimed as ``claim_id`` runs as ``kernel_id`` (a warm kernel keeps its
        own id); unchanged when the claim is not here (it was pruned or released)."""
        entry = self.entries.get(claim_id)
        if entry is None:
            return self
        entries = {k: e for k, e in self.entries.items() if k != claim_id}
        entries[kernel_id] = replace(entry, starting=False)
        return Ledger(entries)

    def stale(self, live: Liveness) -> set[str]:
        """Entries that no longer hold anything. An entry is kept while its kernel exists;
        else one of this replica while the replica holds it (in flight, or in its table);
        else one of another live replica while it runs there or its start may still be in
        flight. Everything else (a dead replica's claims, starts long past their deadline)
        is stale."""
        gone = set()
        for kernel_id, entry in self.entries.items():
            if kernel_id in live.kernels:
                continue
            if entry.replica == live.me:
                if kernel_id not in live.mine:
                    gone.add(kernel_id)
            elif entry.replica in live.dead or (entry.starting and live.now > entry.deadline):
                gone.add(kernel_id)
        return gone

    def pruned(self, live: Liveness) -> Ledger:
        gone = self.stale(live)
        if not gone:
            return self
        return Ledger({k: e for k, e in self.entries.items() if k not in gone})

    def to_bytes(self) -> bytes:
        return json.dumps({k: asdict(e) for k, e in sorted(self.entries.items())}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Ledger:
        """The ledger stored as ``raw`` (None: a user with no ledger yet)."""
        if not raw:
            return cls()
        return cls({k: Entry(**e) for k, e in json.loads(raw).items()})


# -- compare-and-swap from put-if-absent ------------------------------------------------


def version_key(prefix: str, version: int) -> str:
    """The key of ledger version ``version`` (1, 2, ...) under ``prefix``; zero-padded,
    so that keys sort as versions do."""
    return f"{prefix}{version:0{VERSION_DIGITS}d}"


def versions(keys: Collection[str], prefix: str) -> list[int]:
    """The versions among ``keys`` (a listing of ``prefix``), ascending."""
    found = []
    for key in keys:
        tail = key[len(prefix) :] if key.startswith(prefix) else ""
        if len(tail) == VERSION_DIGITS and tail.isdigit():
            found.append(int(tail))
    return sorted(found)


def latest_version(keys: Collection[str], prefix: str) -> int:
    """The newest version among ``keys``; 0 when there is none."""
    found = versions(keys, prefix)
    return found[-1] if found else 0


def obsolete_keys(keys: Collection[str], prefix: str, keep: int = KEEP_VERSIONS) -> list[str]:
    """Keys of versions more than ``keep`` below the newest, to delete. The newest is never
    among them, so a writer that read a version long gone, and wrote the version after it
    anew, finds a newer one when it checks (:func:`write_won`) and backs off."""
    found = versions(keys, prefix)
    if not found:
        return []
    return [version_key(prefix, v) for v in found if v < found[-1] - keep]


def write_won(keys: Collection[str], prefix: str, written: int, keep: int = KEEP_VERSIONS) -> bool:
    """Whether the version a writer just put (if absent) counts, from a listing made right
    after the put. It does when it is the newest, or when the versions above it follow it
    without a gap: other replicas read it and built on it in the meantime (undoing it then
    would leave its change in their versions without its writer knowing). It does not
    when it was written over a version deleted long ago: the newer ones then lie more than
    ``keep`` above it, past versions already deleted; the write must be undone and the
    change made again on the newest."""
    found = versions(keys, prefix)
    if not found or written not in found:
        return False
    above = [v for v in found if v > written]
    return not above or (above == list(range(written + 1, found[-1] + 1)) and len(above) <= keep)
