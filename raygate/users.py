"""Who a request comes from, and what that user may start.

A request's user is, strongest first: the owner of a per-user token (an
:class:`IdentitySource`: the users file, or JupyterHub, :mod:`raygate.jupyterhub`), the user
a trusted header names (set by an authenticating proxy), else the start request's
``KERNEL_USERNAME``. Only the first two authenticate; ``KERNEL_USERNAME`` is whatever the
client says, so it names a user for the kernel but never grants access to anyone's kernels.
An authenticated user may belong to groups (the users file's ``groups``, the Hub's groups):
user lists take ``group:NAME`` entries (:func:`listed`), and ``group_caps`` gives a group's
members other per-user caps (:func:`caps_for`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import HTTPConnection
from starlette.types import Scope

from raygate.launchers.base import KernelSpecMetadata
from raygate.launchers.base import name_list as name_list  # the CLI reads lists with it

from .config import GatewayConfig
from .errors import APIError
from .groups import CAP_KEYS, listed
from .resources import ResourceRequest, format_bytes

log = logging.getLogger("raygate.users")

USER_SCOPE_KEY = "raygate.user"
"""Where the auth middleware puts the authenticated user on the ASGI scope."""
GROUPS_SCOPE_KEY = "raygate.groups"
"""Where it puts that user's groups (a frozenset)."""
RELOAD_CHECK_INTERVAL = 1.0
"""Seconds between looks at the users file's modification time."""


class UsersFileError(ValueError):
    """A users file that cannot be read or does not map tokens to usernames."""


@dataclass(frozen=True)
class Principal:
    """An authenticated user: their name and the groups they belong to."""

    name: str
    groups: frozenset[str] = frozenset()


class IdentitySource(Protocol):
    """Where per-user tokens are checked: the users file (:class:`UsersFile`) or JupyterHub
    (:class:`raygate.jupyterhub.HubIdentity`). Called by the auth middleware."""

    async def principal_for(self, token: str) -> Principal | None:
        """The user whose token this is (None: nobody's, as far as this source knows).
        Raises :class:`~raygate.errors.APIError` when it cannot tell (its server down)."""
        ...


def _digest(token: str) -> bytes:
    # Looked up by digest: a dict lookup by the token itself could leak, by its timing,
    # how much of a guessed token is right.
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class UsersTable:
    """What a users file says: who each token is, and the OS account a user's kernels run
    as under ``--kernel-isolation users`` (raygate/isolation.py) when it is not the user's
    own name."""

    tokens: dict[str, str]
    accounts: dict[str, str]
    ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    """The groups a ``[users.NAME]`` table puts the user in (``groups = ["physics"]``)."""
    """``(uid, gid)`` per user, where the file gives them: what a launcher that sets ids
    rather than names (a Kubernetes pod's ``runAsUser``/``runAsGroup``) runs the user's
    kernels as, in place of the gateway host's account of that name."""


