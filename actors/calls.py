"""Kernel actor calls that answer only to a gateway of this deployment.

Any driver connected to the Ray cluster can look up a named kernel actor and call its
methods. Those that hand out secrets (the connection info with the kernel's HMAC key,
the kept output, the exit reason with its output tail) or control a kernel (signal,
interrupt, restart, stop, assign, shutdown) must answer only to raygate's own gateways.

The gateway replicas of one deployment share a **deployment key**: 32 random bytes in a
file (``--gateway-key-file``; by default ``gateway-key`` in the state directory, made on
first use, mode 0600). Two key pairs are derived from it (HKDF-SHA256):

* an Ed25519 pair: each call carries a **ticket**, the gateway's signature over the
  method, the kernel id, a digest of the arguments, the time and a random nonce. The actor
  checks it against the public key, refuses tickets older than :data:`TICKET_TTL` or seen
  before (replays), and only then runs the method;
* an X25519 pair: every reply is **sealed** to the gateway's public key (an ephemeral
  X25519 exchange, then ChaCha20-Poly1305), so a driver that watches or replays a call
  learns nothing from the answer.

The actor is given only the two public keys (in its constructor's arguments, which Ray
keeps where any driver can read them): nothing stored in the cluster lets another driver
sign a call or open a reply. Replies travel as JSON (bytes base64-encoded), never pickle,
since anyone can seal a reply to a public key.

What this does not stop: ``ray.kill`` of the actor by any driver with cluster access (a
denial of service, not a read), and code that a Ray task runs on a node as Ray's own
account (see docs/security.md: a kernel with Ray access shares the cluster's trust).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import inspect
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

TICKET_TTL = 120.0
"""Seconds a ticket is good for, either side of the actor's clock (nodes' clocks differ)."""
KEY_BYTES = 32
_AAD = b"raygate kernel actor reply"


class CallRefused(PermissionError):
    """A call without a valid ticket of this deployment's gateways."""


def _derive(seed: bytes, purpose: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=purpose).derive(seed)


def _raw(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _digest(method: str, kernel_id: str, args: tuple[Any, ...]) -> bytes:
    body = json.dumps([method, kernel_id, _encode(list(args))], sort_keys=True)
    return hashlib.sha256(body.encode()).digest()


def _encode(value: Any) -> Any:
    """JSON-safe form of a reply: bytes as ``{"b64": ...}``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


# -- the gateway's side ----------------------------------------------------------------


def read_or_make_key(path: str) -> bytes:
    """The deployment key in ``path``; made there (0600, its directory 0700) if missing.
    Called by the Ray launcher when it starts."""
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        seed = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another replica made it first
            return read_or_make_key(path)
        with os.fdopen(fd, "w") as f:
            f.write(seed.hex() + "\n")
        return seed
    try:
        seed = bytes.fromhex(text.decode())
    except ValueError:
        seed = b""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"gateway key file {path}: expected {KEY_BYTES} bytes as hex")
    return seed


class GatewayKey:
    """The gateway's half: makes tickets and opens sealed replies."""

    def __init__(self, seed: bytes) -> None:
        self._sign = Ed25519PrivateKey.from_private_bytes(_derive(seed, b"raygate call signing"))
        self._seal = X25519PrivateKey.from_private_bytes(_derive(seed, b"raygate reply sealing"))

    def public(self) -> dict[str, str]:
        """What a kernel actor is given to check tickets and seal replies."""
        return {
            "sign": _raw(self._sign.public_key()).hex(),
            "seal": _raw(self._seal.public_key()).hex(),
        }

    def ticket(self, method: str, kernel_id: str, args: tuple[Any, ...] = ()) -> bytes:
        """A one-time permission for ``method(*args)`` on kernel ``kernel_id``."""
        body = json.dumps(
            {
                "t": time.time(),
                "n": secrets.token_hex(16),
                "d": _digest(method, kernel_id, args).hex(),
            }
        ).encode()
        return self._sign.sign(body) + body

    def open(self, sealed: Any) -> Any:
        """The value inside a reply sealed by :meth:`Verifier.seal`."""
        if not isinstance(sealed, bytes) or len(sealed) < 32 + 16:
            raise ValueError("not a sealed reply")
        peer = X25519PublicKey.from_public_bytes(sealed[:32])
        key = _derive(self._seal.exchange(peer), sealed[:32])
        plain = ChaCha20Poly1305(key).decrypt(b"\0" * 12, sealed[32:], _AAD)
        return _decode(json.loads(plain))


# -- the actor's side ------------------------------------------------------------------


class Verifier:
    """The actor's half: checks tickets, seals replies. Holds only public keys."""

    def __init__(self, public: dict[str, str] | None) -> None:
        self._sign = self._seal = None
        if public:
            self._sign = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public["sign"]))
            self._seal = X25519PublicKey.from_public_bytes(bytes.fromhex(public["seal"]))
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, ticket: Any, method: str, kernel_id: str, args: tuple[Any, ...]) -> None:
        """Raise :class:`CallRefused` unless ``ticket`` permits this very call, once."""
        if self._sign is None:
            raise CallRefused("this kernel actor was given no gateway key; it answers nobody")
        if not isinstance(ticket, bytes) or len(ticket) <= 64:
            raise CallRefused(f"{method}: no ticket of this deployment's gateways")
        signature, body = ticket[:64], ticket[64:]
        try:
            self._sign.verify(signature, body)
            fields = json.loads(body)
            stamp, nonce, digest = float(fields["t"]), str(fields["n"]), str(fields["d"])
        except (InvalidSignature, ValueError, KeyError, TypeError):
            raise CallRefused(f"{method}: the ticket is not signed by this deployment") from None
        if digest != _digest(method, kernel_id, args).hex():
            raise CallRefused(f"{method}: the ticket is for another call")
        now = time.time()
        if abs(now - stamp) > TICKET_TTL:
            raise CallRefused(f"{method}: the ticket has expired")
        with self._lock:
            for old, expires in list(self._seen.items()):
                if expires < now:
                    del self._seen[old]
            if nonce in self._seen:
                raise CallRefused(f"{method}: the ticket was used before")
            self._seen[nonce] = stamp + TICKET_TTL

    def seal(self, value: Any) -> bytes:
        """``value`` (JSON types and bytes) encrypted so that only the gateway reads it."""
        if self._seal is None:
            raise CallRefused("no gateway key to seal replies to")
        mine = X25519PrivateKey.generate()
        ours = _raw(mine.public_key())
        key = _derive(mine.exchange(self._seal), ours)
        plain = json.dumps(_encode(value)).encode()
        return ours + ChaCha20Poly1305(key).encrypt(b"\0" * 12, plain, _AAD)


F = TypeVar("F", bound=Callable[..., Any])


def guarded(method: F) -> F:
    """Make an actor method answer only a ticketed call: it then takes the ticket first
    and returns its result sealed. The actor has ``kernel_id`` and ``calls``
    (a :class:`Verifier`)."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: Any, ticket: Any = None, *args: Any) -> bytes:
        self.calls.check(ticket, name, self.kernel_id, args)
        return self.calls.seal(method(self, *args))

    # Ray checks a call's arguments against the signature of the method it unwraps: no
    # __wrapped__ (which would lead it to the undecorated one), and a ticket first.
    del call.__wrapped__
    params = list(inspect.signature(method).parameters.values())
    ticket = inspect.Parameter("ticket", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
    rest = [p.replace(default=None) if p.default is p.empty else p for p in params[1:]]
    call.__signature__ = inspect.Signature([params[0], ticket, *rest])  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]
