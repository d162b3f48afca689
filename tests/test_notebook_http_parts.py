"""notebook-http's pure parts: the notebook's endpoints, REQUEST, routing, answers, settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nbhttp import notebook, write_notebook
from raygate.errors import APIError
from raygate.notebook_http.execute import Outcome
from raygate.notebook_http.handlers import respond
from raygate.notebook_http.notebook import NotebookError, parse_api, read_notebook
from raygate.notebook_http.request import (
    BadRequest,
    Router,
    body_value,
    header_name,
    headers_value,
    request_code,
    request_value,
)
from raygate.notebook_http.settings import parse_api as parse_api_modes


def api_of(cells: list, **kwargs):
    nb = notebook(cells, **kwargs)
    for cell in nb["cells"]:
        cell["source"] = "".join(cell["source"])
    return parse_api(nb, "/srv/my.api.ipynb")


def test_endpoints_joined_seed_cells_kept_in_order() -> None:
    api = api_of(
        [
            ("markdown", "# GET /not/a/cell"),
            "import json",
            "# GET /hello\nprint('one')",
            "x = 1",  # after an endpoint: still a seed cell
            "# GET /hello\nprint('two')",
            "# POST /hello\nprint('post')",
            "# ResponseInfo GET /hello\nprint(json.dumps({'status': 201}))",
            "  # GET /indented  is not an annotation",
        ]
    )
    assert api.seed_cells == ["import json", "x = 1", "  # GET /indented  is not an annotation"]
    hello = api.endpoint("/hello")
    assert hello is not None
    assert hello.sources["GET"] == "# GET /hello\nprint('one')\n# GET /hello\nprint('two')\n"
    assert set(hello.sources) == {"GET", "POST"}
    assert set(hello.responses) == {"GET"}
    assert api.kernel_name == "python3" and api.language == "python"
    assert api.spec["info"] == {"version": "0.0.0", "title": "my"}
    assert api.spec["paths"]["/hello"] == {
        "get": {"responses": {"200": {"description": "Success"}}},
        "post": {"responses": {"200": {"description": "Success"}}},
    }


def test_order_constant_paths_first_then_deepest_parameter() -> None:
    paths = ["/:id", "/t/:id", "/test/test/test/:id", "/test/:id", "/test/test/test/test", "/a/b"]
    api = api_of([f"# GET {p}\nprint(1)" for p in paths])
    order = [e.path for e in api.endpoints]
    assert order[:2] == ["/test/test/test/test", "/a/b"]
    assert order[2] == "/test/test/test/:id"
    assert set(order[3:5]) == {"/t/:id", "/test/:id"} and order[5] == "/:id"
    router = Router(api.endpoints)
    found = router.match("/test/test/test/7")
    assert found is not None and found.endpoint.path == "/test/test/test/:id"
    assert found.params == {"id": "7"}
    assert router.match("/x").endpoint.path == "/:id"  # type: ignore[union-attr]
    assert router.match("/x/") is None  # a parameter is one non-empty segment
    assert router.match("/a/b/c") is None
    assert router.match("/test/a%20b").params == {"id": "a b"}  # type: ignore[union-attr]


def test_scala_comments_and_no_endpoints() -> None:
    api = api_of(["// GET /s\nprintln(1)", "# GET /py"], language="scala")
    assert [e.path for e in api.endpoints] == ["/s"]
    with pytest.raises(NotebookError, match=r"/srv/my\.api\.ipynb has no endpoints"):
        api_of(["print(1)"])


def test_swagger_parser_uses_the_notebooks_own_spec() -> None:
    spec = {
        "swagger": "2.0",
        "info": {"title": "People", "version": "1.0"},
        "paths": {
            "/people": {
                "get": {"operationId": "list", "responses": {"200": {"description": "ok"}}}
            },
            "/person": {
                "get": {
                    "operationId": "one",
                    "parameters": [{"name": "id", "in": "path"}],
                    "responses": {"200": {"description": "ok"}},
                }
            },
        },
    }
    nb = notebook(
        [
            ("markdown", "The API:\n```json\n" + json.dumps(spec) + "\n```\n"),
            "people = ['a']",
            "# operationId: list\nprint(people)",
            "# operationId: one\nprint(people[0])",
            "# ResponseInfo operationId: one\nprint('{}')",
        ]
    )
    for cell in nb["cells"]:
        cell["source"] = "".join(cell["source"])
    api = parse_api(nb, "people.ipynb", "swagger")
    assert api.spec == spec
    assert api.seed_cells == ["people = ['a']"]
    assert {e.path: set(e.sources) for e in api.endpoints} == {
        "/people": {"GET"},
        "/person/:id": {"GET"},
    }
    assert set(api.endpoint("/person/:id").responses) == {"GET"}  # type: ignore[union-attr]


def test_unreadable_notebooks_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.ipynb"
    with pytest.raises(NotebookError, match=r"cannot read the seed notebook .*gone\.ipynb"):
        read_notebook(str(missing))
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(NotebookError, match=r"bad\.ipynb is not JSON"):
        read_notebook(str(bad))
    bad.write_text(json.dumps({"nbformat": 3, "cells": []}))
    with pytest.raises(NotebookError, match="nbformat 3"):
        read_notebook(str(bad))
    good = write_notebook(tmp_path / "ok.ipynb", ["# GET /a\nprint(1)"])
    assert read_notebook(good)["cells"][0]["source"] == "# GET /a\nprint(1)"


def test_request_value_as_kernel_gateway_builds_it() -> None:
    pairs = [("host", "h"), ("content-type", "application/json"), ("x-many", "1"), ("x-many", "2")]
    value = request_value(b'{"a": [1]}', "q=1&q=2&blank=", {"id": "7"}, pairs)
    assert value == {
        "body": {"a": [1]},
        "args": {"q": ["1", "2"], "blank": [""]},
        "path": {"id": "7"},
        "headers": {"Host": "h", "Content-Type": "application/json", "X-Many": ["1", "2"]},
    }
    code = request_code(value, "python")
    namespace: dict = {}
    exec(code, namespace)
    assert json.loads(namespace["REQUEST"]) == value
    assert request_code({}, "bash") == 'REQUEST="{}"'
    assert request_code({}, "perl") == 'my $REQUEST = "{}"'


def test_body_by_content_type() -> None:
    assert body_value(b"{bad json", "application/json") == "{bad json"  # given as text
    assert body_value(b'{"a": 1}', "application/json; charset=utf-8") == '{"a": 1}'  # exact type
    assert body_value(b"a=1&a=2&b=", "application/x-www-form-urlencoded") == {
        "a": ["1", "2"],
        "b": [""],
    }
    assert body_value(b"plain", None) == "plain"
    assert body_value(b"", "application/json") == ""
    multipart = (
        b'--XX\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="up"; filename="f.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nfile body\r\n--XX--\r\n"
    )
    assert body_value(multipart, "multipart/form-data; boundary=XX") == {"field": ["value"]}
    with pytest.raises(BadRequest, match="UTF-8"):
        body_value(b"\xff\xfe", "text/plain")


def test_header_names_as_tornado_spells_them() -> None:
    assert header_name("content-type") == "Content-Type"
    assert header_name("IF-NONE-MATCH") == "If-None-Match"
    assert headers_value([("a", "1"), ("A", "2"), ("a", "3")]) == {"A": ["1", "2", "3"]}


def test_answers_from_outcomes() -> None:
    ok = Outcome(stdout=["hi\n"])
    r = respond([Outcome(), ok], False)
    assert (r.status_code, r.body, r.headers["content-type"]) == (200, b"hi\n", "text/plain")
    etag = r.headers["etag"]
    assert etag == '"' + hashlib.sha1(b"hi\n").hexdigest() + '"'  # as Tornado makes it
    assert respond([Outcome(), ok], False, "GET", etag).status_code == 304
    assert respond([Outcome(), ok], False, "GET", f'"x", W/{etag}').status_code == 304
    assert respond([Outcome(), ok], False, "POST", etag).status_code == 200
    assert "etag" not in respond([Outcome(), ok], False, "POST").headers
    r = respond([Outcome(), Outcome(result={"text/plain": "3"})], False)
    assert r.body == b'{"text/plain": "3"}'  # no stdout: the result's data as JSON
    r = respond([Outcome(), Outcome(error="Error ValueError: x \n")], False)
    assert (r.status_code, r.body) == (500, b"Error ValueError: x \n")
    info = Outcome(stdout=['{"status": 201, "headers": {"Content-Type": "application/json"}}'])
    r = respond([Outcome(), ok, info], True)
    assert (r.status_code, r.headers["content-type"]) == (201, "application/json")
    r = respond([Outcome(), ok, Outcome(stdout=['{"status": 304}'])], True)
    assert (r.status_code, r.body, r.headers.get("content-type")) == (304, b"", None)
    for printed in ("not json", "[1]", '{"status": "200"}', '{"status": 99}', '{"headers": 1}'):
        with pytest.raises(APIError) as err:
            respond([Outcome(), ok, Outcome(stdout=[printed])], True)
        assert err.value.status == 500


def test_api_setting() -> None:
    assert parse_api_modes("notebook-http") == ("notebook-http",)
    assert parse_api_modes("kernel_gateway.notebook_http") == ("notebook-http",)
    assert parse_api_modes("notebook-http, kernel") == ("kernel", "notebook-http")
    assert parse_api_modes("") == ("kernel",)
    with pytest.raises(ValueError, match="not one of"):
        parse_api_modes("websocket")