def read_users_file(path: str) -> UsersTable:
    """A users file (``.json``: JSON, else TOML): plain ``"token" = "username"`` entries,
    and/or a per-user table, ``[users.alice]`` with an optional ``token``, ``account``,
    ``uid`` with ``gid`` (numbers, never 0), and ``groups`` (a list of names)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UsersFileError(f"cannot read users file {path}: {exc}") from None
    try:
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"users file {path} is malformed: {exc}") from None
    if not isinstance(data, dict):
        raise UsersFileError(f"users file {path} must map tokens to usernames")
    tokens: dict[str, str] = {}
    accounts: dict[str, str] = {}
    ids: dict[str, tuple[int, int]] = {}
    groups: dict[str, frozenset[str]] = {}
    table = data.pop("users", None) if isinstance(data.get("users"), dict) else None
    for token, name in data.items():
        if not isinstance(name, str) or not name.strip() or not token.strip():
            raise UsersFileError(
                f'users file {path}: every entry must be "token" = "username" (both non-empty)'
                ", or a [users.NAME] table"
            )
        tokens[token.strip()] = name.strip()
    for name, entry in (table or {}).items():
        where = f"users file {path}, [users.{name}]"
        if not isinstance(entry, dict) or set(entry) - {"token", "account", "uid", "gid", "groups"}:
            raise UsersFileError(
                f"{where}: only 'token', 'account', 'uid', 'gid' and 'groups' may be set"
            )
        for key in ("token", "account"):
            value = entry.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise UsersFileError(f"{where}: {key} must be a non-empty string")
        if entry.get("token"):
            tokens[entry["token"].strip()] = name.strip()
        if entry.get("account"):
            accounts[name.strip()] = entry["account"].strip()
        if "uid" in entry or "gid" in entry:
            ids[name.strip()] = _ids(entry, where)
        if "groups" in entry:
            listed_groups = entry["groups"]
            if not isinstance(listed_groups, list) or not all(
                isinstance(g, str) and g.strip() for g in listed_groups
            ):
                raise UsersFileError(f"{where}: groups must be a list of group names")
            groups[name.strip()] = frozenset(g.strip() for g in listed_groups)
    return UsersTable(tokens, accounts, ids, groups)


def _ids(entry: dict[str, object], where: str) -> tuple[int, int]:
    if "uid" not in entry or "gid" not in entry:
        raise UsersFileError(f"{where}: uid and gid go together (give both)")
    ids: list[int] = []
    for key in ("uid", "gid"):
        value = entry[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UsersFileError(f"{where}: {key} must be a whole number")
        if value == 0:
            raise UsersFileError(f"{where}: {key} = 0 is root's, and kernels never run as root")
        ids.append(value)
    return ids[0], ids[1]


class UsersFile:
    """The users file, reread when it changes on disk or when :meth:`reload` is called
    (on SIGHUP). A file that turns bad keeps the users last read, with an error logged."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._by_digest: dict[bytes, str] = {}
        self._accounts: dict[str, str] = {}
        self._ids: dict[str, tuple[int, int]] = {}
        self._groups: dict[str, frozenset[str]] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._load()  # a bad file at startup is the operator's to fix: raise

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def _load(self) -> None:
        stamp = self._file_stamp()
        users = read_users_file(self.path)
        self._by_digest = {_digest(token): name for token, name in users.tokens.items()}
        self._accounts = dict(users.accounts)
        self._ids = dict(users.ids)
        self._groups = dict(users.groups)
        self._stamp = stamp
        log.info("users file %s: %d token(s)", self.path, len(users.tokens))

    def reload(self) -> None:
        with self._lock:
            try:
                self._load()
            except UsersFileError as exc:
                log.error("%s; keeping the %d token(s) read before", exc, len(self._by_digest))
                self._stamp = self._file_stamp()  # do not retry until it changes again

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_INTERVAL:
            return
        self._checked = now
        if self._file_stamp() != self._stamp:
            self.reload()

    def user_for(self, token: str) -> str | None:
        """The user whose token this is; None when it is nobody's."""
        self._reload_if_changed()
        return self._by_digest.get(_digest(token))

    async def principal_for(self, token: str) -> Principal | None:
        """:class:`IdentitySource`: the token's user, with the groups the file gives them."""
        name = self.user_for(token)
        return Principal(name, self._groups.get(name, frozenset())) if name else None

    def account_for(self, user: str) -> str | None:
        """The OS account the file names for ``user`` (None: it names none)."""
        self._reload_if_changed()
        return self._accounts.get(user)

    def ids_for(self, user: str) -> tuple[int, int] | None:
        """The ``(uid, gid)`` the file gives ``user`` (None: it gives none)."""
        self._reload_if_changed()
        return self._ids.get(user)

    def __len__(self) -> int:
        return len(self._by_digest)


def header_user(scope: Scope, header: str) -> str | None:
    """The user a trusted proxy's header names, if the request has it."""
    wanted = header.lower().encode("latin-1")
    for name, value in scope.get("headers", []):
        if name == wanted:
            return value.decode("latin-1").strip() or None
    return None


def authenticated_user(conn: HTTPConnection) -> str | None:
    """The user the request's token or trusted header names; None: no particular user (the
    static token, or no auth), who sees every kernel as in a single-user gateway."""
    return conn.scope.get(USER_SCOPE_KEY)


def authenticated_groups(conn: HTTPConnection) -> frozenset[str]:
    """The groups of :func:`authenticated_user` (none for a header-named user)."""
    return conn.scope.get(GROUPS_SCOPE_KEY) or frozenset()


def may_see(
    config: GatewayConfig,
    viewer: str | None,
    owner: str | None,
    groups: Iterable[str] = (),
) -> bool:
    """Whether ``viewer`` (an authenticated user in ``groups``, or None) may see a kernel of
    ``owner``: their own, or anyone's for an admin (``--admin-users``, ``group:`` entries
    too)."""
    return viewer is None or viewer == owner or listed(config.admin_users, viewer, groups)


def claim_username(env: dict[str, str], user: str | None) -> str | None:
    """The kernel's user: the authenticated ``user``, who overrides whatever
    ``KERNEL_USERNAME`` the request sent (so nobody starts kernels as someone else), else
    the request's ``KERNEL_USERNAME``. It becomes the launch request's ``username``, which
    the kernel's environment carries as ``KERNEL_USERNAME`` over the request's own
    (:func:`raygate.launchers.kernelside.env.kernel_env`)."""
    if user is None:
        return env.get("KERNEL_USERNAME") or None
    claimed = env.get("KERNEL_USERNAME")
    if claimed and claimed != user:
        log.info("start request by %s named KERNEL_USERNAME=%s; using %s", user, claimed, user)
    return user


def _who(username: str | None) -> str:
    return f"User {username!r}" if username else "A request with no user"


