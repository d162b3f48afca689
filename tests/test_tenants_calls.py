"""The kernel actor's call authentication (actors/calls.py), without Ray: tickets signed by
the deployment key pass once, anything else is refused; replies open only with that key."""

from __future__ import annotations

import os
import stat
import time

import pytest

from raygate.actors import calls
from raygate.actors.calls import CallRefused, GatewayKey, Verifier, guarded, read_or_make_key

KERNEL = "7f0c8c5e-0000-4000-8000-000000000001"


class FakeActor:
    kernel_id = KERNEL

    def __init__(self, public: dict[str, str]) -> None:
        self.calls = Verifier(public)

    @guarded
    def describe(self) -> dict:
        return {"connection": {"key": "hmac-secret"}, "frames": [[b"\x00\xff"]]}

    @guarded
    def signal(self, signum: int) -> str:
        return f"signalled {signum}"


@pytest.fixture
def key() -> GatewayKey:
    return GatewayKey(os.urandom(32))


def test_a_ticketed_call_runs_once_and_its_reply_opens_only_with_the_key(key: GatewayKey) -> None:
    actor = FakeActor(key.public())
    ticket = key.ticket("describe", KERNEL)
    sealed = actor.describe(ticket)
    assert b"hmac-secret" not in sealed
    assert key.open(sealed) == {"connection": {"key": "hmac-secret"}, "frames": [[b"\x00\xff"]]}
    with pytest.raises(CallRefused, match="used before"):
        actor.describe(ticket)
    with pytest.raises(Exception):  # noqa: B017 - any failure: the tag does not verify
        GatewayKey(os.urandom(32)).open(sealed)


def test_calls_without_a_ticket_of_this_deployment_are_refused(key: GatewayKey) -> None:
    actor = FakeActor(key.public())
    other = GatewayKey(os.urandom(32))
    with pytest.raises(CallRefused, match="no ticket"):
        actor.describe()
    with pytest.raises(CallRefused, match="no ticket"):
        actor.describe(b"forged")
    with pytest.raises(CallRefused, match="not signed"):
        actor.describe(other.ticket("describe", KERNEL))
    with pytest.raises(CallRefused, match="not signed"):
        actor.describe(b"\0" * 64 + key.ticket("describe", KERNEL)[64:])
    # a ticket for one call does not serve another method, kernel or argument
    with pytest.raises(CallRefused, match="another call"):
        actor.describe(key.ticket("signal", KERNEL))
    with pytest.raises(CallRefused, match="another call"):
        actor.describe(key.ticket("describe", "another-kernel"))
    with pytest.raises(CallRefused, match="another call"):
        actor.signal(key.ticket("signal", KERNEL, (2,)), 9)
    assert key.open(actor.signal(key.ticket("signal", KERNEL, (9,)), 9)) == "signalled 9"
    with pytest.raises(CallRefused, match="answers nobody"):
        FakeActor({}).describe(key.ticket("describe", KERNEL))


def test_old_tickets_expire(key: GatewayKey, monkeypatch: pytest.MonkeyPatch) -> None:
    actor = FakeActor(key.public())
    ticket = key.ticket("describe", KERNEL)
    now = time.time()
    monkeypatch.setattr(calls.time, "time", lambda: now + calls.TICKET_TTL + 1)
    with pytest.raises(CallRefused, match="expired"):
        actor.describe(ticket)


def test_the_key_file_is_made_private_once_and_shared(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "state", "gateway-key")
    seed = read_or_make_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert read_or_make_key(path) == seed  # a second replica reads the same key
    assert GatewayKey(seed).public() == GatewayKey(read_or_make_key(path)).public()
    with open(path, "w") as f:
        f.write("not hex")
    with pytest.raises(ValueError, match="32 bytes"):
        read_or_make_key(path)
