"""Per-user caps shared by replicas, without a cluster: the ledger's arithmetic (pure), and
two :class:`SharedReservations` (two "replicas") over one in-memory store that has only
put-if-absent, as Ray's KV store has. The real thing, on a Ray cluster: test_caps_replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

import pytest

from raygate.config import GatewayConfig
from raygate.errors import APIError
from raygate.kernels.caps import Claim, SharedReservations
from raygate.kernels.ledger import (
    Entry,
    Ledger,
    Liveness,
    latest_version,
    obsolete_keys,
    version_key,
    write_won,
)
from raygate.resources import ResourceRequest
from raygate.users import Usage

GPU = ResourceRequest(gpus=1.0, memory=2**30)


def entry(replica: str = "a", starting: bool = False, deadline: float = 0.0) -> Entry:
    return Entry(gpus=1.0, memory=2**30, replica=replica, starting=starting, deadline=deadline)


def live(**kw: object) -> Liveness:
    values: dict = {"me": "a", "mine": (), "kernels": (), "dead": (), "now": 100.0, **kw}
    return Liveness(**values)


# -- the ledger --------------------------------------------------------------------------


def test_usage_sums_entries_and_counts_unclaimed_kernels_once() -> None:
    ledger = Ledger({"k1": entry(), "k2": entry()})
    assert ledger.usage() == Usage(kernels=2, gpus=2.0, memory=2**31)
    # a table kernel with an entry is not counted twice; one without is
    assert ledger.usage({"k1": GPU, "k3": ResourceRequest()}) == Usage(3, 2.0, 2**31)


def test_a_start_settles_under_the_kernels_id() -> None:
    ledger = Ledger().holding("claim", entry(starting=True))
    ran = ledger.running("claim", "warm")
    assert list(ran.entries) == ["warm"] and not ran.entries["warm"].starting
    assert ran.running("claim", "other") == ran  # settled already: nothing to do
    assert ran.without("warm") == Ledger()


def test_stale_entries() -> None:
    ledger = Ledger(
        {
            "alive-actor": entry("dead-replica"),
            "dead-replicas-start": entry("dead-replica", starting=True, deadline=200.0),
            "mine-in-flight": entry("a", starting=True, deadline=200.0),
            "mine-forgotten": entry("a", starting=True, deadline=200.0),
            "others-start": entry("b", starting=True, deadline=200.0),
            "others-late-start": entry("b", starting=True, deadline=50.0),
            "others-running-local": entry("b"),
        }
    )
    gone = ledger.stale(
        live(mine={"mine-in-flight"}, kernels={"alive-actor"}, dead={"dead-replica"})
    )
    assert gone == {"dead-replicas-start", "mine-forgotten", "others-late-start"}
    assert set(ledger.pruned(live(kernels=set(ledger.entries))).entries) == set(ledger.entries)


def test_ledger_round_trips() -> None:
    ledger = Ledger({"k": entry(starting=True, deadline=1.5)})
    assert Ledger.from_bytes(ledger.to_bytes()) == ledger
    assert Ledger.from_bytes(None) == Ledger()


def test_versioned_keys() -> None:
    prefix = "ns/alice/"
    keys = [version_key(prefix, v) for v in (3, 12, 1, 11)] + ["ns/alice/junk"]
    assert version_key(prefix, 12) == "ns/alice/000000000012"
    assert latest_version(keys, prefix) == 12
    assert latest_version([], prefix) == 0
    assert obsolete_keys(keys, prefix, keep=8) == [version_key(prefix, 1), version_key(prefix, 3)]
    assert obsolete_keys([], prefix) == []
    assert write_won(keys, prefix, 12)
    # a writer that read version 1 long ago rewrote version 2 after it was deleted
    assert not write_won([*keys, version_key(prefix, 2)], prefix, 2)


def test_a_write_others_built_on_before_its_writer_looked_counts() -> None:
    """Replica R put version 2; before R listed the keys, replica S read version 2 (R's
    entry in it) and put version 3. R's write counts: had R undone it and tried again, its
    entry would stay in version 3 and R would refuse its own start as over the cap (CI run
    14: four starts over two replicas, cap 2, one started)."""
    prefix = "ns/alice/"
    keys = [version_key(prefix, v) for v in (1, 2, 3)]
    assert write_won(keys, prefix, 2)
    assert write_won(keys, prefix, 3)
    # a version rewritten long after its deletion is still no win, gap or not
    rewritten = [version_key(prefix, v) for v in (5, *range(12, 21))]
    assert not write_won(rewritten, prefix, 5)
    contiguous = [version_key(prefix, v) for v in range(5, 16)]
    assert not write_won(contiguous, prefix, 5, keep=8)
    assert not write_won(keys, prefix, 4)  # not there at all


async def test_a_claim_already_in_the_ledger_does_not_refuse_itself() -> None:
    """Its change reached the newest version though its writer took the write as lost: the
    retry sees the claim's own entry and must not count it against the cap."""
    store = Store()
    a = replica(store, "a", max_kernels_per_user=2)
    await a.reserve(Claim("k1", "alice", ResourceRequest()))
    await a.reserve(Claim("k2", "alice", ResourceRequest()))  # the claim, already written
    await a.reserve(Claim("k2", "alice", ResourceRequest()))  # and its retry
    with pytest.raises(APIError, match="holds 2 kernels"):
        await a.reserve(Claim("k3", "alice", ResourceRequest()))


