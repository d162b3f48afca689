"""The yarn launcher against a Kerberized stand-in ResourceManager, with a real KDC.

A real MIT KDC on loopback (tests/krb5kdc.py) holds a test realm: the stand-in RM's
service principal ``HTTP/localhost`` (whose keytab it checks each request's SPNEGO token
against, as a Kerberized RM's web filter does) and the gateway's ``raygate/localhost``,
which the stand-in lets impersonate users (``doAs``, Hadoop's proxy users). The gateway
authenticates with its keytab (``--yarn-keytab``/``--yarn-principal``): no ``user.name``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import test_yarn
from krb5kdc import REALM, TestKDC
from test_yarn import start_rm

from conftest import ServerProcess, missing, stop_process
from kgclient import Gateway

# test_yarn's fixtures: the gateway's arguments (pointed at this module's yarn_rm), and
# other accounts' reach of this Python
yarn_args = test_yarn.yarn_args
reach_python = test_yarn.reach_python

try:
    import gssapi
except ImportError:  # pragma: no cover - CI installs it
    gssapi = None


@pytest.fixture(scope="module")
def kdc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestKDC]:
    if gssapi is None:
        missing("the gssapi package", "pip install gssapi (needs libkrb5-dev)")
    realm = TestKDC(tmp_path_factory.mktemp("kdc"))
    with pytest.MonkeyPatch.context() as patch:  # this process's own calls use the realm
        patch.setenv("KRB5_CONFIG", realm.env["KRB5_CONFIG"])
        yield realm
    realm.stop()


@pytest.fixture(scope="module")
def yarn_rm(kdc: TestKDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Kerberized stand-in (``yarn_args`` of test_yarn point the gateway at it)."""
    http, keytab = kdc.principal("HTTP/localhost")
    args = ["--keytab", keytab, "--principal", http, "--proxy-user", "raygate"]
    url, proc, log_path = start_rm(
        tmp_path_factory.mktemp("yarn"), *args, env=kdc.env, host="localhost"
    )
    yield url
    stop_process(proc, log_path=log_path)


@pytest.fixture(scope="module")
def gateway_principal(kdc: TestKDC) -> tuple[str, str]:
    return kdc.principal("raygate/localhost")


def kerberos_args(yarn_args: list[str], principal: str, keytab: str) -> list[str]:
    return [*yarn_args, "--yarn-principal", principal, "--yarn-keytab", keytab]


def as_principal(principal: str, keytab: str, user: str | None = None) -> httpx.Client:
    """This test's own calls to the RM, authenticated as ``principal`` (acting for
    ``user``)."""
    from raygate.launchers.yarn.client import Negotiate

    auth = Negotiate(principal, keytab)

    class Sync(httpx.Auth):
        def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
            request.headers["Authorization"] = "Negotiate " + auth.token(request.url.host)
            yield request

    return httpx.Client(auth=Sync(), params={"doAs": user} if user else {})


async def test_kernel_through_a_kerberized_resource_manager(
    start_server: Callable[..., ServerProcess],
    yarn_args: list[str],
    yarn_rm: str,
    kdc: TestKDC,
    gateway_principal: tuple[str, str],
) -> None:
    # the RM refuses a request without a Negotiate token, as a Kerberized RM does
    r = httpx.get(f"{yarn_rm}/app/v1/services/version", params={"user.name": "raygate"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Negotiate"

    principal, keytab = gateway_principal
    server = start_server(*kerberos_args(yarn_args, principal, keytab), env=kdc.env)
    gw = server.client
    model = gw.start_kernel("yarn-python")
    assert (await gw.run(model["id"], "print(6 * 7)")).stdout == "42\n"
    with as_principal(principal, keytab) as rm:
        name = model["placement"]["service"]
        assert rm.get(f"{yarn_rm}/app/v1/services/{name}").json()["state"] == "STABLE"
        app = rm.get(f"{yarn_rm}/ws/v1/cluster/apps/{model['placement']['application_id']}")
        assert app.json()["app"]["user"] == "raygate"  # the principal's short name
        assert gw.delete(f"/api/kernels/{model['id']}").status_code == 204
        assert rm.get(f"{yarn_rm}/app/v1/services/{name}").status_code == 404


def test_a_keytab_without_the_principal_is_a_503_that_says_so(
    start_server: Callable[..., ServerProcess],
    yarn_args: list[str],
    yarn_rm: str,
    kdc: TestKDC,
    gateway_principal: tuple[str, str],
) -> None:
    _principal, keytab = gateway_principal
    args = kerberos_args(yarn_args, f"nobody-here@{REALM}", keytab)
    server = start_server(*args, env=kdc.env)
    r = server.client.post("/api/kernels", json={"name": "yarn-python"})
    assert r.status_code == 503, r.text
    assert "cannot authenticate to the YARN ResourceManager as nobody-here@" in r.json()["message"]
    assert server.client.get("/api/kernels").json() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="running a kernel as another account needs root")
async def test_users_mode_acts_for_the_user_with_doas(
    start_server: Callable[..., ServerProcess],
    yarn_args: list[str],
    yarn_rm: str,
    kdc: TestKDC,
    gateway_principal: tuple[str, str],
    tmp_path: Any,
    reach_python: None,
) -> None:
    users = tmp_path / "users.toml"
    users.write_text('[users.ada]\ntoken = "tok-ada"\naccount = "nobody"\n')
    principal, keytab = gateway_principal
    isolation = ["--kernel-isolation", "users", "--users-file", str(users)]
    server = start_server(*kerberos_args(yarn_args, principal, keytab), *isolation, env=kdc.env)
    gw = Gateway(server.url, "tok-ada")
    model = gw.start_kernel("yarn-python")
    name = model["placement"]["service"]
    with as_principal(principal, keytab, user="nobody") as rm:
        # created with doAs=nobody: the user's own service, in the user's namespace
        assert rm.get(f"{yarn_rm}/app/v1/services/{name}").status_code == 200
        app = rm.get(f"{yarn_rm}/ws/v1/cluster/apps/{model['placement']['application_id']}")
        assert app.json()["app"]["user"] == "nobody"
    code = "import os, pwd; print(pwd.getpwuid(os.geteuid()).pw_name)"
    assert (await gw.run(model["id"], code)).stdout == "nobody\n"
    assert gw.delete(f"/api/kernels/{model['id']}").status_code == 204

    # a principal the RM does not let impersonate: a 500 with the RM's refusal, nothing made
    other, other_keytab = kdc.principal("other/localhost")
    server = start_server(*kerberos_args(yarn_args, other, other_keytab), *isolation, env=kdc.env)
    r = Gateway(server.url, "tok-ada").post("/api/kernels", json={"name": "yarn-python"})
    assert r.status_code == 500, r.text
    assert "is not allowed to impersonate nobody" in r.json()["message"]
