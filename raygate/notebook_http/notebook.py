"""The seed notebook: reading it, and finding its endpoints, response cells and seed cells.

Pure (no kernel, no server): ``raygate serve`` reads the notebook once at startup
(:func:`read_notebook`, :func:`parse_api`); the pool runs :attr:`NotebookApi.seed_cells` on
each kernel it starts; the handlers serve :attr:`NotebookApi.endpoints`.

As in Jupyter Kernel Gateway's notebook-http mode, a code cell whose first line is a comment
``# METHOD /path`` (METHOD one of GET, PUT, POST, DELETE; ``:name`` path segments are
parameters) is an endpoint; cells with the same annotation are joined in notebook order; a
cell ``# ResponseInfo METHOD /path`` runs after its endpoint's cells and prints the
response's status and headers as JSON; every other code cell is a seed cell, run once on each
kernel when it starts, in notebook order. The comment is ``//`` for Scala notebooks.

With the ``swagger`` cell parser the notebook carries its own API description: a markdown
cell holds a JSON object with a ``swagger`` key in a fenced block, and code cells annotated
``# operationId: ID`` (and ``# ResponseInfo operationId: ID``) implement its operations.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("GET", "PUT", "POST", "DELETE")
"""The methods an annotation may name."""
COMMENT_PREFIX = {"scala": "//"}
"""A notebook language's line comment, where it is not ``#``."""
PARSERS = ("cell", "swagger")


class NotebookError(ValueError):
    """The seed notebook cannot be read, or serves nothing; the message names the file."""


@dataclass(frozen=True)
class Endpoint:
    """One path of the API: its code per method, and its ResponseInfo code per method."""

    path: str
    sources: dict[str, str]
    responses: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> list[str]:
        return [segment[1:] for segment in self.path.split("/") if segment.startswith(":")]


@dataclass(frozen=True)
class NotebookApi:
    """What a seed notebook serves."""

    uri: str
    kernel_name: str
    """The notebook's kernelspec (``metadata.kernelspec.name``); empty when it names none."""
    language: str
    """``metadata.language_info.name``, lower case; empty when the notebook says none."""
    seed_cells: list[str]
    endpoints: list[Endpoint]
    """In the order paths are matched: constant paths first, then by the depth of their
    first parameter, deepest first."""
    spec: dict[str, Any]
    """The swagger document of ``/_api/spec/swagger.json``."""

    def endpoint(self, path: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.path == path), None)


def read_notebook(uri: str) -> dict[str, Any]:
    """The notebook at ``uri`` (a file path, or an http(s) URL) as a JSON object, with
    every cell's ``source`` one string. Raises :class:`NotebookError`."""
    return notebook_from_text(fetch_text(uri), uri)


def fetch_text(uri: str) -> str:
    """The text of the file or http(s) URL ``uri``. Raises :class:`NotebookError`."""
    try:
        if uri.startswith(("http://", "https://")):
            import httpx

            response = httpx.get(uri, timeout=60, follow_redirects=True)
            response.raise_for_status()
            text = response.text
        else:
            text = Path(uri).read_text(encoding="utf-8")
    except Exception as exc:
        raise NotebookError(f"cannot read the seed notebook {uri}: {exc}") from None
    return text


def notebook_from_text(text: str, uri: str) -> dict[str, Any]:
    """The notebook ``text`` (read from ``uri``) as :func:`read_notebook` returns it."""
    try:
        notebook = json.loads(text)
    except ValueError as exc:
        raise NotebookError(f"the seed notebook {uri} is not JSON: {exc}") from None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise NotebookError(f"the seed notebook {uri} is not a notebook (no 'cells' list)")
    if notebook.get("nbformat") != 4:
        raise NotebookError(
            f"the seed notebook {uri} is nbformat {notebook.get('nbformat')!r}; "
            "notebook-http reads nbformat 4"
        )
    for index, cell in enumerate(notebook["cells"]):
        source = cell.get("source", "") if isinstance(cell, dict) else None
        if isinstance(source, list):
            source = "".join(str(line) for line in source)
        if not isinstance(source, str) or not isinstance(cell.get("cell_type"), str):
            raise NotebookError(f"the seed notebook {uri}: cell {index} is malformed")
        cell["source"] = source
    return notebook


def first_param_depth(path: str) -> int:
    """How deep a path's first ``:param`` segment is (0: the first segment); constant
    paths sort first (the largest key)."""
    index = path.find(":")
    return sys.maxsize if index < 0 else path.count("/", 0, index) - 1


def comment_prefix(language: str) -> str:
    return COMMENT_PREFIX.get(language, "#")


def _annotation(prefix: str, response: bool) -> re.Pattern[str]:
    methods = "|".join(METHODS)
    info = r"ResponseInfo\s+" if response else ""
    return re.compile(rf"{re.escape(prefix)}\s+{info}({methods})\s+(/.*)")


def _operation(prefix: str, response: bool) -> re.Pattern[str]:
    info = r"ResponseInfo\s+" if response else ""
    return re.compile(rf"{re.escape(prefix)}\s*{info}operationId:\s*(.*)")