def check_allowed(
    config: GatewayConfig,
    username: str | None,
    spec_name: str,
    metadata: KernelSpecMetadata,
    groups: Iterable[str] = (),
) -> None:
    """403 unless ``username`` (in ``groups``) may start kernels of this kernelspec: the
    global deny and allow lists, then the kernelspec's ``metadata.raygate.deny_users`` /
    ``allow_users``; their ``group:NAME`` entries name the group's members."""
    groups = frozenset(groups)
    rules = (
        (config.deny_users, config.allow_users, "this gateway's"),
        (metadata.deny_users, metadata.allow_users, "its"),
    )
    for deny, allow, whose in rules:
        if listed(deny, username, groups):
            raise APIError(
                403,
                f"{_who(username)} may not start kernelspec {spec_name!r}: "
                f"the user is in {whose} deny list",
            )
        if allow and not listed(allow, username, groups):
            reason = (
                "the user is not in"
                if username
                else "no user is known (no per-user token, user header or KERNEL_USERNAME) for"
            )
            raise APIError(
                403,
                f"{_who(username)} may not start kernelspec {spec_name!r}: "
                f"{reason} {whose} allow list",
            )


@dataclass
class Usage:
    """What one user's kernels (live and starting) asked for, summed."""

    kernels: int = 0
    gpus: float = 0.0
    memory: int = 0

    @classmethod
    def of(cls, requests: Iterable[ResourceRequest]) -> Usage:
        usage = cls()
        for request in requests:
            usage.kernels += 1
            usage.gpus += request.gpus or 0.0
            usage.memory += request.memory or 0
        return usage


def _plural(amount: float, word: str) -> str:
    return f"{amount:g} {word}" + ("" if amount == 1 else "s")


@dataclass(frozen=True)
class UserCaps:
    """The per-user caps that hold for one user (0: no cap), and for each one set by a
    group, that group (``whence``: cap key -> group), for the 403's message."""

    kernels: int = 0
    gpus: float = 0.0
    memory: int = 0
    whence: Mapping[str, str] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.kernels or self.gpus or self.memory)


def caps_for(config: GatewayConfig, groups: Iterable[str] = ()) -> UserCaps:
    """The per-user caps of a user in ``groups``. Users in no group that ``group_caps``
    names get the ``--max-*-per-user`` caps. Each group's table replaces those for its
    members (a cap its table leaves out stays the global one), and a user in several such
    groups gets, cap by cap, the most generous of theirs (no cap, 0, beats any)."""
    base = {
        "max_kernels_per_user": config.max_kernels_per_user,
        "max_gpus_per_user": config.max_gpus_per_user,
        "max_memory_per_user": config.max_memory_per_user,
    }
    tables = {g: config.group_caps[g] for g in sorted(set(groups)) if g in config.group_caps}
    if not tables:
        return UserCaps(
            config.max_kernels_per_user, config.max_gpus_per_user, config.max_memory_per_user
        )
    chosen: dict[str, float] = {}
    whence: dict[str, str] = {}
    for key in CAP_KEYS:
        candidates = [
            (table.get(key, base[key]), group if key in table else None)
            for group, table in tables.items()
        ]
        unlimited = [c for c in candidates if c[0] == 0]
        value, origin = unlimited[0] if unlimited else max(candidates, key=lambda c: c[0])
        chosen[key] = value
        if origin is not None:
            whence[key] = origin
    return UserCaps(
        int(chosen["max_kernels_per_user"]),
        float(chosen["max_gpus_per_user"]),
        int(chosen["max_memory_per_user"]),
        whence,
    )


def _cap_text(caps: UserCaps, key: str) -> str:
    group = caps.whence.get(key)
    return f" (the cap of group {group!r})" if group else ""


def check_user_limits(
    caps: UserCaps, username: str | None, held: Usage, asked: ResourceRequest
) -> None:
    """403 when one more kernel asking for ``asked`` takes ``username`` past one of their
    ``caps`` (:func:`caps_for`). Requests with no user have no per-user limits
    (``--max-kernels`` still holds)."""
    if not username:
        return
    who = f"user {username!r}"
    cap = caps.kernels
    if cap and held.kernels + 1 > cap:
        raise APIError(
            403,
            f"Per-user kernel limit reached: {who} holds {_plural(held.kernels, 'kernel')} "
            f"(starts in flight included), at most {cap} per user"
            + _cap_text(caps, "max_kernels_per_user"),
        )
    cap_gpus = caps.gpus
    if cap_gpus and asked.gpus and held.gpus + asked.gpus > cap_gpus:
        raise APIError(
            403,
            f"Per-user GPU limit reached: {who} holds {_plural(held.gpus, 'GPU')} and asks for "
            f"{asked.gpus:g} more, at most {_plural(cap_gpus, 'GPU')} per user"
            + _cap_text(caps, "max_gpus_per_user"),
        )
    cap_memory = caps.memory
    if cap_memory and asked.memory and held.memory + asked.memory > cap_memory:
        raise APIError(
            403,
            f"Per-user memory limit reached: {who} holds {format_bytes(held.memory)} and asks "
            f"for {format_bytes(asked.memory)} more, at most {format_bytes(cap_memory)} per user"
            + _cap_text(caps, "max_memory_per_user"),
        )
