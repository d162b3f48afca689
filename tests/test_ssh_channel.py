"""The sealed report/control channel of remote kernels: the crypto, the gateway's report
listener, and the real bootstrap process (no SSH needed)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from conftest import wait_gone
from kernelspecs import ipykernel_argv
from raygate.launchers.remote import ReportListener
from raygate.launchers.wire import (
    CONTROL,
    CONTROL_REPLY,
    REPORT,
    REPORT_ACK,
    ChannelError,
    control_request,
    converse,
    encode_secret,
    new_secret,
    read_frame,
    read_hello,
    seal,
    unseal,
    write_frame,
)

KID = str(uuid.uuid4())
CHALLENGE = os.urandom(16)


def test_seal_round_trip() -> None:
    secret = new_secret()
    frame = seal(secret, KID, REPORT, CHALLENGE, {"x": 1})
    assert b'"x"' not in frame  # encrypted, not just signed
    payload = unseal(secret, KID, REPORT, CHALLENGE, frame)
    assert payload["x"] == 1 and abs(payload["ts"] - time.time()) < 5


@pytest.mark.parametrize("position", [5, -1, -20])
def test_tampered_frame_is_rejected(position: int) -> None:
    secret = new_secret()
    frame = bytearray(seal(secret, KID, REPORT, CHALLENGE, {"ip": "10.0.0.1"}))
    frame[position] ^= 0x01
    with pytest.raises(ChannelError):
        unseal(secret, KID, REPORT, CHALLENGE, bytes(frame))


def test_wrong_key_fails_closed() -> None:
    frame = seal(new_secret(), KID, REPORT, CHALLENGE, {"x": 1})
    with pytest.raises(ChannelError, match="authentication"):
        unseal(new_secret(), KID, REPORT, CHALLENGE, frame)


def test_frame_is_bound_to_challenge_purpose_and_kernel() -> None:
    secret = new_secret()
    frame = seal(secret, KID, REPORT, CHALLENGE, {"x": 1})
    with pytest.raises(ChannelError):  # replayed on another connection
        unseal(secret, KID, REPORT, os.urandom(16), frame)
    with pytest.raises(ChannelError):  # reflected as another kind of message
        unseal(secret, KID, CONTROL, CHALLENGE, frame)
    with pytest.raises(ChannelError):  # presented for another kernel
        unseal(secret, str(uuid.uuid4()), REPORT, CHALLENGE, frame)
    relabelled = frame.replace(KID.encode(), str(uuid.uuid4()).encode())
    with pytest.raises(ChannelError):
        unseal(secret, KID, REPORT, CHALLENGE, relabelled)


def test_stale_frame_is_rejected() -> None:
    secret = new_secret()
    frame = seal(secret, KID, REPORT, CHALLENGE, {"x": 1}, now=time.time() - 3600)
    with pytest.raises(ChannelError, match="away from this clock"):
        unseal(secret, KID, REPORT, CHALLENGE, frame)


async def _report_raw(port: int, make_frame) -> bytes | None:
    """Send one report frame built from the listener's challenge; the reply, or None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        challenge = await read_hello(reader)
        frame = make_frame(challenge)
        write_frame(writer, frame)
        await writer.drain()
        try:
            return await read_frame(reader)
        except ChannelError:
            return None  # closed without an answer
    finally:
        writer.close()


async def test_listener_accepts_once_and_rejects_replay_tamper_and_wrong_key() -> None:
    listener = ReportListener("127.0.0.1", 0)
    await listener.start()
    try:
        port = listener.bound_port
        secret = new_secret()
        future = listener.expect(KID, secret)
        sent: list[bytes] = []

        def genuine(challenge: bytes) -> bytes:
            sent.append(seal(secret, KID, REPORT, challenge, {"connection": {"ip": "x"}}))
            return sent[-1]

        # a wrong key is refused and the launch keeps waiting
        assert await _report_raw(port, lambda c: seal(new_secret(), KID, REPORT, c, {})) is None
        assert not future.done() and listener.rejected == 1

        # a tampered report is refused
        def tampered(challenge: bytes) -> bytes:
            frame = bytearray(seal(secret, KID, REPORT, challenge, {"connection": {"ip": "x"}}))
            frame[-3] ^= 0x80
            return bytes(frame)

        assert await _report_raw(port, tampered) is None
        assert listener.rejected == 2

        # the genuine report is accepted and acknowledged, sealed
        reply = await _report_raw(port, genuine)
        assert reply is not None and (await asyncio.wait_for(future, 5))["connection"]["ip"] == "x"

        # replaying the recorded frame fails: fresh challenge, and the launch took its report
        assert await _report_raw(port, lambda c: sent[0]) is None
        listener.expect(KID, secret)  # even for a launch that waits again
        assert await _report_raw(port, lambda c: sent[0]) is None
        assert listener.rejected == 4
    finally:
        await listener.close()