def _ordered(endpoints: dict[str, dict[str, str]]) -> list[str]:
    return sorted(endpoints, key=first_param_depth, reverse=True)


def parse_api(notebook: dict[str, Any], uri: str, parser: str = "cell") -> NotebookApi:
    """The API of a notebook :func:`read_notebook` returned. Raises :class:`NotebookError`
    when it has no endpoint (``parser``: ``cell`` or ``swagger``, see the module)."""
    metadata = notebook.get("metadata") or {}
    kernelspec = metadata.get("kernelspec") or {}
    language_info = metadata.get("language_info") or {}
    language = str(language_info.get("name") or "").lower()
    prefix = comment_prefix(language)
    cells = notebook["cells"]
    code = [c["source"] for c in cells if c["cell_type"] == "code"]
    if parser == "swagger":
        api, responses, spec = _swagger_api(cells, code, prefix)
    else:
        api, responses, spec = _cell_api(code, prefix)
    if not api:
        raise NotebookError(
            f"the seed notebook {uri} has no endpoints: annotate a code cell with a first "
            f"line like '{prefix} GET /hello' (or '{prefix} operationId: ID' with the "
            "swagger cell parser)"
        )
    is_api = [_annotation(prefix, False), _annotation(prefix, True)]
    if parser == "swagger":
        is_api = [_operation(prefix, False), _operation(prefix, True)]
    seed = [source for source in code if not any(p.match(source) for p in is_api)]
    endpoints = [Endpoint(path, api[path], responses.get(path, {})) for path in _ordered(api)]
    spec.setdefault("info", {})
    if isinstance(spec["info"], dict) and "title" not in spec["info"]:
        base = uri.rstrip("/").rsplit("/", 1)[-1]
        spec["info"]["title"] = base.split(".")[0] if base.find(".") > 0 else base
    return NotebookApi(
        uri=uri,
        kernel_name=str(kernelspec.get("name") or ""),
        language=language,
        seed_cells=seed,
        endpoints=endpoints,
        spec=spec,
    )


def _collect(code: list[str], pattern: re.Pattern[str]) -> dict[str, dict[str, str]]:
    """path -> method -> the joined sources of the cells ``pattern`` annotates."""
    found: dict[str, dict[str, str]] = {}
    for source in code:
        matched = pattern.match(source)
        if matched:
            path, method = matched.group(2).strip(), matched.group(1)
            by_method = found.setdefault(path, {})
            by_method[method] = by_method.get(method, "") + source + "\n"
    return found


def _cell_api(
    code: list[str], prefix: str
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], dict[str, Any]]:
    api = _collect(code, _annotation(prefix, False))
    responses = _collect(code, _annotation(prefix, True))
    spec: dict[str, Any] = {"swagger": "2.0", "paths": {}, "info": {"version": "0.0.0"}}
    pattern = _annotation(prefix, False)
    for source in code:
        matched = pattern.match(source)
        if matched:
            path, method = matched.group(2).strip(), matched.group(1).lower()
            spec["paths"].setdefault(path, {})[method] = {
                "responses": {"200": {"description": "Success"}}
            }
    return api, responses, spec


def swagger_block(source: str) -> dict[str, Any] | None:
    """The swagger document in a cell: its first fenced block (or all of it) parsed as
    JSON, when that is an object with a ``swagger`` key."""
    lines = source.splitlines()
    if len(lines) > 2:
        starts = [i for i, line in enumerate(lines) if line.startswith("```")]
        if starts:
            lines = lines[starts[0] + 1 :]
            ends = [i for i, line in enumerate(lines) if line.startswith("```")]
            if ends:
                lines = lines[: ends[0]]
    try:
        value = json.loads("".join(lines))
    except ValueError:
        return None
    return value if isinstance(value, dict) and "swagger" in value else None


def _swagger_api(
    cells: list[dict[str, Any]], code: list[str], prefix: str
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], dict[str, Any]]:
    spec: dict[str, Any] = {}
    for cell in cells:
        block = swagger_block(cell["source"])
        if block is not None:
            spec.update(block)
    found_paths = spec.get("paths")
    paths: dict[str, Any] = found_paths if isinstance(found_paths, dict) else {}

    def by_operation(pattern: re.Pattern[str]) -> dict[str, dict[str, str]]:
        sources: dict[str, str] = {}
        for source in code:
            matched = pattern.match(source)
            if matched:
                op = matched.group(1).strip()
                sources[op] = sources.get(op, "") + source + "\n"
        found: dict[str, dict[str, str]] = {}
        for path, operations in paths.items():
            for method, operation in (operations or {}).items():
                op = operation.get("operationId") if isinstance(operation, dict) else None
                if op not in sources:
                    continue
                # Parameters become :name segments, as the swagger's own paths do not say.
                full = path
                for parameter in operation.get("parameters") or []:
                    if isinstance(parameter, dict) and "name" in parameter:
                        full = f"{full}/:{parameter['name']}"
                found.setdefault(full, {})[method.upper()] = sources[op]
        return found

    api = by_operation(_operation(prefix, False))
    responses = by_operation(_operation(prefix, True))
    return api, responses, spec
