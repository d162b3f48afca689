"""The OpenAPI 3.0 description of raygate's API, served at ``/api/swagger.json``.

Written by hand beside the routes in :mod:`raygate.app`; ``tests/test_openapi.py`` checks
that every route is described and runs schemathesis against a live gateway with it.
"""

from __future__ import annotations

from typing import Any

from raygate import __version__

JSON = "application/json"

ERROR = {"$ref": "#/components/schemas/Error"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ERROR, description)


def _path_param(name: str, description: str, fmt: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if fmt:
        schema["format"] = fmt
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


KERNEL_ID = _path_param("kernel_id", "The kernel's id (a UUID).", "uuid")
SESSION_ID = _path_param("session_id", "The session's id.")
UNAUTHORIZED = _error("Missing or invalid token.")
NO_KERNEL = _error("No such kernel (unknown or malformed id).")
NO_SESSION = _error("No such session.")
OPEN: list[dict[str, list[str]]] = []
"""``security`` of operations served without a token."""

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error, whatever its status.",
        "required": ["reason", "message"],
        "properties": {
            "reason": {"type": "string", "description": "The HTTP reason phrase."},
            "message": {"type": "string", "description": "What went wrong, for people."},
        },
    },
    "ApiInfo": {
        "type": "object",
        "required": ["version"],
        "properties": {
            "version": {"type": "string", "description": "The Jupyter server API version."},
            "gateway_version": {"type": "string"},
        },
    },
    "Env": {
        "type": "object",
        "description": "Variables for the kernel: every KERNEL_* name, and others the operator "
        "allows (--allowed-envs); other names are ignored.",
        "properties": {
            name: {"type": "string", "description": description}
            for name, description in (
                ("KERNEL_USERNAME", "Who the kernel is for."),
                ("KERNEL_LAUNCH_TIMEOUT", "Seconds the start may take."),
                ("KERNEL_WORKING_DIR", "The kernel's working directory."),
                ("KERNEL_CPUS", "CPUs to reserve."),
                ("KERNEL_MEMORY", "Memory to reserve: bytes, or 4Gi, 512M, ..."),
                ("KERNEL_GPUS", "GPUs to reserve (fractions allowed)."),
            )
        },
        "additionalProperties": {"type": "string"},
        "example": {"KERNEL_USERNAME": "ada", "KERNEL_GPUS": "1"},
    },
    "StartKernel": {
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "description": "Kernelspec name (default: the gateway's default kernelspec).",
            },
            "env": _ref("Env"),
        },
    },
    "Kernel": {
        "type": "object",
        "required": ["id", "name", "last_activity", "execution_state", "connections"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "name": {"type": "string", "description": "Its kernelspec."},
            "last_activity": {
                "type": "string",
                "description": "UTC, as %Y-%m-%dT%H:%M:%S.%fZ.",
            },
            "execution_state": {"type": "string"},
            "connections": {"type": "integer", "minimum": 0},
            "launcher": {"type": "string"},
            "placement": {"type": "object", "description": "Where it runs, as its launcher says."},
            "username": {"type": "string", "nullable": True},
            "created": {"type": "string"},
        },
    },
    "KernelSpec": {
        "type": "object",
        "required": ["name", "spec", "resources"],
        "properties": {
            "name": {"type": "string"},
            "spec": {"type": "object", "description": "The kernel.json contents."},
            "resources": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "URLs of its resource files (logos, kernel.js).",
            },
        },
    },
    "KernelSpecs": {
        "type": "object",
        "required": ["default", "kernelspecs"],
        "properties": {
            "default": {"type": "string"},
            "kernelspecs": {"type": "object", "additionalProperties": _ref("KernelSpec")},
        },
    },
    "KernelRef": {
        "type": "object",
        "description": "The session's kernel: an existing one by id, or a new one by name.",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "env": _ref("Env"),
        },
    },
    "NewSession": {
        "type": "object",
        "description": "'path' (or, from older clients, 'notebook.path') names the session.",
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "notebook": {"type": "object", "properties": {"path": {"type": "string"}}},
            "name": {"type": "string"},
            "type": {"type": "string"},
            "kernel": _ref("KernelRef"),
        },
    },
    "SessionUpdate": {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "name": {"type": "string"},
            "type": {"type": "string"},
            "kernel": _ref("KernelRef"),
        },
    },
    "Session": {
        "type": "object",
        "required": ["id", "path", "kernel"],
        "properties": {
            "id": {"type": "string"},
            "path": {"type": "string"},
            "name": {"type": "string"},
            "type": {"type": "string"},
            "kernel": {"allOf": [_ref("Kernel")], "nullable": True},
            "notebook": {"type": "object"},
        },
    },
    "Status": {
        "type": "object",
        "required": ["kernels", "capacity", "gateway"],
        "properties": {
            "kernels": {
                "type": "array",
                "items": {
                    "type": "object",
                    "description": "A kernel as the status page shows it: user, kernelspec, "
                    "host, GPUs, CPUs and memory asked (bytes), state, idle seconds, "
                    "connections.",
                },
            },
            "capacity": {
                "type": "object",
                "description": "Per launcher that can tell (e.g. ray): its nodes' CPUs, GPUs "
                "and memory, total and available, and the sums over them.",
            },
            "notebook_http": {
                "type": "object",
                "nullable": True,
                "description": "With --api notebook-http: the endpoint kernels (state, "
                "requests served, host), queue length and limit, requests/s and latency "
                "(p50, p95) over the last minute, and counts of refused, timed-out and "
                "replaced; null otherwise.",
            },
            "gateway": {
                "type": "object",
                "properties": {
                    "version": {"type": "string"},
                    "uptime": {"type": "number"},
                    "launchers": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    tag: str,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = False,
    public: bool = False,
    description: str = "",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {
            "required": body_required,
            "content": {JSON: {"schema": _ref(body)}},
        }
    if public:
        op["security"] = OPEN
    else:
        op["responses"].setdefault("401", UNAUTHORIZED)
    return op


def _paths() -> dict[str, Any]:
    kernel = "/api/kernels/{kernel_id}"
    session = "/api/sessions/{session_id}"
    bad_body = _error("Malformed body (not a JSON object, wrong types, bad env or resources).")
    return {
        "/api": {"get": _op("API version", {"200": _json(_ref("ApiInfo"), "OK")}, tag="api")},
        "/api/health": {
            "get": _op(
                "Liveness: the process serves HTTP",
                {"200": _json({"type": "object"}, "Alive")},
                tag="health",
                public=True,
            )
        },
        "/api/ready": {
            "get": _op(
                "Readiness: launchers started, running kernels adopted",
                {"200": _json({"type": "object"}, "Ready"), "503": _error("Starting or stopping")},
                tag="health",
                public=True,
            )
        },
        "/api/kernelspecs": {
            "get": _op(
                "All kernelspecs",
                {"200": _json(_ref("KernelSpecs"), "OK"), "404": _error("No such kernelspec")},
                tag="kernelspecs",
                params=[
                    {
                        "name": "user",
                        "in": "query",
                        "required": False,
                        "description": "As jupyter_server sends it with KERNEL_USERNAME set "
                        "(user/spec): answers that one kernelspec.",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/api/kernelspecs/{name}": {
            "get": _op(
                "One kernelspec",
                {"200": _json(_ref("KernelSpec"), "OK"), "404": _error("No such kernelspec")},
                tag="kernelspecs",
                params=[_path_param("name", "Kernelspec name.")],
            )
        },
        "/kernelspecs/{name}/{filename}": {
            "get": _op(
                "A kernelspec's resource file (logo, kernel.js)",
                {
                    "200": {"description": "The file", "content": {"*/*": {}}},
                    "404": _error("No such kernelspec or file"),
                },
                tag="kernelspecs",
                params=[
                    _path_param("name", "Kernelspec name."),
                    _path_param("filename", "File name within the kernelspec."),
                ],
            )
        },
        "/api/kernels": {
            "get": _op(
                "Running kernels",
                {"200": _json({"type": "array", "items": _ref("Kernel")}, "OK")},
                tag="kernels",
            ),
            "post": _op(
                "Start a kernel",
                {
                    "201": _json(_ref("Kernel"), "Started and answering"),
                    "400": bad_body,
                    "403": _error("A limit was reached (--max-kernels)."),
                    "404": _error("No such kernelspec."),
                    "413": _error("Body too large."),
                    "500": _error("The kernel failed to start (with its own stderr)."),
                    "503": _error("No capacity came free within the launch timeout."),
                    "504": _error("The kernel did not start within the launch timeout."),
                },
                tag="kernels",
                body="StartKernel",
            ),
        },
        kernel: {
            "get": _op(
                "One kernel",
                {"200": _json(_ref("Kernel"), "OK"), "404": NO_KERNEL},
                tag="kernels",
                params=[KERNEL_ID],
            ),
            "delete": _op(
                "Shut a kernel down",
                {"204": {"description": "Shut down"}, "404": NO_KERNEL},
                tag="kernels",
                params=[KERNEL_ID],
            ),
        },
        kernel + "/interrupt": {
            "post": _op(
                "Interrupt a kernel",
                {"204": {"description": "Interrupted"}, "404": NO_KERNEL},
                tag="kernels",
                params=[KERNEL_ID],
            )
        },
        kernel + "/restart": {
            "post": _op(
                "Restart a kernel",
                {
                    "200": _json(_ref("Kernel"), "Restarted"),
                    "404": NO_KERNEL,
                    "500": _error("The kernel failed to restart."),
                },
                tag="kernels",
                params=[KERNEL_ID],
            )
        },
        kernel + "/channels": {
            "get": _op(
                "WebSocket to the kernel's channels",
                {
                    "101": {"description": "Switching protocols: the WebSocket is open."},
                    "404": NO_KERNEL,
                },
                tag="kernels",
                params=[
                    KERNEL_ID,
                    {
                        "name": "session_id",
                        "in": "query",
                        "required": False,
                        "description": "The client's session: replies whose requester left "
                        "go to its next connection.",
                        "schema": {"type": "string"},
                    },
                ],
                description="A WebSocket upgrade (GET with `Upgrade: websocket`). Offer "
                "the `v1.kernel.websocket.jupyter.org` subprotocol for binary framing; "
                "without it, legacy JSON messages. `?token=` authenticates clients that "
                "cannot send headers.",
            )
        },
        "/api/sessions": {
            "get": _op(
                "Sessions",
                {"200": _json({"type": "array", "items": _ref("Session")}, "OK")},
                tag="sessions",
            ),
            "post": _op(
                "Create a session (starting its kernel when it names none running)",
                {
                    "201": _json(_ref("Session"), "Created (or the existing one for the path)"),
                    "400": bad_body,
                    "403": _error("A limit was reached."),
                    "404": _error("No such kernel or kernelspec."),
                    "413": _error("Body too large."),
                    "500": _error("The kernel failed to start."),
                },
                tag="sessions",
                body="NewSession",
                body_required=True,
            ),
        },
        session: {
            "get": _op(
                "One session",
                {"200": _json(_ref("Session"), "OK"), "404": NO_SESSION},
                tag="sessions",
                params=[SESSION_ID],
            ),
            "patch": _op(
                "Rename a session or change its kernel",
                {
                    "200": _json(_ref("Session"), "Updated"),
                    "400": bad_body,
                    "403": _error("A limit was reached."),
                    "404": _error("No such session, kernel or kernelspec."),
                    "413": _error("Body too large."),
                },
                tag="sessions",
                params=[SESSION_ID],
                body="SessionUpdate",
                body_required=True,
            ),
            "delete": _op(
                "Delete a session and shut its kernel down",
                {"204": {"description": "Deleted"}, "404": NO_SESSION},
                tag="sessions",
                params=[SESSION_ID],
            ),
        },
        "/api/status": {
            "get": _op(
                "What the status page shows: kernels, capacity, the gateway",
                {"200": _json(_ref("Status"), "OK")},
                tag="operations",
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (open with --metrics-public)",
                {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
                tag="operations",
            )
        },
        "/": {
            "get": _op(
                "The status page",
                {"200": {"description": "HTML", "content": {"text/html": {}}}},
                tag="operations",
                public=True,
            )
        },
        "/status": {
            "get": _op(
                "The status page",
                {"200": {"description": "HTML", "content": {"text/html": {}}}},
                tag="operations",
                public=True,
            )
        },
        "/api/swagger.json": {
            "get": _op(
                "This description",
                {"200": _json({"type": "object"}, "OpenAPI 3.0")},
                tag="operations",
                public=True,
            )
        },
    }


def openapi_spec(base_url: str = "/") -> dict[str, Any]:
    """The description, for a gateway serving under ``base_url``."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "raygate",
            "version": __version__,
            "description": "The Jupyter Kernel Gateway API as raygate serves it, with its "
            "operations endpoints. Errors are JSON {reason, message}.",
        },
        "servers": [{"url": base_url.rstrip("/") or "/"}],
        "security": [{"token": []}, {"tokenQuery": []}],
        "components": {
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "'token T' (or 'Bearer T').",
                },
                "tokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "schemas": SCHEMAS,
        },
        "paths": _paths(),
    }
