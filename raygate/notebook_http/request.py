"""What a cell sees of its HTTP request, and which endpoint a path is. Pure.

The handlers build the ``REQUEST`` value with :func:`request_value` and the code that sets
it with :func:`request_code`; :class:`Router` finds the endpoint of a path. Both follow
Jupyter Kernel Gateway's notebook-http mode: ``REQUEST`` is a JSON string of ``body``
(parsed by the exact content type: ``application/json`` as JSON, falling back to the text
when it is not; form bodies as name -> list of values; anything else as text), ``args``
(query parameters, name -> list of values), ``path`` (the ``:param`` values) and
``headers`` (names as Tornado spells them, e.g. ``Content-Type``; a repeated header gives
a list).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from .notebook import Endpoint

FORM_URLENCODED = "application/x-www-form-urlencoded"
MULTIPART_FORM_DATA = "multipart/form-data"
APPLICATION_JSON = "application/json"


class BadRequest(ValueError):
    """A request whose body cannot be given to a cell (not UTF-8)."""


def header_name(name: str) -> str:
    """A header name as Tornado normalises it (``content-type`` -> ``Content-Type``), which
    is how notebooks written for Kernel Gateway look headers up."""
    return "-".join(word.capitalize() for word in name.split("-"))


def headers_value(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Headers by name; a name sent more than once gets the list of its values."""
    out: dict[str, Any] = {}
    for raw, value in pairs:
        name = header_name(raw)
        if name not in out:
            out[name] = value
        elif isinstance(out[name], list):
            out[name].append(value)
        else:
            out[name] = [out[name], value]
    return out


def args_value(query: str) -> dict[str, list[str]]:
    """Query parameters, each name with the list of its values (blank ones kept)."""
    return parse_qs(query, keep_blank_values=True)


def _multipart_fields(body: bytes, content_type: str) -> dict[str, list[str]]:
    """The non-file fields of a multipart/form-data body (files are not given to cells)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, list[str]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition", "")
        if not disposition.startswith("form-data") or part.get_filename():
            continue
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
    return fields


def body_value(body: bytes, content_type: str | None) -> Any:
    """The ``body`` of ``REQUEST``. Raises :class:`BadRequest` for a body not in UTF-8."""
    try:
        text = body.decode("utf-8") if body else ""
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not UTF-8: {exc}") from None
    content_type = content_type or "text/plain"
    if content_type == FORM_URLENCODED:
        return parse_qs(text, keep_blank_values=True)
    if content_type.startswith(MULTIPART_FORM_DATA):
        return _multipart_fields(body, content_type)
    if content_type == APPLICATION_JSON:
        try:
            return json.loads(text)
        except ValueError:
            return text  # as Kernel Gateway: a body that is not JSON is given as text
    return text


def request_value(
    body: bytes,
    query: str,
    path_params: dict[str, str],
    header_pairs: Iterable[tuple[str, str]],
) -> dict[str, Any]:
    """The request as a cell sees it (before it is made a JSON string)."""
    headers = headers_value(header_pairs)
    content_type = headers.get("Content-Type")
    if isinstance(content_type, list):
        content_type = content_type[-1]
    return {
        "body": body_value(body, content_type),
        "args": args_value(query),
        "path": path_params,
        "headers": headers,
    }


def request_code(request: dict[str, Any], language: str) -> str:
    """The statement that sets ``REQUEST`` to the request as a JSON string, in the kernel's
    language (a JSON string literal is a string literal in Python, R, Julia, Scala...)."""
    literal = json.dumps(json.dumps(request))
    if language == "perl":
        return f"my $REQUEST = {literal}"
    if language == "bash":
        return f"REQUEST={literal}"
    return f"REQUEST = {literal}"


@dataclass(frozen=True)
class Match:
    endpoint: Endpoint
    params: dict[str, str]


class Router:
    """Finds the endpoint of a request path: the first, in the notebook API's order, whose
    pattern matches all of it (a ``:name`` segment matches one non-empty segment)."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.routes = [(self.pattern(e.path), e) for e in endpoints]

    @staticmethod
    def pattern(path: str) -> re.Pattern[str]:
        parts = re.split(r"(:[^/\s]*)", path.strip())
        regex = "".join(
            f"(?P<{part[1:]}>[^/]+)" if part.startswith(":") else re.escape(part) for part in parts
        )
        return re.compile(regex + "$")

    def match(self, raw_path: str) -> Match | None:
        """``raw_path``: the path as sent (percent-encoded); parameters are decoded."""
        for pattern, endpoint in self.routes:
            found = pattern.match(raw_path)
            if found:
                params = {k: unquote(v) for k, v in found.groupdict().items()}
                return Match(endpoint, params)
        return None
