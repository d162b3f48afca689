"""Identity to OS account, and what an isolated kernel inherits: the pure parts of
``--kernel-isolation users`` (raygate/isolation.py, launchers/kernelside/isolation.py,
the users file's per-user table), without a gateway."""

from __future__ import annotations

import os
import pwd

import pytest

from raygate.errors import APIError
from raygate.isolation import Identity, admit, check_config
from raygate.launchers.kernelside.account import Account
from raygate.launchers.kernelside.isolation import cluster_access, kernel_host_env
from raygate.users import UsersFile, UsersFileError, read_users_file

# an account every Debian/Ubuntu host has, not root
OTHER = next(
    (name for name in ("nobody", "daemon") if name in {e.pw_name for e in pwd.getpwall()}), ""
)


class Accounts:
    def __init__(
        self, table: dict[str, str], ids: dict[str, tuple[int, int]] | None = None
    ) -> None:
        self.table = table
        self.ids = ids or {}

    def account_for(self, user: str) -> str | None:
        return self.table.get(user)

    def ids_for(self, user: str) -> tuple[int, int] | None:
        return self.ids.get(user)


def write(tmp_path: os.PathLike, text: str, name: str = "users.toml") -> str:
    path = os.path.join(tmp_path, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_the_users_file_takes_plain_tokens_and_a_per_user_table(tmp_path: os.PathLike) -> None:
    path = write(
        tmp_path,
        '"tok1" = "user1"\n'
        "[users.user1]\n"
        'account = "os_user1"\n'
        "[users.user2]\n"
        'token = "tok2"\n'
        'account = "os_user2"\n'
        "[users.user3]\n"
        'token = "tok3"\n',
    )
    table = read_users_file(path)
    assert table.tokens == {"tok1": "user1", "tok2": "user2", "tok3": "user3"}
    assert table.accounts == {"user1": "os_user1", "user2": "os_user2"}
    users = UsersFile(path)
    assert users.user_for("tok2") == "user2"
    assert users.account_for("user2") == "os_user2"
    assert users.account_for("user3") is None
    json_path = write(tmp_path, '{"t": "a", "users": {"a": {"account": "b"}}}', "users.json")
    assert read_users_file(json_path).accounts == {"a": "b"}
    ids_path = write(tmp_path, '[users.ada]\ntoken = "t"\nuid = 4321\ngid = 4322\n', "ids.toml")
    assert read_users_file(ids_path).ids == {"ada": (4321, 4322)}
    assert UsersFile(ids_path).ids_for("ada") == (4321, 4322)
    assert UsersFile(ids_path).ids_for("bob") is None


@pytest.mark.parametrize(
    "text, words",
    [
        ('[users.a]\nshell = "/bin/sh"\n', "only 'token', 'account', 'uid', 'gid' and 'groups'"),
        ("[users.a]\nuid = 1000\n", "uid and gid go together"),
        ("[users.a]\nuid = 0\ngid = 100\n", "uid = 0 is root's"),
        ("[users.a]\nuid = 1000\ngid = 0\n", "gid = 0 is root's"),
        ('[users.a]\nuid = "1000"\ngid = 100\n', "uid must be a whole number"),
        ("[users.a]\nuid = 1000\ngid = true\n", "gid must be a whole number"),
        ('[users.a]\naccount = ""\n', "account must be a non-empty string"),
        ("[users.a]\ntoken = 3\n", "token must be a non-empty string"),
        ('"t" = 3\n', '"token" = "username"'),
    ],
)
def test_bad_per_user_entries_are_refused(tmp_path: os.PathLike, text: str, words: str) -> None:
    with pytest.raises(UsersFileError, match=words):
        read_users_file(write(tmp_path, text))


@pytest.mark.skipif(not OTHER, reason="no unprivileged system account on this host")
def test_admission_names_the_account_or_refuses_with_a_reason() -> None:
    assert admit("none", None, None) is None  # isolation off: the launcher's own account
    other = pwd.getpwnam(OTHER)
    mine = Identity(OTHER, other.pw_uid, other.pw_gid)
    assert admit("users", OTHER, None) == mine  # named like the user
    assert admit("users", "alice", Accounts({"alice": OTHER})) == mine  # mapped
    # the users file's ids (for kernels that run elsewhere): no account needed here
    ids = Accounts({}, {"ada": (4321, 4322)})
    assert admit("users", "ada", ids) == Identity("ada", 4321, 4322)
    cases = [
        (None, Accounts({}), "needs an authenticated user"),
        ("carol", Accounts({}), "has no OS account 'carol' (named like the user)"),
        ("dave", Accounts({"dave": "rg-nosuch"}), "'rg-nosuch' (the users file maps"),
        ("root", Accounts({}), "never run as root"),
        ("eve", Accounts({"eve": "../etc"}), "not a valid account name"),
    ]
    for user, accounts, words in cases:
        with pytest.raises(APIError) as info:
            admit("users", user, accounts)
        assert info.value.status == 403 and words in info.value.message, info.value.message


def test_isolation_settings_that_cannot_work_are_refused_at_startup() -> None:
    check_config("none", "", "", {"python3": 1})
    check_config("users", "users.toml", "", {})
    with pytest.raises(ValueError, match="--users-file"):
        check_config("users", "", "", {})
    with pytest.raises(ValueError, match="--prewarm"):
        check_config("users", "", "X-User", {"python3": 1})
    with pytest.raises(ValueError, match="one of none, users"):
        check_config("teams", "", "", {})


def test_an_isolated_kernel_inherits_nothing_secret(tmp_path: os.PathLike) -> None:
    account = Account("alice", 1234, 1234, (1234,), "/home/alice")
    token_file = write(tmp_path, "ray-token-from-file\n", "token")
    parent = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        "RAYGATE_AUTH_TOKEN": "gateway-secret",
        "RAY_AUTH_TOKEN_PATH": token_file,
        "RAY_AUTH_MODE": "token",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": "/etc/dask/ca.pem",
        "AWS_SECRET_ACCESS_KEY": "cloud-secret",
    }
    assert kernel_host_env(parent, None, True) is None  # not isolated: inherits it all
    plain = kernel_host_env(parent, account, granted=False)
    assert plain == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/home/alice",
    }
    granted = kernel_host_env(parent, account, granted=True)
    assert granted is not None
    assert granted["RAY_AUTH_TOKEN"] == "ray-token-from-file"  # the file is root's only
    assert "RAY_AUTH_TOKEN_PATH" not in granted and granted["RAY_AUTH_MODE"] == "token"
    assert granted["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == "/etc/dask/ca.pem"
    assert "RAYGATE_AUTH_TOKEN" not in granted and "AWS_SECRET_ACCESS_KEY" not in granted


def test_cluster_access_is_granted_by_the_kernelspec_in_users_mode() -> None:
    assert cluster_access(None, "none") and cluster_access({}, "none")
    assert not cluster_access(None, "users") and not cluster_access({}, "users")
    assert cluster_access({"cluster_access": True}, "users")
    assert cluster_access({"ray_access": True}, "users")
    assert not cluster_access({"ray_access": False}, "users")
