"""The OpenAPI description: it covers every route, and schemathesis, generating requests
from it against a live gateway, gets no 5xx, only the answers it describes, and leaves the
gateway healthy."""

from __future__ import annotations

import pytest
from starlette.routing import Route, WebSocketRoute

from conftest import TOKEN, needed_module, wait_gone
from raygate.app import api_routes
from raygate.openapi import openapi_spec

POSITIVE_EXAMPLES = 15
NEGATIVE_EXAMPLES = 10
"""Generated requests per operation: valid per the description, then invalid ones."""
KERNEL_STARTS = {("POST", "/api/kernels"), ("POST", "/api/kernels/{kernel_id}/restart")}
POSITIVE_STARTS = 5
"""Valid requests of the operations that start a real kernel each (about a second of a busy
machine's CPU): their valid bodies differ in little else than which kernel starts."""
MAX_KERNELS = 3


def test_every_route_is_described() -> None:
    spec = openapi_spec()
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    for route in api_routes():
        path = route.path.replace("{filename:path}", "{filename}")
        if isinstance(route, WebSocketRoute):
            served.add((path, "get"))  # the upgrade is a GET
        elif isinstance(route, Route):
            served |= {(path, m.lower()) for m in route.methods or () if m != "HEAD"}
    served.discard(("/api/", "get"))  # the same as /api
    assert served == described
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            if op.get("security") != []:
                assert "401" in op["responses"], (method, path)
    start = spec["paths"]["/api/kernels"]["post"]["requestBody"]["content"]["application/json"]
    env = spec["components"]["schemas"]["Env"]
    assert start["schema"] == {"$ref": "#/components/schemas/StartKernel"}
    assert env["type"] == "object" and env["additionalProperties"] == {"type": "string"}


def test_swagger_is_served_and_based(start_server) -> None:
    server = start_server("--default-launcher", "local", "--base-url", "/gw")
    import httpx

    response = httpx.get(server.url + "/gw/api/swagger.json")  # no token needed
    assert response.status_code == 200
    assert response.json()["servers"] == [{"url": "/gw"}]


def _run(operation, server, auth, stats, cleanup=None, positive=POSITIVE_EXAMPLES, **fixed) -> None:
    """Generated requests for one operation, valid then invalid ones; ``fixed`` pins
    parameters (e.g. a real kernel id); ``cleanup`` sees every response."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # No 5xx, and every answer is one the description promises: its status code, its
    # content type and its body's schema (what clients generated from it rely on).
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    for mode, examples in (
        (GenerationMode.POSITIVE, positive),
        (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
    ):

        @given(case=operation.as_strategy(generation_mode=mode, **fixed))
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call(base_url=server.url, headers=auth, timeout=60)
            key = f"{case.method} {case.path}"
            stats.setdefault(key, []).append(response.status_code)
            if cleanup is not None:
                cleanup(response)
            case.validate_response(response, checks=checks)

        try:
            check()
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): the valid cases suffice.
            assert mode == GenerationMode.NEGATIVE, operation.path


@pytest.mark.timeout(480)  # about 2 minutes alone; twice that on a busy machine
def test_schemathesis_finds_no_server_errors(start_server) -> None:
    schemathesis = needed_module("schemathesis")

    server = start_server(
        "--default-launcher", "local", "--max-kernels", str(MAX_KERNELS), "--log-level", "warning"
    )
    client = server.client
    auth = {"Authorization": f"token {TOKEN}"}
    schema = schemathesis.openapi.from_url(server.url + "/api/swagger.json", headers=auth)
    operations = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations[(operation.method.upper(), operation.path)] = operation
    stats: dict[str, list[int]] = {}

    def stop_started(response) -> None:
        # Kernels that generated start requests started are stopped at once, so that each
        # start reaches a launcher; sessions' kernels stay, until --max-kernels says 403.
        assert len(client.get("/api/kernels").json()) <= MAX_KERNELS
        if response.status_code == 201:
            client.shutdown_kernel(response.json()["id"])

    # Every operation with generated parameters (unknown ids: 404s, bad bodies: 400s).
    for (method, path), operation in operations.items():
        if path.endswith("/channels"):
            continue  # a WebSocket upgrade; the bridge has its own tests
        starts = (method, path) == ("POST", "/api/kernels")
        positive = POSITIVE_STARTS if (method, path) in KERNEL_STARTS else POSITIVE_EXAMPLES
        _run(operation, server, auth, stats, stop_started if starts else None, positive)
    assert len(client.get("/api/kernels").json()) <= MAX_KERNELS
    for leftover in client.get("/api/sessions").json():
        assert client.delete(f"/api/sessions/{leftover['id']}").status_code == 204

    # The same on a real kernel and session: get, interrupt, restart, then delete them.
    kernel = client.start_kernel(env={"KERNEL_USERNAME": "fuzz"})
    session = client.post("/api/sessions", json={"path": "a.ipynb", "kernel": {"id": kernel["id"]}})
    assert session.status_code == 201, session.text
    real = {"kernel_id": kernel["id"]}
    for method, path in (
        ("GET", "/api/kernels/{kernel_id}"),
        ("POST", "/api/kernels/{kernel_id}/interrupt"),
        ("POST", "/api/kernels/{kernel_id}/restart"),
    ):
        positive = POSITIVE_STARTS if (method, path) in KERNEL_STARTS else POSITIVE_EXAMPLES
        _run(operations[(method, path)], server, auth, stats, None, positive, path_parameters=real)
    session_path = "/api/sessions/{session_id}"
    real = {"session_id": session.json()["id"]}
    for method in ("GET", "PATCH", "DELETE"):
        _run(operations[(method, session_path)], server, auth, stats, path_parameters=real)

    codes = {code for seen in stats.values() for code in seen}
    assert {200, 201, 204, 400, 404} <= codes, {k: sorted(set(v)) for k, v in stats.items()}
    assert len(stats) >= 20, stats

    # Healthy after: it answers, and what it started can be shut down, leaving no process.
    assert client.get("/api").status_code == 200
    kernels = client.get("/api/kernels")
    assert kernels.status_code == 200
    pids = server.kernel_pids()
    for leftover in kernels.json():
        client.shutdown_kernel(leftover["id"])
    assert client.get("/api/kernels").json() == []
    assert client.get("/api/sessions").json() == []
    assert wait_gone(pids) == []


def test_session_with_a_notebook_that_is_not_an_object_is_a_400(gateway) -> None:
    response = gateway.post("/api/sessions", json={"notebook": "a.ipynb"})
    assert response.status_code == 400, response.text
    assert "path" in response.json()["message"]
