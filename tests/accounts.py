"""OS accounts for the tenant tests, made for the test session and removed after it.

The isolation tests need real accounts to run kernels as (CI runs as root). Each account
is made with ``useradd`` unless it exists already; only accounts this module made are
removed at the end (``userdel -r``, home included), so the machine is left as it was
found. An account that exists but was not made here is used as it is and left alone.

The password field is ``*`` (no password, but not "locked"): OpenSSH without PAM refuses
a locked (``!``) account even for key logins, and the SSH tests log in as these accounts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil

MARK = "raygate test account"
REACH_STATE = "/tmp/raygate-test-accounts-reach.json"
"""Directories opened for the accounts, their modes before, and which test processes hold
them (shared by pytest-xdist's workers, under a lock)."""


@contextlib.contextmanager
def _reach_state() -> Iterator[dict[str, Any]]:
    with open(REACH_STATE + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(REACH_STATE) as f:
                state = json.load(f)
        except (OSError, ValueError):
            state = {}
        yield state
        if state:
            with open(REACH_STATE, "w") as f:
                json.dump(state, f)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(REACH_STATE)


"""The GECOS comment of the accounts made here."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def of(cls, name: str) -> Account:
        entry = pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def can_make_accounts() -> str:
    """Why accounts cannot be made here ("" when they can)."""
    if os.geteuid() != 0:
        return "making OS accounts needs root (CI runs as root)"
    for tool in ("useradd", "userdel"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


def exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class TestAccounts:
    """The accounts of one test session; :meth:`remove` takes away those it made."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.made: list[str] = []
        self.opened: dict[str, int] = {}
        """Directories made traversable for the accounts, with their modes before."""

    def reach(self, path: str) -> None:
        """Let the accounts traverse to ``path`` (e.g. the Python the kernels run, which a
        pyenv keeps under root's 0700 home): each directory above it gets ``o+x`` (not
        ``o+r``: nothing becomes listable) until the last test process that asked for it
        (pytest-xdist runs several) calls :meth:`remove`, which puts its mode back."""
        here = os.path.dirname(os.path.realpath(path))
        with _reach_state() as state:
            while True:
                mode = stat.S_IMODE(os.stat(here).st_mode)
                entry = state.get(here)
                if entry is None and not mode & stat.S_IXOTH:
                    entry = state[here] = {"mode": mode, "holders": []}
                    os.chmod(here, mode | stat.S_IXOTH)
                if entry is not None and os.getpid() not in entry["holders"]:
                    entry["holders"].append(os.getpid())
                    self.opened[here] = entry["mode"]
                parent = os.path.dirname(here)
                if parent == here:
                    return
                here = parent

    def ensure(self, name: str) -> Account:
        """The account ``name``, made now unless it exists (idempotent)."""
        if not exists(name):
            subprocess.run(
                ["useradd", "--create-home", "--shell", "/bin/sh", "--comment", MARK,
                 "--password", "*", "--user-group", name],
                check=True,
                capture_output=True,
            )  # fmt: skip
            self.made.append(name)
        return Account.of(name)

    def remove(self) -> None:
        for name in reversed(self.made):
            # Kernels left by a failed test would make userdel refuse: theirs go first.
            uid = pwd.getpwnam(name).pw_uid
            for process in psutil.process_iter(["uids"]):
                if process.info["uids"] and process.info["uids"].real == uid:
                    with contextlib.suppress(psutil.Error):
                        process.kill()
            subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        self.made.clear()
        with _reach_state() as state:
            for path in self.opened:
                entry = state.get(path)
                if entry is None:
                    continue
                holders = [p for p in entry["holders"] if p != os.getpid() and psutil.pid_exists(p)]
                if holders:
                    entry["holders"] = holders
                else:
                    os.chmod(path, entry["mode"])
                    del state[path]
        self.opened.clear()
