"""The pure parts of JupyterHub identity and groups: the Hub's answers read as
``jupyterhub/services/auth.py`` reads them (a stand-in ``ask`` answering what the Hub's
``GET /hub/api/user`` answers), the cache, group entries of user lists, per-group caps.
The real Hub is in tests/test_jupyterhub.py."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from raygate.config import GatewayConfig
from raygate.errors import APIError
from raygate.groups import listed, parse_group_caps
from raygate.jupyterhub import HubIdentity, hub_identity
from raygate.launchers.base import KernelSpecMetadata
from raygate.resources import ResourceRequest
from raygate.users import Principal, Usage, caps_for, check_allowed, check_user_limits

SERVICE = {"kind": "service", "name": "raygate", "scopes": []}


def user(name: str, groups: list[str], scopes: list[str] | None = None) -> dict[str, Any]:
    if scopes is None:
        scopes = ["access:services!service=raygate", f"read:users:name!user={name}"]
    return {"kind": "user", "name": name, "groups": groups, "scopes": scopes}


class StandInHub(HubIdentity):
    """HubIdentity whose HTTP question is answered from ``answers`` (token -> (status,
    body), or an APIError to raise as an unreachable Hub would), counting questions."""

    def __init__(self, answers: dict[str, Any], cache_seconds: float = 30.0) -> None:
        self.now = 0.0
        super().__init__("http://hub/hub/api", "service-token", cache_seconds, lambda: self.now)
        self.answers = {"service-token": (200, SERVICE), **answers}
        self.asked: list[str] = []

    async def ask(self, token: str) -> tuple[int, Any]:
        self.asked.append(token)
        await asyncio.sleep(0)  # as a real question would, let other requests run
        answer = self.answers.get(token, (403, {"status": 403, "message": "Forbidden"}))
        if isinstance(answer, APIError):
            raise answer
        return answer


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_users_token_names_them_and_their_groups() -> None:
    hub = StandInHub({"t-ada": (200, user("ada", ["physics", "staff"]))})
    assert run(hub.principal_for("t-ada")) == Principal("ada", frozenset({"physics", "staff"}))
    assert run(hub.principal_for("nobodys")) is None  # the Hub's 403


def test_answers_are_cached_and_a_revoked_token_stops_within_the_period() -> None:
    hub = StandInHub({"t-ada": (200, user("ada", []))}, cache_seconds=30)

    async def scenario() -> None:
        assert (await hub.principal_for("t-ada")).name == "ada"
        del hub.answers["t-ada"]  # revoked on the Hub
        hub.now = 29.0
        assert (await hub.principal_for("t-ada")).name == "ada"  # cached
        hub.now = 31.0
        assert await hub.principal_for("t-ada") is None

    run(scenario())
    assert hub.asked.count("t-ada") == 2


def test_requests_arriving_together_share_one_question() -> None:
    hub = StandInHub({"t-ada": (200, user("ada", []))})

    async def scenario() -> list[Principal | None]:
        return await asyncio.gather(*(hub.principal_for("t-ada") for _ in range(5)))

    assert {p.name for p in run(scenario())} == {"ada"}
    assert hub.asked.count("t-ada") == 1


def test_a_hub_that_is_down_is_a_503_and_cached_identities_hold() -> None:
    hub = StandInHub({"t-ada": (200, user("ada", []))})

    async def scenario() -> None:
        await hub.principal_for("t-ada")
        down = APIError(503, "JupyterHub did not answer")
        hub.answers = {k: down for k in ("t-ada", "t-bob", "service-token")}
        assert (await hub.principal_for("t-ada")).name == "ada"
        with pytest.raises(APIError) as err:
            await hub.principal_for("t-bob")
        assert err.value.status == 503
        hub.answers["t-bob"] = (200, user("bob", []))  # back up: the failure was not cached
        assert (await hub.principal_for("t-bob")).name == "bob"

    run(scenario())


@pytest.mark.parametrize(
    "answer",
    [(500, None), (502, {"message": "proxy"}), (200, None), (200, {"kind": "user"}), (200, [])],
)
def test_a_malformed_or_failing_hub_answer_is_a_502(answer: tuple[int, Any]) -> None:
    hub = StandInHub({"t": answer})
    with pytest.raises(APIError) as err:
        run(hub.principal_for("t"))
    assert err.value.status == 502 and "JupyterHub" in err.value.message


def test_a_services_token_is_nobody_and_scopes_are_required() -> None:
    hub = StandInHub(
        {
            "t-other-service": (200, {"kind": "service", "name": "other", "scopes": []}),
            "t-narrow": (200, user("cy", [], scopes=["read:users:name!user=cy"])),
            "t-admin": (200, user("root", [], scopes=["access:services"])),
        }
    )
    assert run(hub.principal_for("t-other-service")) is None
    with pytest.raises(APIError) as err:
        run(hub.principal_for("t-narrow"))
    assert err.value.status == 403 and "access:services!service=raygate" in err.value.message
    assert run(hub.principal_for("t-admin")).name == "root"


async def test_a_hub_that_is_down_is_a_503_and_the_probes_stay_up() -> None:
    """The auth middleware in front of an app, its Hub a port where nothing listens: a
    user's token gets a 503 JSON error saying so, not a 500; the health probe (an open
    path) and the static token keep working."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from raygate.auth import TokenAuthMiddleware

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/hub/api"  # closed when used
    hub = hub_identity(down, "service-token", 30)

    async def whoami(request: Any) -> JSONResponse:
        return JSONResponse({"user": request.scope.get("raygate.user")})

    app = Starlette(routes=[Route("/api/kernels", whoami), Route("/api/health", whoami)])
    guarded = TokenAuthMiddleware(app, "static", ["/api/health"], identities=[hub])
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://raygate") as client:
        r = await client.get("/api/kernels", headers={"Authorization": "token users-token"})
        assert r.status_code == 503
        assert set(r.json()) == {"reason", "message"}
        assert "JupyterHub did not answer" in r.json()["message"] and down in r.json()["message"]
        r = await client.get("/api/health", headers={"Authorization": "token users-token"})
        assert r.status_code == 200
        r = await client.get("/api/kernels", headers={"Authorization": "token static"})
        assert r.status_code == 200 and r.json() == {"user": None}
    await hub.close()


