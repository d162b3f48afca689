"""The OS account a kernel runs as, when it is not the supervisor's own.

A :class:`KernelSupervisor <.supervisor.KernelSupervisor>` given an :class:`Account`
(and running as root) drops the kernel process to it before exec (supplementary groups,
gid, uid) and makes the kernel's runtime files the account's own, so no other account can
read its connection file or log. Who decides which account a kernel gets is the
gateway's business (issue 18's isolation mode); this module only knows how to become one.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import asdict, dataclass, field
from typing import Any


class AccountError(Exception):
    """The kernel cannot run as the account asked for (unknown, or not allowed here)."""


@dataclass(frozen=True)
class Account:
    """One OS account: what a process needs to become it."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = field(default=())
    """Supplementary groups (as ``initgroups`` would set them)."""
    home: str = ""

    @classmethod
    def lookup(cls, name: str) -> Account:
        """The account of that name on this host, with its groups; :class:`AccountError`
        if there is none."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise AccountError(f"there is no account {name!r} on this host") from None
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    def env(self) -> dict[str, str]:
        """The variables a login as this account would have (the last layer of the
        kernel's environment, :func:`.env.kernel_env`)."""
        env = {"USER": self.name, "LOGNAME": self.name}
        if self.home:
            env["HOME"] = self.home
        return env

    def to_dict(self) -> dict[str, Any]:
        """A JSON form, to travel to a Ray actor or a bootstrap."""
        return {**asdict(self), "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Account:
        return cls(
            name=str(data["name"]),
            uid=int(data["uid"]),
            gid=int(data["gid"]),
            groups=tuple(int(g) for g in data.get("groups") or ()),
            home=str(data.get("home") or ""),
        )


def needs_switch(account: Account | None) -> bool:
    """Whether starting a kernel as ``account`` means changing credentials; raises
    :class:`AccountError` when this process cannot (it is not root and the account is not
    its own)."""
    if account is None:
        return False
    euid = os.geteuid()
    if account.uid == euid and account.gid == os.getegid():
        return False
    if euid != 0:
        raise AccountError(
            f"cannot start a kernel as account {account.name!r} (uid {account.uid}): "
            f"the kernel's supervisor runs as uid {euid}, not as root"
        )
    return True


def give(path: str, account: Account | None, mode: int) -> None:
    """Make ``path`` the account's own (when it is not ours), with ``mode``."""
    os.chmod(path, mode)
    if needs_switch(account):
        assert account is not None
        os.chown(path, account.uid, account.gid)
