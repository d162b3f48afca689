"""Kernel isolation between users: ``--kernel-isolation users``.

In this mode each kernel runs as its user's own OS account, so what one user's kernel can
reach of another's is what one OS account can reach of another's: nothing of the files
(0700/0600, made by the kernel supervisor), nothing of ``/proc/<pid>/environ``, no
signals. On top of that the kernel's traffic is CurveZMQ, and its environment holds no
credential of the gateway or of the cluster unless its kernelspec grants cluster access.

This module is the gateway's part: :func:`check_config` at startup, and :func:`admit`, the
OS account a start runs as (or a 403 that says why none), for every start. The kernel
side's part (what of its environment an isolated kernel keeps, whether it is given its
cluster's credentials) is :mod:`raygate.launchers.kernelside.isolation`.

Identity is the authenticated user only (a per-user token of the users file, or the
trusted proxy header); a request's ``KERNEL_USERNAME`` never names the account.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from raygate.launchers.kernelside.account import Account, AccountError

from .errors import APIError

ISOLATIONS = ("none", "users")
_ACCOUNT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


class AccountSource(Protocol):
    """Where accounts named per user come from (raygate.users.UsersFile)."""

    def account_for(self, user: str) -> str | None: ...

    def ids_for(self, user: str) -> tuple[int, int] | None: ...


@dataclass(frozen=True)
class Identity:
    """The OS account a user's kernels run as: its name (what launchers that run the
    kernel on a host look up there) and its ids (what a Kubernetes pod runs as)."""

    account: str
    uid: int
    gid: int


def check_config(
    isolation: str, users_file: str, user_header: str, prewarm: Any, jupyterhub_api_url: str = ""
) -> None:
    """ValueError for settings that cannot serve this isolation (called at startup)."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"--kernel-isolation must be one of {', '.join(ISOLATIONS)}")
    if isolation != "users":
        return
    if not users_file and not user_header and not jupyterhub_api_url:
        raise ValueError(
            "--kernel-isolation users runs each kernel as its user's account, so users must "
            "be authenticated: give --users-file (per-user tokens), --jupyterhub-api-url "
            "(Hub users' tokens) or --user-header (a trusted proxy's)"
        )
    if prewarm:
        raise ValueError(
            "--prewarm cannot serve --kernel-isolation users: a warm kernel starts before "
            "its user is known, so it could not run as that user's account"
        )


def admit(isolation: str, user: str | None, accounts: AccountSource | None) -> Identity | None:
    """The OS account a start by the authenticated ``user`` runs as (None: isolation is
    off). Raises the start's 403 when there is no such account here: before anything is
    started. Called by the registry for every start.

    The ids are the users file's ``uid``/``gid`` for the user where it gives them (for a
    gateway whose kernels run elsewhere, e.g. in pods, with no such account on its host),
    else those of this host's account."""
    if isolation != "users":
        return None
    if not user:
        raise APIError(
            403,
            "This gateway runs each kernel as its user's own OS account "
            "(--kernel-isolation users), so a start needs an authenticated user (a per-user "
            "token or the trusted user header); this request has none, and KERNEL_USERNAME "
            "does not count",
        )
    named = accounts.account_for(user) if accounts is not None else None
    account = named or user
    how = f"the users file maps {user!r} to it" if named else "named like the user"
    if not _ACCOUNT_NAME.match(account):
        raise APIError(403, f"User {user!r}: {account!r} ({how}) is not a valid account name")
    ids = accounts.ids_for(user) if accounts is not None else None
    if ids is not None:  # the users file refuses 0
        return Identity(account, *ids)
    try:
        record = Account.lookup(account)
    except AccountError:
        raise APIError(
            403,
            f"User {user!r} has no OS account {account!r} ({how}) on this host: kernels run "
            "as their user's own account here (--kernel-isolation users); ask the operator "
            "to create it, to map the user to an account in the users file, or to give the "
            "user a uid and gid there",
        ) from None
    if record.uid == 0:
        raise APIError(
            403, f"User {user!r}: kernels never run as root ({account!r}) with user isolation"
        )
    return Identity(account, record.uid, record.gid)
