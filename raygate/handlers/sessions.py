"""``/api/sessions``: each request acts as its user (see raygate/sessions.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from raygate.sessions import SessionStore
from raygate.users import authenticated_groups, authenticated_user

from .common import json_body, url


def _store(request: Request) -> SessionStore:
    return request.app.state.sessions


async def list_sessions(request: Request) -> JSONResponse:
    store = _store(request)
    sessions = store.list(authenticated_user(request), authenticated_groups(request))
    return JSONResponse([store.model(s) for s in sessions])


async def create_session(request: Request) -> JSONResponse:
    store = _store(request)
    body = await json_body(request, required=True)
    session = await store.create(body, authenticated_user(request), authenticated_groups(request))
    return JSONResponse(
        store.model(session),
        status_code=201,
        headers={"Location": url(request, f"api/sessions/{session.id}")},
    )


async def get_session(request: Request) -> JSONResponse:
    store = _store(request)
    user, groups = authenticated_user(request), authenticated_groups(request)
    session = store.get(request.path_params["session_id"], user, groups)
    return JSONResponse(store.model(session))


async def update_session(request: Request) -> JSONResponse:
    store = _store(request)
    body = await json_body(request, required=True)
    user = authenticated_user(request)
    groups = authenticated_groups(request)
    session = await store.update(request.path_params["session_id"], body, user, groups)
    return JSONResponse(store.model(session))


async def delete_session(request: Request) -> Response:
    user, groups = authenticated_user(request), authenticated_groups(request)
    await _store(request).delete(request.path_params["session_id"], user, groups)
    return Response(status_code=204)