def test_serve_refuses_a_hub_without_its_token(refused_serve, monkeypatch) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    monkeypatch.delenv("RAYGATE_JUPYTERHUB_API_TOKEN", raising=False)
    result = refused_serve("--default-launcher", "local", "--jupyterhub-api-url", "http://h/api")
    assert result.exit_code == 2 and "JUPYTERHUB_API_TOKEN" in result.output
    result = refused_serve("--group-caps", '{"a": {"max_kernels": 1}}')
    assert result.exit_code == 2 and "group_caps.a must set some of" in result.output


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN"):
        hub_identity("http://hub:8081/hub/api", "", 30)
    with pytest.raises(ValueError, match="http"):
        hub_identity("hub:8081", "t", 30)


# -- groups -------------------------------------------------------------------------------


def test_group_entries_of_user_lists() -> None:
    assert listed(["ada", "group:physics"], "bob", {"physics"})
    assert listed(["ada"], "ada")
    assert not listed(["group:physics"], "bob", {"chemistry"})
    assert not listed(["group:physics"], "physics")  # a group entry is never a user's name
    assert not listed(["group:physics"], None, {"physics"})


def test_allow_and_deny_lists_take_groups() -> None:
    config = GatewayConfig(allow_users=["group:physics", "root"], deny_users=["group:banned"])
    spec = KernelSpecMetadata(allow_users=("group:gpu",))
    check_allowed(config, "ada", "python3", KernelSpecMetadata(), {"physics"})
    with pytest.raises(APIError, match="not in this gateway's allow list"):
        check_allowed(config, "bob", "python3", KernelSpecMetadata(), {"chemistry"})
    with pytest.raises(APIError, match="deny list"):
        check_allowed(config, "ada", "python3", KernelSpecMetadata(), {"physics", "banned"})
    with pytest.raises(APIError, match="its allow list"):
        check_allowed(config, "ada", "py-gpu", spec, {"physics"})
    check_allowed(config, "ada", "py-gpu", spec, {"physics", "gpu"})