# -- two replicas over one store -------------------------------------------------------------


class Store:
    """One shared KV store with put-if-absent, seen by several replicas (each its own
    ``View``); every call suspends, so concurrent changes really interleave."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}
        self.actors: set[str] = set()
        self.dead: set[str] = set()
        self.writes = 0


class View:
    def __init__(self, store: Store, me: str) -> None:
        self.store, self.me = store, me

    def read(self, username: str) -> tuple[int, bytes | None]:
        time.sleep(0.001)
        prefix = f"{username}/"
        version = latest_version(list(self.store.kv), prefix)
        return version, self.store.kv.get(version_key(prefix, version))

    def write(self, username: str, version: int, value: bytes) -> bool:
        time.sleep(0.001)
        key = version_key(f"{username}/", version + 1)
        if key in self.store.kv:
            return False
        self.store.kv[key] = value
        self.store.writes += 1
        return True

    def replica(self) -> str:
        return self.me

    def live_kernels(self) -> Collection[str]:
        return set(self.store.actors)

    def dead_replicas(self) -> Collection[str]:
        return set(self.store.dead)


def replica(store: Store, me: str, **caps: object) -> SharedReservations:
    config = GatewayConfig(**caps)  # type: ignore[arg-type]
    return SharedReservations(config, View(store, me), lambda user: {})


async def reserve_many(replicas: list[SharedReservations], n: int, request: ResourceRequest):
    claims = [Claim(f"k{i}", "alice", request) for i in range(n)]
    results = await asyncio.gather(
        *(replicas[i % len(replicas)].reserve(c) for i, c in enumerate(claims)),
        return_exceptions=True,
    )
    return [c.kernel_id for c, r in zip(claims, results, strict=True) if r is None], [
        r for r in results if r is not None
    ]


@pytest.mark.parametrize(
    ("caps", "request_", "allowed", "message"),
    [
        ({"max_kernels_per_user": 2}, ResourceRequest(), 2, "Per-user kernel limit reached"),
        ({"max_gpus_per_user": 1.0}, ResourceRequest(gpus=1.0), 1, "Per-user GPU limit reached"),
        (
            {"max_memory_per_user": 3 * 2**30},
            ResourceRequest(memory=2**30),
            3,
            "Per-user memory limit reached",
        ),
    ],
)
async def test_concurrent_starts_on_two_replicas_hold_a_cap(
    caps: dict, request_: ResourceRequest, allowed: int, message: str
) -> None:
    store = Store()
    a, b = replica(store, "a", **caps), replica(store, "b", **caps)
    admitted, refused = await reserve_many([a, b], 2 * allowed + 2, request_)
    assert len(admitted) == allowed
    assert all(isinstance(r, APIError) and r.status == 403 for r in refused)
    assert all(message in r.message for r in refused)
    # released on the replica that did not make it: room for one again, on the other
    maker = a if admitted[0] in a.in_flight else b
    other = b if maker is a else a
    await maker.started(admitted[0], admitted[0])
    await other.ended(admitted[0], "alice")
    await maker.reserve(Claim("again", "alice", request_))
    with pytest.raises(APIError):
        await other.reserve(Claim("too-many", "alice", request_))


async def test_a_dead_replicas_claims_are_reconciled() -> None:
    store = Store()
    a, b = replica(store, "a", max_kernels_per_user=1), replica(store, "b", max_kernels_per_user=1)
    await a.reserve(Claim("in-flight", "alice", ResourceRequest()))
    with pytest.raises(APIError, match="holds 1 kernel"):
        await b.reserve(Claim("k2", "alice", ResourceRequest()))
    # a's start made an actor, then a died: the kernel still holds its place
    store.actors.add("in-flight")
    store.dead.add("a")
    with pytest.raises(APIError):
        await b.reserve(Claim("k2", "alice", ResourceRequest()))
    store.actors.clear()  # and once the kernel is gone, nothing holds it
    await b.reserve(Claim("k2", "alice", ResourceRequest()))


async def test_a_replicas_own_forgotten_claim_is_reconciled() -> None:
    store = Store()
    a = replica(store, "a", max_kernels_per_user=1)
    await a.reserve(Claim("k1", "alice", ResourceRequest()))
    a.in_flight.clear()  # its release never reached the store
    await a.reserve(Claim("k2", "alice", ResourceRequest()))
    assert a.usage("alice").kernels == 1


async def test_no_user_no_ledger() -> None:
    store = Store()
    a = replica(store, "a", max_kernels_per_user=1)
    for i in range(3):
        await a.reserve(Claim(f"k{i}", None, ResourceRequest()))
    assert store.writes == 0