def _bootstrap(settings: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "raygate.launchers.kernelside.bootstrap"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(settings).encode())
    proc.stdin.close()
    return proc


def _kernel_pids(kernel_id: str) -> list[int]:
    tag = f"raygate-kernel-{kernel_id[:8]}-"
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(tag in arg for arg in p.info["cmdline"] or [])
    ]


async def test_bootstrap_with_wrong_key_fails_closed_end_to_end() -> None:
    """A real bootstrap whose secret the gateway does not know gets no ack, stops its
    kernel and fails; the gateway never takes the report."""
    listener = ReportListener("127.0.0.1", 0)
    await listener.start()
    try:
        kernel_id = str(uuid.uuid4())
        future = listener.expect(kernel_id, new_secret())
        settings = {
            "kernel_id": kernel_id,
            "secret": encode_secret(new_secret()),
            "argv": ipykernel_argv(),
            "ip": "127.0.0.1",
            "report": {"host": "127.0.0.1", "port": listener.bound_port},
        }
        proc = await asyncio.to_thread(_bootstrap, settings)
        code = await asyncio.to_thread(proc.wait, 60)
        stderr = proc.stderr.read().decode()
        assert code == 1, stderr
        assert "did not accept the kernel's report" in stderr
        assert settings["secret"] not in stderr
        assert not future.done() and listener.rejected == 1
        assert wait_gone(_kernel_pids(kernel_id), timeout=5) == []
    finally:
        await listener.close()


async def test_bootstrap_control_endpoint() -> None:
    """Report, status, a forged request refused, interrupt, restart, shutdown."""
    listener = ReportListener("127.0.0.1", 0)
    await listener.start()
    proc = None
    try:
        kernel_id, secret = str(uuid.uuid4()), new_secret()
        future = listener.expect(kernel_id, secret)
        proc = await asyncio.to_thread(
            _bootstrap,
            {
                "kernel_id": kernel_id,
                "secret": encode_secret(secret),
                "argv": ipykernel_argv(),
                "ip": "127.0.0.1",
                "report": {"host": "127.0.0.1", "port": listener.bound_port},
            },
        )
        report = await asyncio.wait_for(future, 60)
        host, port = report["control"]["host"], report["control"]["port"]
        assert report["connection"]["ip"] == "127.0.0.1" and report["pid"] > 0

        status = await control_request(host, port, secret, kernel_id, "status")
        assert status["alive"] and status["pid"] == report["pid"]

        # a wrong key gets no answer and changes nothing
        with pytest.raises(ChannelError):
            await control_request(host, port, new_secret(), kernel_id, "shutdown", timeout=5)
        # nor does a reply-shaped message (reflection)
        with pytest.raises(ChannelError):
            await converse(host, port, secret, kernel_id, CONTROL_REPLY, CONTROL, {"op": "x"}, 5)
        with pytest.raises(ChannelError):
            await converse(host, port, secret, kernel_id, REPORT_ACK, REPORT, {"op": "x"}, 5)
        assert (await control_request(host, port, secret, kernel_id, "status"))["alive"]

        assert (await control_request(host, port, secret, kernel_id, "signal", signum=2))["ok"]
        restarted = await control_request(host, port, secret, kernel_id, "restart", timeout=30)
        assert restarted["pid"] != report["pid"]
        assert wait_gone([report["pid"]], timeout=5) == []
        assert restarted["connection"] == report["connection"]

        assert (await control_request(host, port, secret, kernel_id, "shutdown"))["ok"]
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert wait_gone([restarted["pid"]], timeout=5) == []
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        await listener.close()