def test_admins_by_group_see_every_kernel() -> None:
    from raygate.users import may_see

    config = GatewayConfig(admin_users=["root", "group:ops"])
    assert may_see(config, "olga", "ada", {"ops"})
    assert may_see(config, "root", "ada")
    assert not may_see(config, "bob", "ada", {"physics"})
    assert may_see(config, "bob", "bob")


def test_group_caps_parse_from_toml_tables_and_json() -> None:
    table = {"physics": {"max_gpus_per_user": 4, "max_memory_per_user": "1Gi"}}
    assert parse_group_caps(table) == {
        "physics": {"max_gpus_per_user": 4, "max_memory_per_user": 1 << 30}
    }
    assert parse_group_caps('{"a": {"max_kernels_per_user": 2}}') == {
        "a": {"max_kernels_per_user": 2}
    }
    assert parse_group_caps("") == {}
    for bad in ({"a": {"max_kernels": 2}}, {"a": {}}, {"a": 3}, {"a": {"max_gpus_per_user": -1}}):
        with pytest.raises(ValueError, match=r"group_caps\.a"):
            parse_group_caps(bad)
    with pytest.raises(ValueError, match="max_memory_per_user"):
        parse_group_caps({"a": {"max_memory_per_user": "lots"}})


def test_caps_for_a_user_in_groups_the_most_generous_wins() -> None:
    config = GatewayConfig(
        max_kernels_per_user=2,
        max_gpus_per_user=1,
        group_caps={
            "physics": {"max_gpus_per_user": 4, "max_kernels_per_user": 3},
            "students": {"max_kernels_per_user": 1},
            "staff": {"max_gpus_per_user": 0},
        },
    )
    assert caps_for(config, set()) == caps_for(config, {"unlisted"})
    assert (caps_for(config).kernels, caps_for(config).gpus) == (2, 1)
    students = caps_for(config, {"students"})
    assert (students.kernels, students.gpus) == (1, 1)  # tighter than the global cap
    both = caps_for(config, {"students", "physics"})
    assert (both.kernels, both.gpus, both.whence["max_gpus_per_user"]) == (3, 4, "physics")
    assert caps_for(config, {"physics", "staff"}).gpus == 0  # no cap beats any cap


def test_the_403_names_the_cap_and_its_group() -> None:
    config = GatewayConfig(group_caps={"physics": {"max_kernels_per_user": 1}})
    caps = caps_for(config, {"physics"})
    check_user_limits(caps, "ada", Usage(), ResourceRequest())
    with pytest.raises(APIError) as err:
        check_user_limits(caps, "ada", Usage(kernels=1), ResourceRequest())
    assert err.value.status == 403
    assert "at most 1 per user (the cap of group 'physics')" in err.value.message


def test_the_users_file_gives_groups_too(tmp_path: Any) -> None:
    from raygate.users import UsersFile, UsersFileError

    path = tmp_path / "users.toml"
    path.write_text('"t-bob" = "bob"\n[users.ada]\ntoken = "t-ada"\ngroups = ["physics"]\n')
    users = UsersFile(str(path))
    assert run(users.principal_for("t-ada")) == Principal("ada", frozenset({"physics"}))
    assert run(users.principal_for("t-bob")) == Principal("bob")
    path.write_text('[users.ada]\ntoken = "t-ada"\ngroups = "physics"\n')
    with pytest.raises(UsersFileError, match="groups must be a list"):
        UsersFile(str(path))
