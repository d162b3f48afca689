"""``/api/sessions``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from raygate.sessions import SessionStore

from .common import json_body, url


def _store(request: Request) -> SessionStore:
    return request.app.state.sessions


async def list_sessions(request: Request) -> JSONResponse:
    store = _store(request)
    return JSONResponse([store.model(s) for s in store.list()])


async def create_session(request: Request) -> JSONResponse:
    store = _store(request)
    session = await store.create(await json_body(request, required=True))
    return JSONResponse(
        store.model(session),
        status_code=201,
        headers={"Location": url(request, f"api/sessions/{session.id}")},
    )


async def get_session(request: Request) -> JSONResponse:
    store = _store(request)
    return JSONResponse(store.model(store.get(request.path_params["session_id"])))


async def update_session(request: Request) -> JSONResponse:
    store = _store(request)
    body = await json_body(request, required=True)
    session = await store.update(request.path_params["session_id"], body)
    return JSONResponse(store.model(session))


async def delete_session(request: Request) -> Response:
    await _store(request).delete(request.path_params["session_id"])
    return Response(status_code=204)
