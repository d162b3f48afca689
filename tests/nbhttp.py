"""Notebooks for the notebook-http tests (and the benchmark), written for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def notebook(
    cells: list[str | tuple[str, str]], kernel: str = "python3", language: str = "python"
) -> dict[str, Any]:
    """An nbformat 4 notebook of ``cells``: code sources, or (cell_type, source) pairs."""
    out = []
    for cell in cells:
        kind, source = cell if isinstance(cell, tuple) else ("code", cell)
        entry: dict[str, Any] = {
            "cell_type": kind,
            "metadata": {},
            "source": source.splitlines(True),
        }
        if kind == "code":
            entry.update(outputs=[], execution_count=None)
        out.append(entry)
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": kernel, "display_name": kernel, "language": language},
            "language_info": {"name": language},
        },
        "cells": out,
    }


def write_notebook(path: Path, cells: list[str | tuple[str, str]], **kwargs: Any) -> str:
    path.write_text(json.dumps(notebook(cells, **kwargs), indent=1))
    return str(path)


# Notebooks in the style of Kernel Gateway's examples (etc/api_examples in its repository),
# written for these tests: the same features, served by both gateways in the comparison.

CONTACTS = [
    ("markdown", "# A contact list\nCreate, update, delete and list contacts over HTTP."),
    "import json\nimport os",
    "contacts = {}\nlast_id = 0\nfields = ['name', 'phone', 'address']",
    ("markdown", "A request to try the cells with while writing them:"),
    "REQUEST = json.dumps({'body': {'name': 'Jane Roe', 'phone': '555-0100'}})",
    "# POST /contacts\n"
    "req = json.loads(REQUEST)\n"
    "body = req['body']\n"
    "last_id += 1\n"
    "contact_id = str(last_id)\n"
    "contacts[contact_id] = {field: body.get(field) for field in fields}\n"
    "print(json.dumps({'contact_id': contact_id}))",
    "# ResponseInfo POST /contacts\n"
    "print(json.dumps({'status': 201, 'headers': {'Content-Type': 'application/json'}}))",
    "# PUT /contacts/:contact_id\n"
    "req = json.loads(REQUEST)\n"
    "contact_id = req['path']['contact_id']\n"
    "if contact_id in contacts:\n"
    "    contacts[contact_id].update({f: v for f, v in req['body'].items() if f in fields})\n"
    "    status = 200\n"
    "    print(json.dumps(contacts[contact_id]))\n"
    "else:\n"
    "    status = 404",
    "# ResponseInfo PUT /contacts/:contact_id\n"
    "print(json.dumps({'status': status, 'headers': {'Content-Type': 'application/json'}}))",
    "# DELETE /contacts/:contact_id\n"
    "req = json.loads(REQUEST)\n"
    "status = 204 if contacts.pop(req['path']['contact_id'], None) else 404",
    "# ResponseInfo DELETE /contacts/:contact_id\nprint(json.dumps({'status': status}))",
    "import re",
    "def matching(pattern):\n"
    "    if pattern is None:\n"
    "        return contacts\n"
    "    return {k: c for k, c in contacts.items() if re.search(pattern, c['name'] or '', re.I)}",
    "# GET /contacts\n"
    "req = json.loads(REQUEST)\n"
    "pattern = req['args'].get('name', [None])[0]\n"
    "print(json.dumps(matching(pattern), sort_keys=True))",
    "# ResponseInfo GET /contacts\nprint(json.dumps({'headers': {'Content-Type': 'application/json'}}))",
    ("markdown", "Trying it from here, but not when a gateway serves the notebook:"),
    "if 'KERNEL_GATEWAY' not in os.environ:\n    raise RuntimeError('this cell is for interactive use')",
]

ORDERING = [
    (
        "markdown",
        "# Endpoint order\nConstant paths first, then by the depth of the first parameter.",
    ),
    "# GET /test/test/test/test\nprint('constant')",
    "# GET /test/test/test/:id\nprint('depth 3', json.loads(REQUEST)['path'])",
    "# GET /test/test/:id\nprint('depth 2')",
    "# GET /t/t/:id\nprint('depth 2, t')",
    "# GET /test/:id\nprint('depth 1')",
    "# GET /t/:id\nprint('depth 1, t')",
    "# GET /:id\nprint('depth 0', json.loads(REQUEST)['path']['id'])",
    "import json",
]

PERSON = [
    ("markdown", "# Response metadata\nStatus and headers set by ResponseInfo cells."),
    "import hashlib\nimport json",
    "PEOPLE = {1: {'id': 1, 'name': 'Ada', 'age': 36, 'location': 'London'}}",
    "def person(person_id):\n    return PEOPLE[int(person_id)]\n\n\n"
    "def etag(person_id):\n"
    "    return hashlib.sha256(json.dumps(person(person_id), sort_keys=True).encode()).hexdigest()\n\n\n"
    "def render(p, content_type):\n"
    "    if content_type == 'application/json':\n"
    "        return json.dumps(p)\n"
    "    if content_type in ('application/xml', 'text/xml'):\n"
    "        return '<person>' + ''.join(f'<{k}>{v}</{k}>' for k, v in p.items()) + '</person>'\n"
    "    return f\"<p>{p['name']} is {p['age']} and lives in {p['location']}.</p>\"",
    "# GET /person/:id\n"
    "request = json.loads(REQUEST)\n"
    "headers = request['headers']\n"
    "wanted = headers.get('Content-Type', 'text/html')\n"
    "tag = etag(request['path']['id'])\n"
    "status = 304 if headers.get('If-None-Match') == tag else 200\n"
    "if status == 200:\n"
    "    print(render(person(request['path']['id']), wanted))",
    "# ResponseInfo GET /person/:id\n"
    "print(json.dumps({'status': status, 'headers': {'Content-Type': wanted, 'ETag': tag}}))",
]

REQUESTS = [
    ("markdown", "# What a cell sees of its request"),
    "import json",
    "# POST /echo\nr = json.loads(REQUEST)\nprint(json.dumps({'body': r['body'], 'args': r['args']}, sort_keys=True))",
    "# PUT /echo\nprint(json.dumps(json.loads(REQUEST)['body'], sort_keys=True))",
    "# GET /headers\nh = json.loads(REQUEST)['headers']\n"
    "print(json.dumps({k: h.get(k) for k in ('X-Twice', 'X-Mixed-Case', 'Content-Type')}, sort_keys=True))",
    "# GET /fails\nraise KeyError('missing')",
    "# GET /result\n6 * 7",
    "# GET /nothing\nx = 1",
    "# GET /args/:a/:b\nr = json.loads(REQUEST)\nprint(r['path']['a'], r['path']['b'], sorted(r['args'].items()))",
]
