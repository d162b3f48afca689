"""How many idle Ray workers the launcher keeps ahead of demand (pure: no Ray)."""

from __future__ import annotations

from raygate.launchers.ray.reserve import WorkerReserve


def burst(reserve: WorkerReserve, node: str, count: int, now: float) -> None:
    for _ in range(count):
        reserve.launching()
    for _ in range(count):
        reserve.placed(node, now)


def test_nothing_is_prestarted_while_launches_are_in_flight() -> None:
    reserve = WorkerReserve(cap=4)
    reserve.launching()
    reserve.launching()
    reserve.placed("a", 0.0)
    assert reserve.refill(1.0) == {}
    reserve.placed("a", 1.0)
    assert reserve.refill(2.0) == {"a": 2}
    assert reserve.refill(3.0) == {}  # counted as there


def test_the_reserve_follows_the_burst_up_to_the_cap_then_shrinks_back() -> None:
    reserve = WorkerReserve(cap=4, keep_alive=100.0)
    burst(reserve, "a", 1, 0.0)
    assert reserve.refill(1.0) == {"a": 1}
    burst(reserve, "a", 8, 2.0)  # used the one ready, and 7 Ray started itself
    assert reserve.refill(3.0) == {"a": 4}
    burst(reserve, "a", 1, 4.0)  # the burst's size is remembered: refilled to 4 again
    assert reserve.refill(5.0) == {"a": 1}
    # Once the workers expired and the burst is forgotten, one is kept.
    assert reserve.refill(200.0) == {"a": 1}


def test_failed_launches_and_lost_prestarts_count_nothing() -> None:
    reserve = WorkerReserve(cap=2)
    reserve.launching()
    reserve.placed(None, 0.0)
    assert reserve.refill(1.0) == {}
    burst(reserve, "b", 2, 2.0)
    assert reserve.refill(3.0) == {"b": 2}
    reserve.lost("b", 2)
    assert reserve.refill(4.0) == {"b": 2}


def test_cap_zero_keeps_none() -> None:
    reserve = WorkerReserve(cap=0)
    burst(reserve, "a", 3, 0.0)
    assert reserve.refill(1.0) == {}
